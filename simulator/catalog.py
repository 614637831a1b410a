"""Series, events and markets: the exchange's reference data, named and shaped from a seeded RNG.

Indices (``Market.index``, ``Event.index``) are creation order; REST paging walks them so that
markets created while a client pages are appended after its cursor, never shifting it.
"""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass, field

from simulator.book import Book

CATEGORIES = ("Economics", "Politics", "Sports", "Climate and Weather", "Financials", "Culture")
FREQUENCIES = ("daily", "weekly", "monthly", "one_off")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

#: Response status enum (§4) -> the ``status`` filter vocabulary of ``GET /markets``.
STATUS_FILTER: dict[str, str] = {
    "initialized": "unopened",
    "inactive": "paused",  # deactivated: trading paused (OpenAPI MarketStatusQuery)
    "active": "open",
    "closed": "closed",
    "determined": "closed",
    "disputed": "closed",
    "amended": "closed",
    "finalized": "settled",
}


def rng_uuid(rng: random.Random) -> str:
    """A version-4 UUID string drawn from ``rng`` (deterministic by seed)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(slots=True)
class Series:
    """A series (§4 Series object)."""

    ticker: str
    title: str
    category: str
    frequency: str
    tags: list[str]


@dataclass(slots=True)
class Event:
    """An event (§4 Event object); ``markets`` lists its tickers in creation order."""

    index: int
    event_ticker: str
    series_ticker: str
    title: str
    sub_title: str
    mutually_exclusive: bool
    strike_date: int
    collateral_return_type: str
    updated_ts: int
    markets: list[str] = field(default_factory=list)
    #: A multivariate (combo) event: left out of ``GET /events`` (Kalshi lists those under
    #: ``/events/multivariate``).
    mve: bool = False


@dataclass(slots=True)
class Market:
    """A market and its live state. Prices 1/10,000 dollar, counts 1/100 contract, times Unix s."""

    index: int
    ticker: str
    event_ticker: str
    market_id: str
    title: str
    yes_sub_title: str
    no_sub_title: str
    structure: str  # linear_cent | deci_cent
    tick: int
    fractional: bool
    strike_type: str
    floor_strike: float | None
    cap_strike: float | None
    created_ts: int
    open_ts: int
    close_ts: int
    expiration_ts: int
    updated_ts: int
    status: str = "initialized"
    result: str = ""
    settlement_value: int | None = None
    determination_ts: int | None = None
    settled_ts: int | None = None
    book: Book = field(default_factory=Book)
    last_price: int = 0
    last_size: int = 0
    previous_price: int = 0
    volume: int = 0
    open_interest: int = 0
    dollar_volume_units: int = 0  # sum(count * price) in 1/100 contract * 1/10,000 dollar
    weight: float = 1.0
    ticker_state: tuple[int, ...] = ()
    #: Multivariate (combo) market: its collection and selected legs (§4 Market object).
    mve_collection: str | None = None
    mve_legs: list[dict[str, str]] = field(default_factory=list)

    @property
    def status_filter(self) -> str:
        """This market's status in ``GET /markets?status=`` vocabulary."""
        return STATUS_FILTER[self.status]


class Namer:
    """Unique, Kalshi-looking tickers from a seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def _unique(self, make: str) -> str:
        name = make
        n = 2
        while name in self._used:
            name = f"{make}{n}"
            n += 1
        self._used.add(name)
        return name

    def series(self) -> str:
        """``KXABCD``-style series ticker."""
        letters = "".join(self._rng.choices(string.ascii_uppercase, k=self._rng.randint(3, 6)))
        return self._unique(f"KX{letters}")

    def event(self, series: str, when_s: int) -> str:
        """``KXABCD-26NOV14`` plus a disambiguating letter when needed."""
        day = (when_s // 86_400) % 28 + 1
        month = MONTHS[(when_s // 2_592_000) % 12]
        return self._unique(f"{series}-26{month}{day:02d}")

    def market(self, event: str, strike: float) -> str:
        """``<event>-T53.5`` / ``<event>-B53.5``."""
        prefix = self._rng.choice("TB")
        return self._unique(f"{event}-{prefix}{strike:g}")
