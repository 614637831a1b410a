"""Kalshi request signing (kalshi-protocol.md §2).

Signed text: ``timestamp_ms + METHOD + path`` (no separators, UTF-8), where ``path`` is the full
URL path including ``/trade-api/v2`` and excluding the query string. RSA keys sign with
RSASSA-PSS, SHA-256, MGF1(SHA-256), salt length = digest length (32 bytes); Ed25519 keys (also
accepted by Kalshi's SDK) sign the same text. The signature travels base64-encoded (standard
alphabet, padded) in ``KALSHI-ACCESS-SIGNATURE``, beside ``KALSHI-ACCESS-KEY`` and
``KALSHI-ACCESS-TIMESTAMP``. The WebSocket upgrade is signed as ``GET /trade-api/ws/v2``.
"""

from __future__ import annotations

import base64
import binascii
import time
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from kalshi_data.errors import PermanentError

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey

HEADER_KEY = "KALSHI-ACCESS-KEY"
HEADER_TIMESTAMP = "KALSHI-ACCESS-TIMESTAMP"
HEADER_SIGNATURE = "KALSHI-ACCESS-SIGNATURE"

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


class KeyError_(PermanentError):  # trailing _: not the builtin KeyError
    """The private key file is missing, unreadable, or not an RSA/Ed25519 PEM key."""


def sign_path(path_or_url: str) -> str:
    """The path that is signed: the URL's path, query and fragment stripped."""
    if "://" in path_or_url:
        return urlsplit(path_or_url).path
    return path_or_url.split("?", 1)[0].split("#", 1)[0]


def message(method: str, path_or_url: str, now_ms: int) -> str:
    """The signed text for a request."""
    return f"{now_ms}{method.upper()}{sign_path(path_or_url)}"


def load_private_key(path: str | Path, password: bytes | None = None) -> PrivateKey:
    """Load an RSA or Ed25519 private key from a PEM file.

    Raises:
        KeyError_: the file cannot be read or holds no supported key (the message names the
            file, never its content).
    """
    try:
        data = Path(path).read_bytes()
        key = serialization.load_pem_private_key(data, password=password)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyError_(f"cannot load private key from {path}: {type(exc).__name__}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyError_(f"{path}: unsupported key type {type(key).__name__}")
    return key


def _sign(key: PrivateKey, text: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(text, _PSS, hashes.SHA256())
    return key.sign(text)


def verify(public_key: PublicKey, text: str, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid signature of ``text`` by ``public_key``."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, text.encode(), _PSS, hashes.SHA256())
        else:
            public_key.verify(signature, text.encode())
    except InvalidSignature:
        return False
    return True


class Signer:
    """Signs requests for one API key."""

    def __init__(self, key_id: str, private_key: PrivateKey) -> None:
        self.key_id = key_id
        self._key = private_key

    @classmethod
    def from_pem_file(cls, key_id: str, path: str | Path) -> Signer:
        """A signer with the private key read from a PEM file."""
        return cls(key_id, load_private_key(path))

    @property
    def public_key(self) -> PublicKey:
        """The public half (for :func:`verify`)."""
        return self._key.public_key()

    def sign(self, text: str) -> str:
        """The base64 signature of ``text``."""
        return base64.b64encode(_sign(self._key, text.encode())).decode("ascii")

    def auth_headers(self, method: str, path: str, now_ms: int | None = None) -> dict[str, str]:
        """The three ``KALSHI-ACCESS-*`` headers for a request.

        Args:
            method: HTTP method (``GET`` for the WebSocket upgrade).
            path: the request path including ``/trade-api/...`` (a full URL is accepted; the
                query string is not signed).
            now_ms: Unix time in milliseconds (default: the wall clock now).
        """
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        return {
            HEADER_KEY: self.key_id,
            HEADER_TIMESTAMP: str(ts),
            HEADER_SIGNATURE: self.sign(message(method, path, ts)),
        }

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"
