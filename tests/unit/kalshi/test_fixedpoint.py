"""Exact fixed-point prices, counts and timestamps (kalshi_data.kalshi.fixedpoint)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalshi_data.kalshi import fixedpoint
from kalshi_data.kalshi.fixedpoint import (
    MAX_COUNT,
    exchange_ts_us,
    rfc3339_to_us,
    ts_to_us,
)
from kalshi_data.records import format_count, format_price, parse_count, parse_price


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.4200", 4200), ("0.42", 4200), ("1.0000", 10000), ("0", 0), ("0.0001", 1), ("1", 10000)],
)
def test_parse_price_exact(text: str, value: int) -> None:
    """Dollar strings with up to 4 decimals become exact 1/10,000 $ integers."""
    assert parse_price(text) == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1.0001", "above 1 dollar"),
        ("-0.10", "not a decimal"),
        ("0.42001", "finer than the storage unit"),
        ("0.4200001", "not a decimal"),
        ("4e-1", "not a decimal"),
        (" 0.42", "not a decimal"),
        ("NaN", "not a decimal"),
        ("", "not a decimal"),
        ("0,42", "not a decimal"),
    ],
)
def test_parse_price_rejects_with_reason(text: str, why: str) -> None:
    """Out-of-range or non-plain prices raise ValueError naming the reason."""
    with pytest.raises(ValueError, match=why):
        parse_price(text)


@pytest.mark.parametrize(
    ("text", "value"), [("0.480000", 4800), ("0.48000", 4800), ("1.000000", 10000), ("0.000100", 1)]
)
def test_parse_price_trailing_zeros_past_four_decimals(text: str, value: int) -> None:
    """FixedPointDollars allows 6 decimals: zeros past the 4th are the same price (issue 11)."""
    assert parse_price(text) == value


@pytest.mark.parametrize("text", ["0.480001", "0.00005", "0.999999"])
def test_parse_price_subunit_is_its_own_error(text: str) -> None:
    """A non-zero 5th/6th decimal is never rounded: SubunitPrice, a ValueError of its own."""
    with pytest.raises(fixedpoint.SubunitPrice, match=fixedpoint.SUBUNIT_REASON):
        parse_price(text)


def test_parse_price_rejects_non_strings() -> None:
    """Floats and ints are never accepted as prices (no float arithmetic anywhere)."""
    with pytest.raises(ValueError, match="decimal string"):
        parse_price(0.42)  # type: ignore[arg-type]


def test_parse_count_signed_and_bounds() -> None:
    """Counts are 1/100 contract; negatives only when signed; magnitude bounded."""
    assert parse_count("136.00") == 13600
    assert parse_count("0.5") == 50
    assert parse_count("-54.00", signed=True) == -5400
    with pytest.raises(ValueError, match="negative"):
        parse_count("-54.00")
    with pytest.raises(ValueError, match="at most 2 decimals"):
        parse_count("1.001")
    with pytest.raises(ValueError, match="exceeds"):
        parse_count("9999999999999.00")
    assert parse_count(format_count(MAX_COUNT)) == MAX_COUNT


@given(st.integers(min_value=0, max_value=10_000))
def test_price_round_trip(p: int) -> None:
    """format_price and parse_price are inverse on the whole price range."""
    assert parse_price(format_price(p)) == p


@given(st.integers(min_value=-MAX_COUNT, max_value=MAX_COUNT))
def test_count_round_trip(c: int) -> None:
    """format_count and parse_count(signed=True) are inverse on the bounded range."""
    assert parse_count(format_count(c), signed=True) == c


def test_rfc3339_forms() -> None:
    """RFC 3339 with Z, offsets and nanosecond fractions gives exact microseconds."""
    base = 1669149841 * 1_000_000
    assert rfc3339_to_us("2022-11-22T20:44:01Z") == base
    assert rfc3339_to_us("2022-11-22T20:44:01.123456789Z") == base + 123456
    assert rfc3339_to_us("2022-11-22T21:44:01.5+01:00") == base + 500000
    for bad in ("2022-11-22T20:44:01", "2022-13-22T20:44:01Z", "yesterday", "2022-11-22"):
        with pytest.raises(ValueError):
            rfc3339_to_us(bad)


def test_exchange_ts_precedence() -> None:
    """exchange_ts comes from ts_ms, else ts (seconds or RFC 3339), else time, else None."""
    assert exchange_ts_us({"ts_ms": 1669149841123, "ts": 1}) == 1669149841123000
    assert exchange_ts_us({"ts": 1669149841}) == 1669149841000000
    assert exchange_ts_us({"ts": "2022-11-22T20:44:01Z"}) == 1669149841000000
    assert exchange_ts_us({"time": "2022-11-22T20:44:01Z"}) == 1669149841000000
    assert exchange_ts_us({}) is None
    with pytest.raises(ValueError, match="integer"):
        ts_to_us(True)
    with pytest.raises(ValueError, match="outside"):
        exchange_ts_us({"ts_ms": 1})


COUNT_CHARS = st.sampled_from([*list("0123456789.-+ e٣²"), "00", "1234567890123"])


@settings(max_examples=2000)
@given(text=st.one_of(st.lists(COUNT_CHARS, max_size=8).map("".join), st.text(max_size=10)))
def test_count_fast_form_matches_the_regex(text: str) -> None:
    """parse_count's regex-free plain form returns what the regex path returns, or both refuse."""
    for signed in (False, True):
        try:
            want: object = fixedpoint._parse_count_re(text, signed)
        except ValueError as exc:
            want = ("refused", str(exc))
        try:
            got: object = parse_count(text, signed=signed)
        except ValueError as exc:
            got = ("refused", str(exc))
        assert got == want, text
