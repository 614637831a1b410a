"""Signature verification and REST cursor helpers (pure)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from simulator.auth import AuthRefused, load_public_key, sign_headers, verify
from simulator.rest import BadRequest, decode_cursor, encode_cursor

PATH = "/trade-api/ws/v2"
NOW = 1_700_000_000_000


def _pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def rsa_pem():
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def test_valid_rsa_pss_and_ed25519_signatures_pass(rsa_pem):
    """RSA-PSS(SHA-256, salt 32) and Ed25519 over ts+GET+path are accepted; query ignored."""
    ed = _pem(ed25519.Ed25519PrivateKey.generate())
    keys = {"r": load_public_key(rsa_pem), "e": load_public_key(ed)}
    assert (
        verify(sign_headers(rsa_pem, "r", "get", PATH, NOW), "GET", PATH, keys, NOW, 30_000) == "r"
    )
    headers = sign_headers(ed, "e", "GET", PATH + "?x=1", NOW)
    assert verify(headers, "GET", PATH, keys, NOW + 29_000, 30_000) == "e"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: {}, "missing_headers"),
        (lambda h: {**h, "KALSHI-ACCESS-KEY": "other"}, "unknown_key"),
        (lambda h: {**h, "KALSHI-ACCESS-TIMESTAMP": str(NOW - 31_000)}, "stale_timestamp"),
        (lambda h: {**h, "KALSHI-ACCESS-TIMESTAMP": "soon"}, "bad_timestamp"),
        (lambda h: {**h, "KALSHI-ACCESS-SIGNATURE": "!!"}, "bad_signature"),
        (
            lambda h: {**h, "KALSHI-ACCESS-SIGNATURE": h["KALSHI-ACCESS-SIGNATURE"][::-1]},
            "bad_signature",
        ),
    ],
)
def test_refusals_name_the_reason(rsa_pem, mutate, reason):
    """Missing headers, unknown key, stale or bad timestamp and bad signature are refused."""
    keys = {"r": load_public_key(rsa_pem)}
    headers = mutate(sign_headers(rsa_pem, "r", "GET", PATH, NOW))
    with pytest.raises(AuthRefused) as info:
        verify(headers, "GET", PATH, keys, NOW, 30_000)
    assert info.value.reason == reason


def test_signature_over_another_path_is_refused(rsa_pem):
    """A signature for a different path does not open the WebSocket."""
    keys = {"r": load_public_key(rsa_pem)}
    headers = sign_headers(rsa_pem, "r", "GET", "/trade-api/v2/markets", NOW)
    with pytest.raises(AuthRefused):
        verify(headers, "GET", PATH, keys, NOW, 30_000)


def test_cursor_round_trip_and_rejection():
    """Cursors decode to their position; garbage or another listing's cursor is a 400."""
    assert decode_cursor("m", encode_cursor("m", 1234), -1) == 1234
    assert decode_cursor("m", "", -1) == -1
    with pytest.raises(BadRequest):
        decode_cursor("m", encode_cursor("e", 5), -1)
    with pytest.raises(BadRequest):
        decode_cursor("m", "%%%", -1)


def test_issue11_rest_trade_created_time_has_microseconds() -> None:
    """The simulator's REST trades carry 6-decimal ``created_time`` inside the WS millisecond."""
    from kalshi_data.kalshi.fixedpoint import rfc3339_to_us
    from simulator.fixed import rfc3339_us
    from simulator.rest import trade_obj

    msg = {
        "trade_id": "6a0c1b5e-8f4e-4c1a-9b7e-2d3f4a5b6c7d",
        "market_ticker": "KXA-1",
        "count_fp": "1.00",
        "yes_price_dollars": "0.4100",
        "no_price_dollars": "0.5900",
        "taker_side": "yes",
        "taker_outcome_side": "yes",
        "taker_book_side": "bid",
        "is_block_trade": False,
        "ts_ms": 1_767_225_717_667,
    }
    obj = trade_obj(msg, 1_767_225_717_667_166)
    assert obj["created_time"] == "2026-01-01T00:01:57.667166Z"
    assert rfc3339_to_us(obj["created_time"]) // 1000 == msg["ts_ms"]
    assert rfc3339_us(5) == "1970-01-01T00:00:00.000005Z"
