"""Registry: REST load, version rows on change, lifecycle open/close, confirmed closes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from gatherer.ingest import Ingest
from gatherer.metrics import GathererMetrics
from gatherer.registry import Registry
from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.kalshi.rest import KalshiRest
from kalshi_data.records import EventRec, LifecycleRec, MarketRec, SeriesRec


def market(ticker: str, status: str = "active", title: str = "t") -> MarketRec:
    data = orjson.dumps({"ticker": ticker, "status": status, "title": title}).decode()
    return MarketRec(ticker, "EV", status, None, data)


class FakeExchange(KalshiRest):
    """A REST client whose answers come from dicts (a small real subclass, no network)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9/trade-api/v2")
        self.listed: dict[str, MarketRec] = {}
        self.known: dict[str, MarketRec] = {}
        self.bad = 0

    async def get_markets(  # type: ignore[override]
        self, status: str | None = None, *, tickers: Sequence[str] | None = None, **_: Any
    ) -> AsyncIterator[MarketRec | DeadLetter]:
        if tickers is not None:
            for t in tickers:
                if t in self.known:
                    yield self.known[t]
            return
        if status == "open":
            for rec in self.listed.values():
                yield rec
            for _i in range(self.bad):
                yield DeadLetter("market: bad status", b"{}")

    async def get_events(  # type: ignore[override]
        self, status: str | None = None, **_: Any
    ) -> AsyncIterator[EventRec | DeadLetter]:
        yield EventRec("EV", "SER", None, '{"event_ticker":"EV"}')

    async def get_series(self, **_: Any) -> AsyncIterator[SeriesRec | DeadLetter]:  # type: ignore[override]
        yield SeriesRec("SER", None, '{"ticker":"SER"}')


class Sink:
    """Collects rows and the open/close callbacks."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, tuple[Any, ...]]] = []
        self.opened: list[str] = []
        self.closed: list[str] = []

    def put(self, table: str, row: tuple[Any, ...]) -> None:
        self.rows.append((table, row))

    def open(self, markets: Any) -> int:
        new = list(markets)
        self.opened += new
        return len(new)

    def close(self, markets: Any) -> int:
        gone = list(markets)
        self.closed += gone
        return len(gone)

    def count(self, table: str) -> int:
        return sum(1 for t, _ in self.rows if t == table)


def make(ex: FakeExchange, sink: Sink) -> Registry:
    ingest = Ingest(sink.put)
    return Registry(
        ex,
        sink.put,
        ingest,
        GathererMetrics("u"),
        open_markets=sink.open,
        close_markets=sink.close,
        statuses=("open",),
    )


async def test_load_opens_markets_and_writes_versions_only_on_change():
    """First sync opens every listed market; a second sync writes only changed objects."""
    ex, sink = FakeExchange(), Sink()
    ex.listed = {t: market(t) for t in ("A", "B")}
    ex.bad = 1
    reg = make(ex, sink)
    await reg.sync()
    assert sorted(sink.opened) == ["A", "B"]
    assert (sink.count("markets"), sink.count("events"), sink.count("series")) == (2, 1, 1)
    assert sink.count("dead_letters") == 1
    ex.listed["B"] = market("B", title="renamed")
    await reg.sync()
    assert sink.count("markets") == 3  # only B's new version
    assert sink.count("events") == 1
    assert reg.loaded_event.is_set()
    await ex.close()


async def test_vanished_market_is_closed_only_when_rest_confirms():
    """A market missing from the open list stays while REST says it is still open."""
    ex, sink = FakeExchange(), Sink()
    ex.listed = {t: market(t) for t in ("A", "B")}
    reg = make(ex, sink)
    await reg.sync()
    del ex.listed["A"]
    ex.known["A"] = market("A", status="initialized")
    del ex.listed["B"]
    ex.known["B"] = market("B", status="closed")
    await reg.sync()
    assert sink.closed == ["B"]
    assert set(reg.markets) == {"A"}
    await ex.close()


async def test_lifecycle_opens_and_closes_at_once():
    """created opens a market immediately, settled closes it; both refetch metadata later."""
    ex, sink = FakeExchange(), Sink()
    reg = make(ex, sink)
    reg.on_lifecycle(LifecycleRec("market", "NEW", "created", "{}"))
    assert sink.opened == ["NEW"]
    reg.on_lifecycle(LifecycleRec("market", "NEW", "settled", "{}"))
    assert sink.closed == ["NEW"]
    assert reg.markets == {}
    await ex.close()


async def test_issue11_unpaused_market_is_no_late_subscription() -> None:
    """``activated`` with ``is_deactivated`` false ends a pause: the resting book it shows in
    its first snapshot is no ``late_subscribe`` gap; an activation without it still is checked."""
    from kalshi_data.records import SnapshotRec

    ex, sink = FakeExchange(), Sink()
    reg = make(ex, sink)
    unpause = orjson.dumps(
        {"market_ticker": "P", "event_type": "activated", "is_deactivated": False},
        option=orjson.OPT_SORT_KEYS,
    ).decode()
    reg.on_lifecycle(LifecycleRec("market", "P", "activated", unpause))
    reg.on_lifecycle(LifecycleRec("market", "Q", "activated", '{"event_type":"activated"}'))
    assert sorted(sink.opened) == ["P", "Q"]
    ingest = reg._ingest
    book = ((4000, 100),)
    ingest.record(SnapshotRec("P", None, "ws", book, ()), "orderbook_snapshot", 1)
    ingest.record(SnapshotRec("Q", None, "ws", book, ()), "orderbook_snapshot", 1)
    gaps = [row for t, row in sink.rows if t == "gaps" and row[1] == "open"]
    assert [row[4] for row in gaps] == [["Q"]]
    assert ingest.gaps_opened == 1
    await ex.close()


def test_issue11_paused_is_a_default_status() -> None:
    """``paused`` is a ``GET /markets`` status filter value and carried by default."""
    from gatherer.config import GathererConfig

    assert GathererConfig.__dataclass_fields__["market_statuses"].default == (
        "unopened",
        "open",
        "paused",
    )
