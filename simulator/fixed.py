"""Fixed-point wire formats (kalshi-protocol.md §6): prices in 1/10,000 dollar, counts in 1/100.

Prices are ``int`` 1/10,000 dollar (``4200`` -> ``"0.4200"``); counts are ``int`` 1/100 contract
(``13600`` -> ``"136.00"``). Never floats.
"""

from __future__ import annotations

import time

#: One dollar in price units.
DOLLAR = 10_000


def dollars(price: int) -> str:
    """``4200`` -> ``"0.4200"`` (4 decimals, sign kept)."""
    sign = "-" if price < 0 else ""
    a = abs(price)
    return f"{sign}{a // 10_000}.{a % 10_000:04d}"


def fp(count: int) -> str:
    """``13600`` -> ``"136.00"``; deltas keep their sign (``-5400`` -> ``"-54.00"``)."""
    sign = "-" if count < 0 else ""
    a = abs(count)
    return f"{sign}{a // 100}.{a % 100:02d}"


def rfc3339(ts_s: int) -> str:
    """Unix seconds -> ``2022-11-22T20:44:01Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_s))


def rfc3339_ms(ts_ms: int) -> str:
    """Unix milliseconds -> ``2022-11-22T20:44:01.123Z`` (the "high precision" ``time``)."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts_ms // 1000))}.{ts_ms % 1000:03d}Z"


def rfc3339_us(ts_us: int) -> str:
    """Unix microseconds -> ``2022-11-22T20:44:01.123456Z`` (REST trade ``created_time``)."""
    whole, frac = divmod(ts_us, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{frac:06d}Z"
