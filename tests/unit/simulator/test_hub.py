"""The fan-out (simulator/hub.py), fed events directly: each event reaches exactly the
subscriptions of its channel that want its market, in order, serialised once; the truth gets
every event; withheld trades reach the truth and no subscriber; the routing tables follow
subscription changes, also in the middle of a batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from simulator import shapes
from simulator.config import SimConfig
from simulator.frames import SEQUENCED
from simulator.hub import CHANNEL_OF, Hub
from simulator.market import Emitted, Exchange
from simulator.truth import TruthLog


@dataclass
class _Sub:
    """The subscriber side of a ``Sub``: what the hub reads, and what it was given."""

    sid: int
    channel: str
    tickers: dict[str, None] | None
    yes_scale: bool = False
    got: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def deliver(self, frame_type: str, msg: bytes, sequenced: bool) -> None:
        self.got.append((frame_type, msg, sequenced))


@dataclass
class _Session:
    conn_id: int
    subs: dict[int, _Sub] = field(default_factory=dict)
    closed: bool = False

    def close(self) -> None:
        self.closed = True


def _hub(truth: TruthLog | None = None) -> Hub:
    exchange = Exchange(7, 4, int(time.time()))
    return Hub(SimConfig(seed=7, markets=4), exchange, truth, now_ms=lambda: 1_000)


def _add(hub: Hub, conn_id: int, *subs: _Sub) -> _Session:
    session = _Session(conn_id, {s.sid: s for s in subs})
    hub.add(cast(Any, session))
    hub.routes_changed()
    return session


def test_every_frame_type_has_a_channel() -> None:
    assert set(CHANNEL_OF) >= SEQUENCED - {"orderbook_snapshot"}
    assert CHANNEL_OF["event_lifecycle"] == "market_lifecycle_v2"


def test_events_reach_the_channel_and_the_markets_subscribed() -> None:
    hub = _hub()
    every = _Sub(1, "trade", None)
    only_a = _Sub(2, "trade", {"A": None})
    deltas_a = _Sub(3, "orderbook_delta", {"A": None})
    _add(hub, 1, every, only_a, deltas_a)
    hub.publish([("trade", "A", {"n": 1}), ("trade", "B", {"n": 2}), ("ticker", "A", {"n": 3})])
    assert [orjson.loads(m)["n"] for _, m, _ in every.got] == [1, 2]
    assert [orjson.loads(m)["n"] for _, m, _ in only_a.got] == [1]
    assert deltas_a.got == []
    assert hub.events == {"trade": 2, "ticker": 1}


def test_one_serialisation_shared_by_every_subscriber() -> None:
    hub = _hub()
    a, b = _Sub(1, "trade", None), _Sub(1, "trade", {"A": None})
    _add(hub, 1, a)
    _add(hub, 2, b)
    hub.publish([("trade", "A", {"n": 1})])
    assert a.got[0][1] is b.got[0][1]  # the very same bytes object
    assert a.got[0][2] is ("trade" in SEQUENCED)


def test_yes_scale_subscribers_get_no_side_deltas_on_the_yes_leg() -> None:
    hub = _hub()
    m = hub.exchange.market_list[0]
    plain = _Sub(1, "orderbook_delta", {m.ticker: None})
    yes = _Sub(2, "orderbook_delta", {m.ticker: None}, yes_scale=True)
    _add(hub, 1, plain, yes)
    msg = shapes.delta_msg(m, "no", m.tick, 100, 1_000)
    hub.publish([("orderbook_delta", m.ticker, msg)])
    body = orjson.dumps(msg)
    assert plain.got == [("orderbook_delta", body, True)]
    assert yes.got == [("orderbook_delta", shapes.yes_scale_delta(body), True)]
    assert yes.got[0][1] != body


def test_truth_has_every_event_and_withheld_trades_reach_nobody(tmp_path: Path) -> None:
    truth = TruthLog(tmp_path / "truth.jsonl")
    hub = _hub(truth)
    sub = _Sub(1, "trade", None)
    _add(hub, 1, sub)
    hub.withhold_trades(2)
    batch: list[Emitted] = [("trade", "A", {"n": i}) for i in range(4)]
    hub.publish([*batch, ("ticker", "A", {"n": 9})])
    truth.close()
    assert [orjson.loads(m)["n"] for _, m, _ in sub.got] == [2, 3]
    assert (hub.withhold, hub.trades_withheld) == (0, 2)
    lines = (tmp_path / "truth.jsonl").read_bytes().splitlines()
    assert len(lines) == 5
    assert all(b'"n":' in line for line in lines)


def test_routes_follow_subscription_changes() -> None:
    hub = _hub()
    a = _Sub(1, "trade", None)
    session = _add(hub, 1, a)
    hub.publish([("trade", "A", {"n": 1})])
    b = _Sub(2, "trade", None)
    session.subs[2] = b
    hub.publish([("trade", "A", {"n": 2})])
    assert b.got == []  # no routes_changed(): the tables are as they were
    hub.routes_changed()
    hub.publish([("trade", "A", {"n": 3})])
    assert [orjson.loads(m)["n"] for _, m, _ in b.got] == [3]
    hub.remove(cast(Any, session))
    assert session.closed
    assert hub.sessions == {}
    hub.publish([("trade", "A", {"n": 4})])
    assert len(a.got) == 3


def test_a_subscription_ended_mid_batch_gets_nothing_after() -> None:
    """Error 25 ends a subscription while the hub is delivering a batch: the hub rebuilds its
    tables before the next event of the same batch."""
    hub = _hub()
    session = _Session(1)

    @dataclass
    class _Ending(_Sub):
        def deliver(self, frame_type: str, msg: bytes, sequenced: bool) -> None:
            super().deliver(frame_type, msg, sequenced)
            session.subs.pop(self.sid)
            hub.routes_changed()

    ending = _Ending(1, "trade", None)
    session.subs[1] = ending
    hub.add(cast(Any, session))
    hub.publish([("trade", "A", {"n": i}) for i in range(3)])
    assert len(ending.got) == 1
