"""RSA-PSS request signing: round trip, tampering, headers, key loading."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from kalshi_data.kalshi.signer import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    KeyError_,
    Signer,
    message,
    verify,
)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit key per test module (never a fixture file)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_pem(path: Path, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_message_strips_query_and_host() -> None:
    """The signed text is ts + METHOD + path, with query and scheme/host stripped (§2)."""
    assert message("get", "/trade-api/v2/markets?limit=5", 1700) == "1700GET/trade-api/v2/markets"
    assert message("GET", "wss://h.example/trade-api/ws/v2?x=1", 5) == "5GET/trade-api/ws/v2"


def test_round_trip_from_pem(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Headers from a PEM-loaded key verify against the public key."""
    signer = Signer.from_pem_file("key-id-1", _write_pem(tmp_path / "k.pem", rsa_key))
    headers = signer.auth_headers(
        "GET", "/trade-api/v2/portfolio/balance?x=1", now_ms=1669149841000
    )
    assert headers[HEADER_KEY] == "key-id-1"
    assert headers[HEADER_TIMESTAMP] == "1669149841000"
    text = "1669149841000GET/trade-api/v2/portfolio/balance"
    assert verify(rsa_key.public_key(), text, headers[HEADER_SIGNATURE])
    # the algorithm is exactly PSS/SHA-256/MGF1-SHA-256/salt=32: verify with explicit params
    rsa_key.public_key().verify(
        base64.b64decode(headers[HEADER_SIGNATURE]),
        text.encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


def test_bad_signatures_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    """A signature over other text, by another key, or not base64, does not verify."""
    signer = Signer("k", rsa_key)
    sig = signer.sign("1GET/a")
    assert verify(rsa_key.public_key(), "1GET/a", sig)
    assert not verify(rsa_key.public_key(), "2GET/a", sig)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not verify(other.public_key(), "1GET/a", sig)
    assert not verify(rsa_key.public_key(), "1GET/a", "not base64!!")
    flipped = bytearray(base64.b64decode(sig))
    flipped[0] ^= 1
    assert not verify(rsa_key.public_key(), "1GET/a", base64.b64encode(bytes(flipped)).decode())


def test_ed25519_keys(tmp_path: Path) -> None:
    """Ed25519 keys sign the same text and verify."""
    key = ed25519.Ed25519PrivateKey.generate()
    signer = Signer.from_pem_file("k", _write_pem(tmp_path / "e.pem", key))
    assert verify(signer.public_key, "1GET/x", signer.sign("1GET/x"))


def test_key_loading_errors_name_the_file_not_the_content(tmp_path: Path) -> None:
    """Missing or garbage key files raise a permanent KeyError_ without leaking content."""
    with pytest.raises(KeyError_, match="missing.pem"):
        Signer.from_pem_file("k", tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyError_) as info:
        Signer.from_pem_file("k", bad)
    assert "SECRETSTUFF" not in str(info.value)
    assert "SECRET" not in repr(Signer("k", ed25519.Ed25519PrivateKey.generate()))
