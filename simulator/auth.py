"""API-key authentication (kalshi-protocol.md §2): RSA-PSS / Ed25519 signatures over ts+METHOD+path.

:func:`verify` is pure (headers, clock and keys in; key id or :class:`AuthRefused` out); the
WebSocket shell calls it before upgrading and answers a refusal with HTTP 401.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from simulator.errors import SimulatorError

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey

KEY_HEADER = "KALSHI-ACCESS-KEY"
TS_HEADER = "KALSHI-ACCESS-TIMESTAMP"
SIG_HEADER = "KALSHI-ACCESS-SIGNATURE"


class AuthRefused(SimulatorError):
    """A refused request; ``reason`` is a short machine-readable word (never a secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_public_key(pem: bytes) -> PublicKey:
    """Parse a PEM public key (RSA or Ed25519); a private key PEM is accepted too."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        key = serialization.load_pem_private_key(pem, password=None).public_key()
    if not isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise TypeError("only RSA and Ed25519 keys are supported")
    return key


def verify(
    headers: Mapping[str, str],
    method: str,
    path: str,
    keys: Mapping[str, PublicKey],
    now_ms: int,
    skew_ms: int,
) -> str:
    """Check the three KALSHI-ACCESS headers; return the key id or raise :class:`AuthRefused`.

    The signed text is ``timestamp_ms + METHOD + path`` (query excluded); RSA keys use
    RSASSA-PSS with SHA-256, MGF1(SHA-256) and a 32-byte salt (§2).
    """
    key_id, ts, sig = headers.get(KEY_HEADER), headers.get(TS_HEADER), headers.get(SIG_HEADER)
    if not key_id or not ts or not sig:
        raise AuthRefused("missing_headers")
    key = keys.get(key_id)
    if key is None:
        raise AuthRefused("unknown_key")
    if not ts.isdigit():
        raise AuthRefused("bad_timestamp")
    if abs(now_ms - int(ts)) > skew_ms:
        raise AuthRefused("stale_timestamp")
    try:
        signature = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise AuthRefused("bad_signature") from None
    text = f"{ts}{method.upper()}{path.split('?', 1)[0]}".encode()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(
                signature,
                text,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                hashes.SHA256(),
            )
        else:
            key.verify(signature, text)
    except InvalidSignature:
        raise AuthRefused("bad_signature") from None
    return key_id


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A key pair made for this run: the id, the private key file and the public PEM."""

    key_id: str
    private_key_path: Path
    public_pem: bytes


def generate_key(workdir: Path) -> GeneratedKey:
    """Make an RSA-2048 pair; the private key goes to ``workdir`` with mode 0600."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = str(uuid.uuid4())
    path = workdir / "sim-api-key.pem"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return GeneratedKey(key_id, path, public_pem)


def sign_headers(
    private_pem: bytes, key_id: str, method: str, path: str, ts_ms: int
) -> dict[str, str]:
    """The three KALSHI-ACCESS headers for a request (what a client sends; for tests and tools)."""
    private = serialization.load_pem_private_key(private_pem, password=None)
    text = f"{ts_ms}{method.upper()}{path.split('?', 1)[0]}".encode()
    if isinstance(private, rsa.RSAPrivateKey):
        sig = private.sign(
            text, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
        )
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        sig = private.sign(text)
    else:
        raise TypeError("only RSA and Ed25519 keys are supported")
    return {KEY_HEADER: key_id, TS_HEADER: str(ts_ms), SIG_HEADER: base64.b64encode(sig).decode()}
