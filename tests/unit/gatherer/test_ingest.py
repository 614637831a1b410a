"""Records to rows: k, suspect windows, gap and dead-letter rows (gatherer/ingest.py)."""

from __future__ import annotations

from typing import Any

from gatherer.ingest import Ingest
from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.records import DeltaRec, SnapshotRec, TickerRec
from kalshi_data.tables import BY_NAME

TS = 1_700_000_000_123_000


class Rows(list[tuple[str, tuple[Any, ...]]]):
    """A put() target that keeps rows (stands in for the writer; no database involved)."""

    def put(self, table: str, row: tuple[Any, ...]) -> None:
        assert len(row) == len(BY_NAME[table].columns), table
        self.append((table, row))

    def of(self, table: str) -> list[dict[str, Any]]:
        names = BY_NAME[table].column_names
        return [dict(zip(names, r, strict=True)) for t, r in self if t == table]


def delta(ticker: str = "M", price: int = 4200, d: int = 100) -> DeltaRec:
    return DeltaRec(ticker, None, TS, "yes", price, d, sid=1, seq=1)


def snap(ticker: str = "M", yes: tuple[tuple[int, int], ...] = ()) -> SnapshotRec:
    return SnapshotRec(ticker, None, "ws", yes, (), sid=1, seq=1)


def test_identical_deltas_get_k_and_rows_follow_the_contract():
    """Identical deltas in one ms become k = 0, 1; rows have the table's columns."""
    rows = Rows()
    ingest = Ingest(rows.put)
    ingest.record(delta(), "orderbook_delta", TS + 5)
    ingest.record(delta(), "orderbook_delta", TS + 6)
    ingest.record(delta(d=-100), "orderbook_delta", TS + 7)
    assert [r["k"] for r in rows.of("orderbook_deltas")] == [0, 1, 0]
    assert ingest.frames["orderbook_delta"] == 3


def test_rows_after_a_gap_are_suspect_until_the_snapshot():
    """Deltas of a gapped market are suspect until its fresh snapshot; then the gap recovers."""
    rows = Rows()
    ingest = Ingest(rows.put)
    ingest.open_gap(
        sid=1, channel="orderbook_delta", markets=("M",), expected=5, received=8, how="get_snapshot"
    )
    ingest.record(delta(), "orderbook_delta", TS)
    ingest.record(delta("OTHER"), "orderbook_delta", TS)
    ingest.record(snap(), "orderbook_snapshot", TS + 10)
    ingest.record(delta(d=7), "orderbook_delta", TS + 11)
    suspect = {(r["ticker"], r["delta"]): r["suspect"] for r in rows.of("orderbook_deltas")}
    assert suspect == {("M", 100): True, ("OTHER", 100): False, ("M", 7): False}
    states = [(g["state"], g["how"]) for g in rows.of("gaps")]
    assert states == [("open", None), ("recovered", "get_snapshot")]


def test_new_market_with_a_non_empty_first_book_is_a_gap():
    """A market created after we started whose first snapshot has orders: deltas were missed."""
    rows = Rows()
    ingest = Ingest(rows.put)
    ingest.expect_empty_book("NEW")
    ingest.expect_empty_book("QUIET")
    ingest.record(snap("QUIET"), "orderbook_snapshot", TS)
    assert rows.of("gaps") == []
    ingest.record(snap("NEW", yes=((4200, 100),)), "orderbook_snapshot", TS)
    gaps = rows.of("gaps")
    assert [(g["state"], g["markets"], g["how"]) for g in gaps] == [
        ("open", ["NEW"], None),
        ("recovered", ["NEW"], "late_subscribe"),
    ]
    assert not ingest.gaps.is_suspect("NEW")
    assert ingest.gaps_opened == 1


def test_dead_letters_are_rows_with_reason_and_raw_bytes():
    """A rejected frame becomes a dead_letters row (source ws) and is counted."""
    rows = Rows()
    ingest = Ingest(rows.put)
    ingest.record(DeadLetter("bad price", b"{...}"), "orderbook_delta", TS)
    (dl,) = rows.of("dead_letters")
    assert (dl["source"], dl["reason"], dl["raw"]) == ("ws", "bad price", b"{...}")
    _, dead = ingest.take_counts()
    assert dead == {"ws": 1}
    assert ingest.take_counts()[1] == {}


def test_activation_before_the_first_snapshot_is_a_gap_even_with_an_empty_book():
    """Activated before our subscription answered: orders may have come and gone unseen."""
    rows = Rows()
    ingest = Ingest(rows.put)
    ingest.expect_empty_book("NEW")
    ingest.market_activated("NEW")
    ingest.record(snap("NEW"), "orderbook_snapshot", TS)
    assert [g["how"] for g in rows.of("gaps")] == [None, "late_subscribe"]


def _ticker(price: int, ticker: str = "M", ts: int = TS) -> TickerRec:
    return TickerRec(ticker, None, ts, price, None, None, 100, 100, 1, 1, 10, 10, 10, sid=2)


def test_a_repeated_ticker_state_in_one_millisecond_is_written_once():
    """A, B, A within one exchange time: the second A has A's identity, so it is skipped (the
    database would keep one either way); the same state at a later time is a new row."""
    rows = Rows()
    ingest = Ingest(rows.put)
    for rec in (_ticker(4200), _ticker(4300), _ticker(4200), _ticker(4200, "N")):
        ingest.record(rec, "ticker", TS + 9)
    ingest.record(_ticker(4200, ts=TS + 1000), "ticker", TS + 1009)
    written = [(r["ticker"], r["price"], r["exchange_ts"]) for r in rows.of("tickers")]
    assert written == [
        ("M", 4200, TS),
        ("M", 4300, TS),
        ("N", 4200, TS),
        ("M", 4200, TS + 1000),
    ]
    assert ingest.repeated_states == 1
    assert ingest.rows["tickers"] == 4
    assert ingest.frames["ticker"] == 5
    ingest.forget_market("M")  # its remembered states go with it
    ingest.record(_ticker(4200, ts=TS + 1000), "ticker", TS + 1010)
    assert ingest.rows["tickers"] == 5


def test_issue11_subunit_dead_letters_are_counted() -> None:
    """A sub-unit price dead letter counts in ``subunit_prices`` (gatherer_subunit_prices_total)."""
    from gatherer.ingest import Ingest
    from kalshi_data.kalshi.parse import parse_frame

    rows: list[tuple[str, tuple[object, ...]]] = []
    ingest = Ingest(lambda t, r: rows.append((t, r)))
    bad = parse_frame(
        b'{"type":"trade","sid":3,"seq":1,"msg":{"trade_id":"6a0c1b5e-8f4e-4c1a-9b7e-2d3f4a5b6c7d",'
        b'"market_ticker":"KXA-1","yes_price_dollars":"0.41005","no_price_dollars":"0.58995",'
        b'"count_fp":"1.00","ts_ms":1767225600000}}'
    )
    ingest.record(bad, "trade", 1_767_225_600_000_000)  # type: ignore[arg-type]
    ingest.dead_letter("trade: count_fp: bad", b"x", "ws", 1_767_225_600_000_000)
    assert ingest.subunit_prices == 1
    assert [t for t, _ in rows] == ["dead_letters", "dead_letters"]
