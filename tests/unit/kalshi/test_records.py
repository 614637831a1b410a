"""Records produce rows in exactly the column order of kalshi_data.tables."""

from __future__ import annotations

import uuid

import orjson

from kalshi_data import tables
from kalshi_data.records import (
    DeltaRec,
    EventRec,
    LifecycleRec,
    MarketRec,
    SeriesRec,
    SnapshotRec,
    TickerRec,
    TradeRec,
    canonical_json,
    content_hash,
)

RECV = 1_669_149_841_987_654
MID = uuid.UUID("9b0f6b43-0000-4000-8000-000000000001")


def _named(spec: tables.TableSpec, row: tuple[object, ...]) -> dict[str, object]:
    assert len(row) == len(spec.columns)
    return dict(zip(spec.column_names, row, strict=True))


def test_every_record_names_its_table() -> None:
    """Each record class maps to a synced table."""
    for cls in (TradeRec, DeltaRec, SnapshotRec, TickerRec, LifecycleRec, MarketRec, EventRec):
        assert cls.table in tables.BY_NAME
    assert SeriesRec.table == tables.SERIES.name


def test_trade_row_columns() -> None:
    """A trade row lines up with tables.TRADES column by column."""
    tid = uuid.uuid4()
    rec = TradeRec(tid, "T-1", 5, 3600, 6400, 13600, "no", "ask", "no", False, 11, 2)
    row = _named(tables.TRADES, rec.row(RECV, suspect=True))
    assert row["trade_id"] == tid
    assert row["exchange_ts"] == 5
    assert (row["yes_price"], row["no_price"], row["count"]) == (3600, 6400, 13600)
    assert (row["sid"], row["seq"], row["suspect"], row["received_at"]) == (11, 2, True, RECV)


def test_delta_row_uses_k_and_time_fallback() -> None:
    """Delta rows carry k; a delta without time falls back to the received second."""
    rec = DeltaRec("T-1", MID, None, "yes", 9600, -5400, 2, 3)
    row = _named(tables.ORDERBOOK_DELTAS, rec.row(RECV, k=1))
    assert row["k"] == 1
    assert row["exchange_ts"] == 1_669_149_841_000_000
    assert row["delta"] == -5400
    assert row["suspect"] is False
    timed = DeltaRec("T-1", MID, 7, "yes", 9600, -5400)
    assert timed.row(RECV, k=0)[2] == 7
    assert timed.identity(RECV) == ("T-1", 7, "yes", 9600, -5400)


def test_snapshot_row_arrays_hash_and_time() -> None:
    """Snapshot rows split levels into arrays; hash ignores time, sid and source."""
    rec = SnapshotRec("T-1", MID, "ws", ((800, 30000), (2200, 33300)), ((5400, 2000),), 2, 2)
    row = _named(tables.ORDERBOOK_SNAPSHOTS, rec.row(RECV))
    assert row["yes_prices"] == [800, 2200]
    assert row["yes_counts"] == [30000, 33300]
    assert row["no_prices"] == [5400]
    assert row["no_counts"] == [2000]
    assert row["exchange_ts"] == 1_669_149_841_000_000
    assert rec.row(RECV, snapshot_ts_us=42)[2] == 42
    rest = SnapshotRec("T-1", None, "rest", rec.yes, rec.no)
    assert rest.content_hash == rec.content_hash
    other = SnapshotRec("T-1", MID, "ws", ((800, 30001), (2200, 33300)), rec.no)
    assert other.content_hash != rec.content_hash
    assert -(2**63) <= rec.content_hash < 2**63


def test_ticker_row_and_hash() -> None:
    """Ticker rows line up with tables.TICKERS; a changed field changes the hash."""
    rec = TickerRec(
        "T-1", MID, 9, 4800, 4500, 5300, 3389600, 2042200, 16948, 10211, 30000, 15000, 2500
    )
    row = _named(tables.TICKERS, rec.row(RECV))
    assert row["price"] == 4800
    assert row["dollar_volume"] == 16948
    assert row["content_hash"] == rec.content_hash
    changed = TickerRec(
        "T-1", MID, 9, 4800, 4500, 5300, 3389600, 2042200, 16948, 10211, 30000, 15000, 2600
    )
    assert changed.content_hash != rec.content_hash


def test_lifecycle_and_metadata_rows() -> None:
    """Lifecycle, market, event and series rows line up with their table specs."""
    payload = canonical_json({"b": 1, "a": [1, 2]})
    assert payload == '{"a":[1,2],"b":1}'
    life = LifecycleRec("market", "T-1", "settled", payload, 13, 4)
    row = _named(tables.LIFECYCLE_EVENTS, life.row(RECV))
    assert (row["kind"], row["ticker"], row["event_type"]) == ("market", "T-1", "settled")
    assert orjson.loads(str(row["payload"])) == {"a": [1, 2], "b": 1}
    market = MarketRec("T-1", "E-1", "active", 5, canonical_json({"ticker": "T-1"}))
    mrow = _named(tables.MARKETS, market.row(RECV))
    assert mrow["content_hash"] == market.content_hash
    assert market.fields() == {"ticker": "T-1"}
    event = EventRec("E-1", "S-1", None, "{}")
    assert _named(tables.EVENTS, event.row(RECV))["series_ticker"] == "S-1"
    series = SeriesRec("S-1", None, "{}")
    assert _named(tables.SERIES, series.row(RECV))["ticker"] == "S-1"


def test_content_hash_is_canonical() -> None:
    """Key order does not change a hash; distinct values do."""
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})
