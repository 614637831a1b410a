"""Table specifications: the one place that names every synced table, its columns and identity.

The gatherer writer COPYs ``TableSpec.columns`` in this order, the deduplicator selects the same
columns (plus the poll cursor) and merges on ``identity``, the exporter writes them to Parquet, and
a test checks that the SQL migrations create exactly these columns and unique constraints.

Conventions (DESIGN.md §3):
- prices are integers in 1/10,000 dollar (``"0.4200"`` -> 4200), counts integers in 1/100
  contract (``"136.00"`` -> 13600); never floats;
- every time is ``timestamptz`` in the database and integer microseconds since the Unix epoch in
  Python; ``exchange_ts`` is the exchange's time, ``received_at`` the gatherer's clock;
- every gatherer row also carries the poll cursor ``(ingest_xid, ingest_id)`` (DESIGN §4.1), set by
  column defaults, so writers never send it;
- production rows carry ``gatherer_id`` (first contributor) and ``synced_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["event", "state", "metadata", "log"]

#: Columns every gatherer table has for cursor polling (defaults, never written by clients).
CURSOR_COLUMNS: tuple[str, str] = ("ingest_xid", "ingest_id")
#: Columns every production table adds.
PRODUCTION_COLUMNS: tuple[str, str] = ("gatherer_id", "synced_at")


@dataclass(frozen=True, slots=True)
class Column:
    """One column: name, PostgreSQL type, and whether NULL is allowed."""

    name: str
    pgtype: str
    nullable: bool = False


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A table synced from gatherers to production.

    Attributes:
        name: table name, identical in gatherer and production databases.
        columns: data columns in COPY order (cursor and production columns excluded).
        identity: the gatherer-side unique constraint (DESIGN §3); includes ``exchange_ts``
            where the table is partitioned by time.
        production_key: the production unique constraint (differs only for metadata, which
            production keeps as one row per ticker, upserted when newer).
        partitioned: partitioned by ``exchange_ts`` (hypertable or native range partitions).
        kind: ``event`` (two identical rows are two facts), ``state`` (identical rows are the
            same fact), ``metadata`` (versioned, newest wins) or ``log``.
    """

    name: str
    columns: tuple[Column, ...]
    identity: tuple[str, ...]
    production_key: tuple[str, ...]
    partitioned: bool
    kind: Kind

    @property
    def column_names(self) -> tuple[str, ...]:
        """Data column names in COPY order."""
        return tuple(c.name for c in self.columns)


def _c(name: str, pgtype: str, *, null: bool = False) -> Column:
    return Column(name, pgtype, null)


_RECV = _c("received_at", "timestamptz")
_SID = _c("sid", "integer", null=True)
_SEQ = _c("seq", "bigint", null=True)
_SUSPECT = _c("suspect", "boolean")

TRADES = TableSpec(
    name="trades",
    columns=(
        _c("trade_id", "uuid"),
        _c("ticker", "text"),
        _c("exchange_ts", "timestamptz"),
        _c("yes_price", "integer"),
        _c("no_price", "integer"),
        _c("count", "bigint"),
        _c("taker_outcome_side", "text", null=True),
        _c("taker_book_side", "text", null=True),
        _c("taker_side", "text", null=True),
        _c("is_block_trade", "boolean"),
        _SID,
        _SEQ,
        _SUSPECT,
        _RECV,
    ),
    identity=("trade_id", "exchange_ts"),
    production_key=("trade_id", "exchange_ts"),
    partitioned=True,
    kind="event",
)

ORDERBOOK_DELTAS = TableSpec(
    name="orderbook_deltas",
    columns=(
        _c("ticker", "text"),
        _c("market_id", "uuid", null=True),
        _c("exchange_ts", "timestamptz"),
        _c("side", "text"),
        _c("price", "integer"),
        _c("delta", "bigint"),
        _c("k", "integer"),
        _SID,
        _SEQ,
        _SUSPECT,
        _RECV,
    ),
    identity=("ticker", "exchange_ts", "side", "price", "delta", "k"),
    production_key=("ticker", "exchange_ts", "side", "price", "delta", "k"),
    partitioned=True,
    kind="event",
)

ORDERBOOK_SNAPSHOTS = TableSpec(
    name="orderbook_snapshots",
    columns=(
        _c("ticker", "text"),
        _c("market_id", "uuid", null=True),
        _c("exchange_ts", "timestamptz"),
        _c("source", "text"),
        _c("yes_prices", "integer[]"),
        _c("yes_counts", "bigint[]"),
        _c("no_prices", "integer[]"),
        _c("no_counts", "bigint[]"),
        _c("content_hash", "bigint"),
        _SID,
        _SEQ,
        _SUSPECT,
        _RECV,
    ),
    identity=("ticker", "exchange_ts", "source", "content_hash"),
    production_key=("ticker", "exchange_ts", "source", "content_hash"),
    partitioned=True,
    kind="state",
)

