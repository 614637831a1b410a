"""Exact fixed-point prices, counts and timestamps (DESIGN §3, kalshi-protocol.md §6).

Kalshi sends prices as dollar strings (``FixedPointDollars``: up to 6 decimals by the OpenAPI
schema, normally 4, ``"0.4200"``) and contract counts
as strings with 2 decimals (``"136.00"``, signed for order-book deltas). They become integers:
prices in 1/10,000 dollar, counts in 1/100 contract. Parsing is pure string arithmetic (never
``float``, never ``Decimal`` rounding): anything that is not an exact decimal within range raises
:class:`ValueError` whose message says why.

Timestamps become integer microseconds since the Unix epoch, from Unix milliseconds, Unix
seconds, or RFC 3339 strings (fractions beyond microseconds are truncated).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from kalshi_data.errors import KalshiDataError

#: 1 dollar in price units (1/10,000 $).
PRICE_SCALE = 10_000
#: 1 contract in count units (1/100 contract).
COUNT_SCALE = 100
#: Largest accepted count magnitude, in count units (10^12 contracts): far above any real
#: order-book level or volume, far below the bigint limit.
MAX_COUNT = 10**14
#: Accepted exchange time window (microseconds): 2000-01-01 .. 2100-01-01 UTC.
MIN_TS_US = 946_684_800_000_000
MAX_TS_US = 4_102_444_800_000_000

_PRICE_RE = re.compile(r"(\d{1,2})(?:\.(\d{0,6}))?")
#: The words every :class:`SubunitPrice` message contains (dead-letter reasons are matched on it).
SUBUNIT_REASON = "finer than the storage unit"


class SubunitPrice(KalshiDataError, ValueError):
    """A price with a non-zero 5th or 6th decimal: finer than 1/10,000 $ (never rounded)."""


_COUNT_RE = re.compile(r"(-?)(\d{1,13})(?:\.(\d{0,2}))?")
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,12}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _wrong_type(what: str, v: object) -> ValueError:
    # ValueError, not TypeError: callers treat every bad wire value alike.
    return ValueError(f"{what}, got {type(v).__name__}")


def _shorten(s: object) -> str:
    text = repr(s)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_price(s: str) -> int:
    """``"0.4200"`` -> 4200: a dollar price string as an integer in 1/10,000 dollar.

    Up to 6 decimals are read (the ``FixedPointDollars`` schema); decimals 5 and 6 must be zero
    (``"0.480000"`` is 4800): a finer price would need rounding, and is refused instead.

    Raises:
        SubunitPrice: a non-zero 5th or 6th decimal.
        ValueError: not a string, not a plain decimal, more than 6 decimals, or outside [0, 1] $.
    """
    if not isinstance(s, str):
        raise _wrong_type("price must be a decimal string", s)
    m = _PRICE_RE.fullmatch(s)
    if m is None:
        raise ValueError(f"price {_shorten(s)} is not a decimal with at most 6 decimals")
    whole, frac = m.group(1), m.group(2) or ""
    if len(frac) > 4:
        if frac[4:].strip("0"):
            raise SubunitPrice(f"price {_shorten(s)} is {SUBUNIT_REASON} (0.0001 $)")
        frac = frac[:4]
    value = int(whole) * PRICE_SCALE + int(frac.ljust(4, "0"))
    if value > PRICE_SCALE:
        raise ValueError(f"price {_shorten(s)} is above 1 dollar")
    return value


def parse_count(s: str, *, signed: bool = False) -> int:
    """``"136.00"`` -> 13600: a contract count string as an integer in 1/100 contract.

    Args:
        s: the count string (at most 2 decimals).
        signed: accept a leading ``-`` (order-book deltas).

    Raises:
        ValueError: not a string, not a plain decimal, more than 2 decimals, negative when
            ``signed`` is false, or larger in magnitude than :data:`MAX_COUNT`.
    """
    if type(s) is str and s.isascii():
        # The plain form ("136.00", "5", "5.") without a regex; anything else (a sign, a
        # non-ASCII digit, too many digits) takes the regex below, which also says why not.
        whole, dot, frac = s.partition(".")
        if (
            whole.isdigit()
            and len(whole) <= 13
            and len(frac) <= 2
            and (frac.isdigit() or not frac)
            and (dot or not frac)
        ):
            value = int(whole) * COUNT_SCALE + (int(frac.ljust(2, "0")) if frac else 0)
            if value <= MAX_COUNT:
                return value
    return _parse_count_re(s, signed)


def _parse_count_re(s: str, signed: bool) -> int:
    """:func:`parse_count` by regex, for every form (and every reason to refuse one)."""
    if not isinstance(s, str):
        raise _wrong_type("count must be a decimal string", s)
    m = _COUNT_RE.fullmatch(s)
    if m is None:
        raise ValueError(f"count {_shorten(s)} is not a decimal with at most 2 decimals")
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if sign and not signed:
        raise ValueError(f"count {_shorten(s)} is negative")
    value = int(whole) * COUNT_SCALE + int(frac.ljust(2, "0"))
    if value > MAX_COUNT:
        raise ValueError(f"count {_shorten(s)} exceeds the bound {MAX_COUNT // COUNT_SCALE}")
    return -value if sign else value


def format_price(p: int) -> str:
    """4200 -> ``"0.4200"`` (the exchange's 4-decimal form)."""
    sign = "-" if p < 0 else ""
    whole, frac = divmod(abs(p), PRICE_SCALE)
    return f"{sign}{whole}.{frac:04d}"


def format_count(c: int) -> str:
    """13600 -> ``"136.00"``; -5400 -> ``"-54.00"`` (the exchange's 2-decimal form)."""
    sign = "-" if c < 0 else ""
    whole, frac = divmod(abs(c), COUNT_SCALE)
    return f"{sign}{whole}.{frac:02d}"


def _check_ts(us: int, what: str) -> int:
    if not MIN_TS_US <= us < MAX_TS_US:
        raise ValueError(f"{what} is outside 2000..2100")
    return us


def _int_field(v: object, what: str) -> int:
    # bool is an int subclass; JSON true/false is never a timestamp.
    if isinstance(v, bool) or not isinstance(v, int):
        raise _wrong_type(f"{what} must be an integer", v)
    return v


def ms_to_us(v: object) -> int:
    """Unix milliseconds (int) -> microseconds, range-checked."""
    return _check_ts(_int_field(v, "ts_ms") * 1000, "ts_ms")


def s_to_us(v: object) -> int:
    """Unix seconds (int) -> microseconds, range-checked."""
    return _check_ts(_int_field(v, "ts") * 1_000_000, "ts")


def rfc3339_to_us(s: object) -> int:
    """``"2022-11-22T20:44:01Z"`` -> microseconds since the epoch (fraction truncated to µs).

    Raises:
        ValueError: not an RFC 3339 date-time with a zone, an impossible date, or out of range.
    """
    if not isinstance(s, str):
        raise _wrong_type("time must be an RFC 3339 string", s)
    m = _RFC3339_RE.fullmatch(s)
    if m is None:
        raise ValueError(f"time {_shorten(s)} is not RFC 3339")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = (m.group(7) or "")[:6].ljust(6, "0")
    if second > 60:
        raise ValueError(f"time {_shorten(s)} has an invalid second")
    try:
        dt = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"time {_shorten(s)}: {exc}") from None
    delta = dt - _EPOCH
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + int(frac)
    if m.group(9):
        offset_s = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        if int(m.group(10)) > 23 or int(m.group(11)) > 59:
            raise ValueError(f"time {_shorten(s)} has an invalid zone offset")
        us -= offset_s * 1_000_000 if m.group(9) == "+" else -offset_s * 1_000_000
    return _check_ts(us, "time")


def ms_floor_us(us: int) -> int:
    """A microsecond time floored to its millisecond (``...57.667166Z`` -> ``...57.667000``).

    REST trades carry ``created_time`` in microseconds, WS trades ``ts_ms`` (issue 11): a trade's
    stored time is the millisecond both agree on, so its identity ``(trade_id, exchange_ts)`` is
    one row whichever way it arrived.
    """
    return us - us % 1000


def ts_to_us(v: object) -> int:
    """A ``ts`` field: int Unix seconds (ticker, trade) or an RFC 3339 string (orderbook_delta)."""
    if isinstance(v, str):
        return rfc3339_to_us(v)
    return s_to_us(v)


def exchange_ts_us(msg: dict[str, object]) -> int | None:
    """The exchange time of a WS message: ``ts_ms``, else ``ts``, else ``time`` (§6); None if none.

    Raises:
        ValueError: the first present field is malformed or out of range.
    """
    v = msg.get("ts_ms")
    if v is not None:
        return ms_to_us(v)
    v = msg.get("ts")
    if v is not None:
        return ts_to_us(v)
    v = msg.get("time")
    if v is not None:
        return rfc3339_to_us(v)
    return None
