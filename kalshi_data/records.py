"""Typed records of Kalshi data, one class per synced table, and the fixed-point helpers.

Each record is a slotted dataclass with ``table`` (the :mod:`kalshi_data.tables` name) and
``row(received_at_us, *, suspect=False, ...)`` returning a tuple in exactly
``tables.<TABLE>.column_names`` order, ready for COPY:

- prices: int, 1/10,000 dollar; counts: int, 1/100 contract (signed for deltas);
- times: int microseconds since the Unix epoch (``exchange_ts``, ``received_at``, ``updated_time``);
- ``content_hash``: signed 64-bit int, blake2b (8 bytes) over a canonical JSON serialisation of
  the record's normalised state fields (the identity of *state* rows, DESIGN §3);
- uuids: :class:`uuid.UUID`; jsonb: canonical JSON ``str`` (sorted keys); arrays: lists.

The records of the three per-frame types (:class:`DeltaRec`, :class:`TradeRec`,
:class:`TickerRec`) are not frozen: the gatherer builds one per WebSocket frame, and a frozen
dataclass costs about four times as much to build (``object.__setattr__`` per field). Treat them
as immutable all the same; the others are frozen.

Times the exchange does not send:

- WS ``orderbook_snapshot`` frames carry no timestamp. ``SnapshotRec.row`` takes
  ``snapshot_ts_us``; when omitted it is ``received_at_us`` truncated to the whole second, which
  every gatherer receiving the same snapshot in the same second agrees on. REST snapshots should
  pass their scheduled slot time.
- an ``orderbook_delta`` without ``ts_ms``/``ts`` (optional on the wire) gets the same fallback:
  the received time truncated to the second.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson

from kalshi_data.kalshi.fixedpoint import (
    COUNT_SCALE,
    PRICE_SCALE,
    format_count,
    format_price,
    parse_count,
    parse_price,
)

__all__ = [
    "COUNT_SCALE",
    "PRICE_SCALE",
    "DeltaRec",
    "EventRec",
    "LifecycleKind",
    "LifecycleRec",
    "MarketRec",
    "Record",
    "SeriesRec",
    "SnapshotRec",
    "TickerRec",
    "TradeRec",
    "canonical_json",
    "content_hash",
    "format_count",
    "format_price",
    "parse_count",
    "parse_price",
    "second_floor_us",
]

LifecycleKind = Literal["market", "event", "fee"]
#: A price level: (price in 1/10,000 $, count in 1/100 contract).
Level = tuple[int, int]


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


def content_hash(*parts: Any) -> int:
    """Signed 64-bit blake2b digest of the canonical JSON of ``parts`` (a state's identity)."""
    digest = hashlib.blake2b(
        orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def second_floor_us(us: int) -> int:
    """A microsecond time truncated to its whole second."""
    return us - us % 1_000_000


@dataclass(slots=True)  # not frozen: built per frame, see the module docstring
class TradeRec:
    """A public trade (WS ``trade`` or REST ``/markets/trades``); identity ``(trade_id, ts)``."""

    table: ClassVar[str] = "trades"

    trade_id: uuid.UUID
    ticker: str
    exchange_ts_us: int
    yes_price: int
    no_price: int
    count: int
    taker_outcome_side: str | None
    taker_book_side: str | None
    taker_side: str | None
    is_block_trade: bool
    sid: int | None = None
    seq: int | None = None

    def row(self, received_at_us: int, *, suspect: bool = False) -> tuple[Any, ...]:
        """The ``trades`` row."""
        return (
            self.trade_id,
            self.ticker,
            self.exchange_ts_us,
            self.yes_price,
            self.no_price,
            self.count,
            self.taker_outcome_side,
            self.taker_book_side,
            self.taker_side,
            self.is_block_trade,
            self.sid,
            self.seq,
            suspect,
            received_at_us,
        )


@dataclass(slots=True)  # not frozen: built per frame, see the module docstring
class DeltaRec:
    """An order-book change; ``exchange_ts_us`` is None when the frame had no time."""

    table: ClassVar[str] = "orderbook_deltas"

    ticker: str
    market_id: uuid.UUID | None
    exchange_ts_us: int | None
    side: str
    price: int
    delta: int
    sid: int | None = None
    seq: int | None = None
    #: The NO-side price convention the wire used (``"no"``: NO prices, ``"yes"``:
    #: ``use_yes_price`` YES scale). ``price`` is always stored in the NO convention.
    wire_scale: str = "no"

    def ts_us(self, received_at_us: int) -> int:
        """The exchange time, or the received time truncated to the second when absent."""
        if self.exchange_ts_us is not None:
            return self.exchange_ts_us
        return second_floor_us(received_at_us)

    def identity(self, received_at_us: int) -> tuple[str, int, str, int, int]:
        """``(ticker, exchange_ts, side, price, delta)``: the tuple ``k`` counts occurrences of."""
        return (self.ticker, self.ts_us(received_at_us), self.side, self.price, self.delta)

    def row(self, received_at_us: int, *, k: int, suspect: bool = False) -> tuple[Any, ...]:
        """The ``orderbook_deltas`` row; ``k`` is the occurrence index of :meth:`identity`."""
        return (
            self.ticker,
            self.market_id,
            self.ts_us(received_at_us),
            self.side,
            self.price,
            self.delta,
            k,
            self.sid,
            self.seq,
            suspect,
            received_at_us,
        )


@dataclass(frozen=True, slots=True)
class SnapshotRec:
    """A full order book (both sides are bids, ascending by price, zero levels dropped)."""

    table: ClassVar[str] = "orderbook_snapshots"

    ticker: str
    market_id: uuid.UUID | None
    source: Literal["ws", "rest"]
    yes: tuple[Level, ...]
    no: tuple[Level, ...]
    sid: int | None = None
    seq: int | None = None
    #: The NO-side price convention the wire used (see :class:`DeltaRec`); ``no`` levels are
    #: always stored as NO bids at NO prices, the REST book's convention.
    wire_scale: str = "no"

    @property
    def content_hash(self) -> int:
        """Hash of the normalised book (both sides), independent of time, source and sid."""
        return content_hash("book", self.ticker, self.yes, self.no)

    def row(
        self, received_at_us: int, *, suspect: bool = False, snapshot_ts_us: int | None = None
    ) -> tuple[Any, ...]:
        """The ``orderbook_snapshots`` row.

        Args:
            received_at_us: the gatherer's receive time.
            suspect: rows received between a gap and its recovery.
            snapshot_ts_us: the ``exchange_ts`` to store; default: ``received_at_us`` truncated
                to the second (WS snapshots carry no time). REST polls pass their slot time.
        """
        ts = second_floor_us(received_at_us) if snapshot_ts_us is None else snapshot_ts_us
        return (
            self.ticker,
            self.market_id,
            ts,
            self.source,
            [p for p, _ in self.yes],
            [c for _, c in self.yes],
            [p for p, _ in self.no],
            [c for _, c in self.no],
            self.content_hash,
            self.sid,
            self.seq,
            suspect,
            received_at_us,
        )


@dataclass(slots=True)  # not frozen: built per frame, see the module docstring
class TickerRec:
    """A ticker state; ``price``/``yes_bid``/``yes_ask`` are None when the wire had ``""``."""

    table: ClassVar[str] = "tickers"

    ticker: str
    market_id: uuid.UUID | None
    exchange_ts_us: int
    price: int | None
    yes_bid: int | None
    yes_ask: int | None
    volume: int
    open_interest: int
    dollar_volume: int
    dollar_open_interest: int
    yes_bid_size: int
    yes_ask_size: int
    last_trade_size: int
    sid: int | None = None

    @property
    def content_hash(self) -> int:
        """Hash of the state fields (every column between ``exchange_ts`` and the hash)."""
        return content_hash(
            "ticker",
            self.ticker,
            self.price,
            self.yes_bid,
            self.yes_ask,
            self.volume,
            self.open_interest,
            self.dollar_volume,
            self.dollar_open_interest,
            self.yes_bid_size,
            self.yes_ask_size,
            self.last_trade_size,
        )

    def row(self, received_at_us: int, *, suspect: bool = False) -> tuple[Any, ...]:
        """The ``tickers`` row (the table has no suspect/sid/seq columns: ``suspect`` is unused)."""
        del suspect
        return (
            self.ticker,
            self.market_id,
            self.exchange_ts_us,
            self.price,
            self.yes_bid,
            self.yes_ask,
            self.volume,
            self.open_interest,
            self.dollar_volume,
            self.dollar_open_interest,
            self.yes_bid_size,
            self.yes_ask_size,
            self.last_trade_size,
            self.content_hash,
            received_at_us,
        )


@dataclass(frozen=True, slots=True)
class LifecycleRec:
    """A lifecycle message: market (``market_lifecycle_v2``), event, or fee update.

    ``ticker`` is the market ticker (kind market) or event ticker (event, fee); ``event_type`` is
    the message's ``event_type`` for markets, else the frame type; ``payload`` is the canonical
    JSON of the whole ``msg``.
    """

    table: ClassVar[str] = "lifecycle_events"

    kind: LifecycleKind
    ticker: str
    event_type: str
    payload: str
    sid: int | None = None
    seq: int | None = None

    @property
    def content_hash(self) -> int:
        """Hash of the canonical payload."""
        return content_hash("lifecycle", self.kind, self.payload)

    def row(self, received_at_us: int, *, suspect: bool = False) -> tuple[Any, ...]:
        """The ``lifecycle_events`` row."""
        return (
            self.kind,
            self.ticker,
            self.event_type,
            self.payload,
            self.content_hash,
            self.sid,
            self.seq,
            suspect,
            received_at_us,
        )


@dataclass(frozen=True, slots=True)
class MarketRec:
    """A REST market object; ``data`` is its canonical JSON."""

    table: ClassVar[str] = "markets"

    ticker: str
    event_ticker: str
    status: str
    updated_time_us: int | None
    data: str

    @property
    def content_hash(self) -> int:
        """Hash of the canonical object."""
        return content_hash("market", self.data)

    def fields(self) -> dict[str, Any]:
        """The object as a dict (decoded from ``data``)."""
        out: dict[str, Any] = orjson.loads(self.data)
        return out

    def row(self, received_at_us: int, *, suspect: bool = False) -> tuple[Any, ...]:
        """The ``markets`` row (``suspect`` is unused: metadata has no such column)."""
        del suspect
        return (
            self.ticker,
            self.event_ticker,
            self.status,
            self.updated_time_us,
            self.data,
            self.content_hash,
            received_at_us,
        )


@dataclass(frozen=True, slots=True)
class EventRec:
    """A REST event object (nested ``markets`` removed); ``data`` is its canonical JSON."""

    table: ClassVar[str] = "events"

    event_ticker: str
    series_ticker: str
    updated_time_us: int | None
    data: str

    @property
    def content_hash(self) -> int:
        """Hash of the canonical object."""
        return content_hash("event", self.data)

    def row(self, received_at_us: int, *, suspect: bool = False) -> tuple[Any, ...]:
        """The ``events`` row (``suspect`` is unused)."""
        del suspect
        return (
            self.event_ticker,
            self.series_ticker,
            self.updated_time_us,
            self.data,
            self.content_hash,
            received_at_us,
        )


@dataclass(frozen=True, slots=True)
class SeriesRec:
    """A REST series object; ``data`` is its canonical JSON."""

    table: ClassVar[str] = "series"

    ticker: str
    updated_time_us: int | None
    data: str

    @property
    def content_hash(self) -> int:
        """Hash of the canonical object."""
        return content_hash("series", self.data)

    def row(self, received_at_us: int, *, suspect: bool = False) -> tuple[Any, ...]:
        """The ``series`` row (``suspect`` is unused)."""
        del suspect
        return (
            self.ticker,
            self.updated_time_us,
            self.data,
            self.content_hash,
            received_at_us,
        )


Record = (
    TradeRec | DeltaRec | SnapshotRec | TickerRec | LifecycleRec | MarketRec | EventRec | SeriesRec
)