TICKERS = TableSpec(
    name="tickers",
    columns=(
        _c("ticker", "text"),
        _c("market_id", "uuid", null=True),
        _c("exchange_ts", "timestamptz"),
        _c("price", "integer", null=True),
        _c("yes_bid", "integer", null=True),
        _c("yes_ask", "integer", null=True),
        _c("volume", "bigint"),
        _c("open_interest", "bigint"),
        _c("dollar_volume", "bigint"),
        _c("dollar_open_interest", "bigint"),
        _c("yes_bid_size", "bigint"),
        _c("yes_ask_size", "bigint"),
        _c("last_trade_size", "bigint"),
        _c("content_hash", "bigint"),
        _RECV,
    ),
    identity=("ticker", "exchange_ts", "content_hash"),
    production_key=("ticker", "exchange_ts", "content_hash"),
    partitioned=True,
    kind="state",
)

LIFECYCLE_EVENTS = TableSpec(
    name="lifecycle_events",
    columns=(
        _c("kind", "text"),
        _c("ticker", "text"),
        _c("event_type", "text"),
        _c("payload", "jsonb"),
        _c("content_hash", "bigint"),
        _SID,
        _SEQ,
        _SUSPECT,
        _RECV,
    ),
    identity=("kind", "ticker", "event_type", "content_hash"),
    production_key=("kind", "ticker", "event_type", "content_hash"),
    partitioned=False,
    kind="state",
)

MARKETS = TableSpec(
    name="markets",
    columns=(
        _c("ticker", "text"),
        _c("event_ticker", "text"),
        _c("status", "text"),
        _c("updated_time", "timestamptz", null=True),
        _c("data", "jsonb"),
        _c("content_hash", "bigint"),
        _RECV,
    ),
    identity=("ticker", "content_hash"),
    production_key=("ticker",),
    partitioned=False,
    kind="metadata",
)

EVENTS = TableSpec(
    name="events",
    columns=(
        _c("event_ticker", "text"),
        _c("series_ticker", "text"),
        _c("updated_time", "timestamptz", null=True),
        _c("data", "jsonb"),
        _c("content_hash", "bigint"),
        _RECV,
    ),
    identity=("event_ticker", "content_hash"),
    production_key=("event_ticker",),
    partitioned=False,
    kind="metadata",
)

SERIES = TableSpec(
    name="series",
    columns=(
        _c("ticker", "text"),
        _c("updated_time", "timestamptz", null=True),
        _c("data", "jsonb"),
        _c("content_hash", "bigint"),
        _RECV,
    ),
    identity=("ticker", "content_hash"),
    production_key=("ticker",),
    partitioned=False,
    kind="metadata",
)

GAPS = TableSpec(
    name="gaps",
    columns=(
        _c("gap_id", "uuid"),
        _c("state", "text"),
        _c("sid", "integer", null=True),
        _c("channel", "text"),
        _c("markets", "text[]"),
        _c("expected", "bigint", null=True),
        _c("received", "bigint", null=True),
        _c("detected_at", "timestamptz"),
        _c("recovered_at", "timestamptz", null=True),
        _c("how", "text", null=True),
        _RECV,
    ),
    identity=("gap_id", "state"),
    production_key=("gap_id", "state"),
    partitioned=False,
    kind="log",
)

DEAD_LETTERS = TableSpec(
    name="dead_letters",
    columns=(
        _c("dl_id", "uuid"),
        _c("source", "text"),
        _c("reason", "text"),
        _c("raw", "bytea"),
        _RECV,
    ),
    identity=("dl_id",),
    production_key=("dl_id",),
    partitioned=False,
    kind="log",
)

#: Every table the deduplicator syncs, in sync order (metadata first so data can refer to it).
SYNCED_TABLES: tuple[TableSpec, ...] = (
    SERIES,
    EVENTS,
    MARKETS,
    TRADES,
    ORDERBOOK_DELTAS,
    ORDERBOOK_SNAPSHOTS,
    TICKERS,
    LIFECYCLE_EVENTS,
    GAPS,
    DEAD_LETTERS,
)
#: The high-volume tables, partitioned by ``exchange_ts``.
TIMESERIES_TABLES: tuple[TableSpec, ...] = tuple(t for t in SYNCED_TABLES if t.partitioned)
BY_NAME: dict[str, TableSpec] = {t.name: t for t in SYNCED_TABLES}
