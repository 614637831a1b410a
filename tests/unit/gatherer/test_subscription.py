"""The sans-I/O subscription session: replies, gaps, errors and reconnects in, commands out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gatherer.ingest import Ingest
from gatherer.subscription import (
    FIREHOSE,
    Action,
    Send,
    SubscriptionSession,
    Wake,
)
from kalshi_data.kalshi.wsproto import Data
from tests.unit.gatherer.test_ingest import Rows

A, B, C, D = "MKT-A", "MKT-B", "MKT-C", "MKT-D"
PAUSE = 0.25
TS = 1_700_000_000_000_000


def _frame(**obj: Any) -> str:
    return orjson.dumps(obj).decode()


class Harness:
    """A session with a real Ingest writing to a list; frames go through the real WsProtocol."""

    def __init__(self, *, per_subscription: int = 2, firehose: tuple[str, ...] = ()) -> None:
        self.rows = Rows()
        self.ingest = Ingest(self.rows.put)
        self.resyncs = 0
        self.session = SubscriptionSession(
            self.ingest,
            per_subscription=per_subscription,
            firehose=firehose,
            use_yes_price=False,
            retry_pause_s=PAUSE,
            on_resync=self._resynced,
        )

    def _resynced(self) -> None:
        self.resyncs += 1

    def feed(self, **frame: Any) -> list[Action]:
        """One received frame: data to ingest (as the shell does), the rest to the session."""
        actions: list[Action] = []
        for event in self.session.proto.feed(_frame(**frame)):
            if type(event) is Data:
                self.ingest.record(event.record, event.type, TS)
            else:
                actions += self.session.handle(event, TS)
        return actions

    def subscribed(self, cmd: dict[str, Any], sid: int) -> list[Action]:
        channel = cmd["params"]["channels"][0]
        return self.feed(id=cmd["id"], type="subscribed", msg={"channel": channel, "sid": sid})

    def error(self, cmd: dict[str, Any], code: int, sid: int | None = None) -> list[Action]:
        extra = {} if sid is None else {"sid": sid}
        return self.feed(id=cmd["id"], type="error", msg={"code": code, "msg": "no"}, **extra)

    def snapshot(self, sid: int, seq: int, ticker: str, cmd_id: int | None = None) -> None:
        extra = {} if cmd_id is None else {"id": cmd_id}
        msg = {"market_ticker": ticker, "yes_dollars_fp": [["0.5000", "1.00"]]}
        self.feed(type="orderbook_snapshot", sid=sid, seq=seq, msg=msg, **extra)

    def delta(self, sid: int, seq: int, ticker: str) -> list[Action]:
        msg = {
            "market_ticker": ticker,
            "price_dollars": "0.5000",
            "delta_fp": "1.00",
            "side": "yes",
            "ts_ms": 1_700_000_000_000,
        }
        return self.feed(type="orderbook_delta", sid=sid, seq=seq, msg=msg)

    def gaps(self) -> list[tuple[Any, ...]]:
        return [
            (g["state"], g["sid"], g["channel"], tuple(g["markets"]), g["how"])
            for g in self.rows.of("gaps")
        ]

    def live(self, markets: list[str], per: int = 2) -> dict[str, int]:
        """Want ``markets``, subscribe them (sids 100, 101, ...), each with its first snapshot."""
        self.session.want(add=markets)
        sids: dict[str, int] = {}
        for n, cmd in enumerate(sent(self.session.sync())):
            sid = 100 + n
            self.subscribed(cmd, sid)
            for seq, m in enumerate(cmd["params"]["market_tickers"], start=1):
                self.snapshot(sid, seq, m)
                sids[m] = sid
        return sids


def sent(actions: Sequence[Action]) -> list[dict[str, Any]]:
    """The commands among ``actions``, decoded."""
    return [orjson.loads(a.command.text) for a in actions if isinstance(a, Send)]


def wakes(actions: Sequence[Action]) -> list[float]:
    return [a.after_s for a in actions if isinstance(a, Wake)]


def test_start_subscribes_the_firehose_and_sync_batches_the_books():
    """A new connection subscribes each firehose channel; sync subscribes the wanted markets in
    batches of per_subscription, and each subscribed acknowledges its slot."""
    h = Harness(per_subscription=2, firehose=FIREHOSE)
    h.session.want(add=[C, A, B])
    start = h.session.start()
    assert [c["params"] for c in sent(start)] == [{"channels": [ch]} for ch in FIREHOSE]
    assert wakes(start) == [0.0]
    cmds = sent(h.session.sync())
    assert [c["params"] for c in cmds] == [
        {"channels": ["orderbook_delta"], "market_tickers": [A, B], "use_yes_price": False},
        {"channels": ["orderbook_delta"], "market_tickers": [C], "use_yes_price": False},
    ]
    assert not h.session.is_live(A)
    assert wakes(h.subscribed(cmds[0], 7)) == [0.0]
    assert h.session.is_live(A)
    assert h.session.is_live(B)
    assert not h.session.is_live(C)
    assert h.session.sync() == []  # nothing left to do while C's subscribe is in flight


def test_firehose_sids_map_to_their_channels():
    """Each firehose subscribed maps its sid to the channel; order-book sids are not in it."""
    h = Harness(firehose=FIREHOSE)
    for sid, cmd in enumerate(sent(h.session.start()), start=1):
        assert h.subscribed(cmd, sid) == []
    assert dict(h.session.firehose_sids) == {1: "trade", 2: "ticker", 3: "market_lifecycle_v2"}
    h.live([A])
    assert 100 not in h.session.firehose_sids


def test_want_adds_to_and_deletes_from_acknowledged_subscriptions():
    """A market wanted later goes into a slot with room (add_markets); an unwanted one is
    deleted from its slot; each ok frees the slot for the next command."""
    h = Harness(per_subscription=3)
    h.live([A, B])
    assert wakes(h.session.want(remove=[A])) == [0.0]
    (delete,) = sent(h.session.sync())
    assert delete["params"] == {"sids": [100], "action": "delete_markets", "market_tickers": [A]}
    h.session.want(add=[C])
    (sub,) = sent(h.session.sync())  # the slot is busy until the delete is answered
    assert sub["cmd"] == "subscribe"
    assert sub["params"]["market_tickers"] == [C]
    assert wakes(h.feed(id=delete["id"], type="ok", sid=100)) == [0.0]
    h.session.want(add=[D])
    (add,) = sent(h.session.sync())
    assert add["params"] == {"sids": [100], "action": "add_markets", "market_tickers": [D]}
    h.feed(id=add["id"], type="ok", sid=100)
    assert h.session.is_live(D)
    assert not h.session.is_live(A)
    assert h.session.layout.placed == {B, C, D}


def test_retry_codes_send_the_same_delete_again_after_a_pause():
    """Errors 18 and 27 on a delete: a wake after the pause, then the same delete again (a new
    id), until it succeeds."""
    h = Harness()
    h.live([A, B])
    h.session.want(remove=[B])
    (cmd,) = sent(h.session.sync())
    first = cmd
    for code in (27, 18):
        assert h.error(cmd, code, sid=100) == [Wake(PAUSE)]
        (again,) = sent(h.session.sync())
        assert again["params"] == first["params"]
        assert again["id"] > cmd["id"]
        cmd = again
    h.feed(id=cmd["id"], type="ok", sid=100)
    assert h.session.layout.placed == {A}
    assert h.session.is_live(A)


def test_retry_code_on_get_snapshot_asks_again_for_the_markets_still_there():
    """A get_snapshot refused with 27 is sent again for the markets the slot still carries;
    the gap stays open (suspect rows) until their snapshots arrive."""
    h = Harness()
    h.live([A, B])
    (snap,) = sent(h.delta(100, 5, A))  # seq 3 was due: a gap
    h.session.want(remove=[B])
    h.ingest.forget_market(B)  # as the manager does for a removed market
    (delete,) = sent(h.session.sync())
    h.feed(id=delete["id"], type="ok", sid=100)
    assert h.error(snap, 27, sid=100) == [Wake(PAUSE)]
    (again,) = sent(h.session.sync())
    assert again["params"] == {"sids": [100], "action": "get_snapshot", "market_tickers": [A]}
    assert h.ingest.gaps.is_suspect(A)
    h.snapshot(100, 6, A, cmd_id=again["id"])
    assert not h.ingest.gaps.is_suspect(A)
    assert h.gaps()[-1] == ("recovered", 100, "orderbook_delta", (A, B), "get_snapshot")


def test_a_retried_command_on_a_dropped_slot_is_not_sent():
    """A delete waiting for its retry whose subscription died meanwhile is dropped."""
    h = Harness()
    h.live([A, B])
    h.session.want(remove=[B])
    (delete,) = sent(h.session.sync())
    h.error(delete, 18, sid=100)
    h.feed(type="error", sid=100, msg={"code": 10, "msg": "channel error"})
    cmds = sent(h.session.sync())
    assert [c["cmd"] for c in cmds] == ["subscribe"]  # A again, no delete
    assert cmds[0]["params"]["market_tickers"] == [A]


def test_refused_subscribe_is_unplaced_and_planned_again_after_a_pause():
    """A subscribe refused (not a retry code) unplaces its markets; the next sync subscribes
    them again, after a pause so a persistent refusal cannot spin."""
    h = Harness()
    h.session.want(add=[A])
    (cmd,) = sent(h.session.sync())
    assert h.error(cmd, 18) == [Wake(PAUSE)]
    assert h.session.layout.placed == set()
    (again,) = sent(h.session.sync())
    assert again["params"]["market_tickers"] == [A]
    assert again["id"] > cmd["id"]


def test_market_limit_26_splits_a_refused_subscription():
    """Error 26 on a new subscription halves the batch size; the markets come back in smaller
    subscriptions, each market in exactly one."""
    h = Harness(per_subscription=4)
    h.session.want(add=[A, B, C, D])
    (cmd,) = sent(h.session.sync())
    h.error(cmd, 26)
    cmds = sent(h.session.sync())
    assert [c["params"]["market_tickers"] for c in cmds] == [[A, B], [C, D]]


def test_refused_firehose_subscribe_is_retried_by_the_next_sync():
    """A firehose subscribe refused: after the pause, the next sync subscribes that channel."""
    h = Harness(firehose=("trade",))
    (cmd,) = sent(h.session.start())
    assert h.error(cmd, 8) == [Wake(PAUSE)]
    (again,) = sent(h.session.sync())
    assert again["params"] == {"channels": ["trade"]}
    h.subscribed(again, 3)
    assert dict(h.session.firehose_sids) == {3: "trade"}


def test_seq_gap_on_a_book_asks_for_snapshots_and_recovers_on_them():
    """A seq gap opens a gap over the slot's markets, asks get_snapshot for them (a resync),
    and the answering snapshots recover it."""
    h = Harness()
    h.live([A, B])
    actions = h.delta(100, 4, B)  # 3 was due
    (snap,) = sent(actions)
    assert snap["params"] == {"sids": [100], "action": "get_snapshot", "market_tickers": [A, B]}
    assert h.resyncs == 1
    (gap,) = h.rows.of("gaps")
    assert (gap["state"], gap["sid"], gap["expected"], gap["received"]) == ("open", 100, 3, 4)
    h.snapshot(100, 5, A, cmd_id=snap["id"])
    assert h.ingest.gaps.is_suspect(B)
    assert not h.ingest.gaps.is_suspect(A)
    h.snapshot(100, 6, B, cmd_id=snap["id"])
    assert h.gaps() == [
        ("open", 100, "orderbook_delta", (A, B), None),
        ("recovered", 100, "orderbook_delta", (A, B), "get_snapshot"),
    ]


def test_seq_gap_on_a_firehose_channel_is_recorded_and_closed_at_once():
    """A firehose gap is lost to this gatherer: open and recovered rows ('none'), no command,
    no resync, nothing suspect."""
    h = Harness(firehose=("trade",))
    (cmd,) = sent(h.session.start())
    h.subscribed(cmd, 9)
    trade = {
        "trade_id": "00000000-0000-4000-8000-000000000001",
        "market_ticker": A,
        "yes_price_dollars": "0.5000",
        "no_price_dollars": "0.5000",
        "count_fp": "1.00",
        "taker_side": "yes",
        "ts": 1_700_000_000,
    }
    h.feed(type="trade", sid=9, seq=1, msg=trade)
    trade["trade_id"] = "00000000-0000-4000-8000-000000000002"
    assert h.feed(type="trade", sid=9, seq=3, msg=trade) == []  # seq 2 was due
    assert h.gaps() == [("open", 9, "trade", (), None), ("recovered", 9, "trade", (), "none")]
    assert h.resyncs == 0


def test_refused_snapshot_falls_back_to_unsubscribe_then_subscribe():
    """get_snapshot refused: the slot is unsubscribed (gap how 'resubscribe'); its markets
    stay placed, so nothing subscribes them twice, until unsubscribed; then they are subscribed
    again and their fresh snapshots recover the gap."""
    h = Harness()
    h.live([A, B])
    (snap,) = sent(h.delta(100, 9, A))
    (unsub,) = sent(h.error(snap, 11, sid=100))
    assert unsub["cmd"] == "unsubscribe"
    assert unsub["params"] == {"sids": [100]}
    assert not h.session.is_live(A)
    h.session.want(add=[C])
    (sub_c,) = sent(h.session.sync())
    assert sub_c["params"]["market_tickers"] == [C]  # A and B wait for the unsubscribed
    assert wakes(h.feed(id=unsub["id"], type="unsubscribed", sid=100)) == [0.0]
    (again,) = sent(h.session.sync())
    assert again["cmd"] == "subscribe"
    assert again["params"]["market_tickers"] == [A, B]
    h.subscribed(again, 200)
    h.snapshot(200, 1, A)
    h.snapshot(200, 2, B)
    assert h.gaps()[-1] == ("recovered", 100, "orderbook_delta", (A, B), "resubscribe")


def test_terminal_error_on_a_book_drops_the_slot_and_resubscribes():
    """Error 25 kills an order-book subscription: a gap over its markets, a resync, and the
    next sync subscribes them again."""
    h = Harness()
    h.live([A, B])
    actions = h.feed(type="error", sid=100, msg={"code": 25, "msg": "buffer overflow"})
    assert actions == [Wake()]
    assert h.resyncs == 1
    assert h.gaps() == [("open", 100, "orderbook_delta", (A, B), None)]
    assert [g.how for g in h.ingest.gaps.pending_gaps()] == ["resubscribe (error 25)"]
    assert not h.session.is_live(A)
    (again,) = sent(h.session.sync())
    assert again["params"]["market_tickers"] == [A, B]


def test_terminal_error_on_a_firehose_channel_subscribes_it_again_at_once():
    """Error 10 on a firehose sid: a gap for the channel, the subscribe sent at once, and the
    new subscribed recovers the gap under the new sid."""
    h = Harness(firehose=("trade", "ticker"))
    for sid, cmd in enumerate(sent(h.session.start()), start=1):
        h.subscribed(cmd, sid)
    (again,) = sent(h.feed(type="error", sid=2, msg={"code": 10, "msg": "channel error"}))
    assert again["params"] == {"channels": ["ticker"]}
    assert dict(h.session.firehose_sids) == {1: "trade"}
    assert h.session.open_firehose_gaps.keys() == {"ticker"}
    h.subscribed(again, 5)
    assert dict(h.session.firehose_sids) == {1: "trade", 5: "ticker"}
    assert h.gaps() == [
        ("open", 2, "ticker", (), None),
        ("recovered", 2, "ticker", (), "resubscribe (error 10)"),
    ]


def test_reconnect_records_gaps_and_resubscribes_everything():
    """A lost connection opens one book gap and one per firehose channel (once, however often
    it is lost before it recovers); the next start and sync subscribe everything again from
    command id 1, and the fresh subscriptions recover every gap."""
    h = Harness(per_subscription=2, firehose=("trade",))
    for cmd in sent(h.session.start()):
        h.subscribed(cmd, 1)
    h.live([A, B, C])
    h.session.lost()
    assert not h.session.is_live(A)
    assert h.session.layout.placed == set()
    h.session.start()  # connected again, and lost before anything answered
    h.session.lost()
    assert [(g[0], g[2]) for g in h.gaps()] == [
        ("open", "orderbook_delta"),
        ("open", "trade"),
        ("open", "orderbook_delta"),
    ]
    assert {g.how for g in h.ingest.gaps.pending_gaps()} == {"reconnect"}
    (fire,) = sent(h.session.start())
    assert fire["id"] == 1
    assert h.session.firehose_sids == {}
    books = sent(h.session.sync())
    assert [c["params"]["market_tickers"] for c in books] == [[A, B], [C]]
    h.subscribed(fire, 30)
    for n, cmd in enumerate(books):
        h.subscribed(cmd, 40 + n)
        for seq, m in enumerate(cmd["params"]["market_tickers"], start=1):
            h.snapshot(40 + n, seq, m)
    assert [g[0] for g in h.gaps()].count("recovered") == 3
    assert h.ingest.gaps.pending_gaps() == []
    assert h.session.open_firehose_gaps == {}


def test_replies_to_commands_of_the_previous_connection_are_ignored():
    """After a reconnect, an ok or error naming an old command id changes nothing."""
    h = Harness()
    h.live([A])
    h.session.lost()
    h.session.start()
    assert h.feed(id=1, type="ok", sid=100) == []
    assert h.feed(id=1, type="error", msg={"code": 11, "msg": "late"}) == []
    assert h.session.layout.placed == set()


def test_dead_letters_and_unknown_events_are_stored_or_ignored():
    """A bad control frame becomes a dead_letters row; a duplicate changes nothing."""
    h = Harness()
    h.live([A])
    assert h.feed(type="subscribed", id=77, msg="not an object") == []
    (dl,) = h.rows.of("dead_letters")
    assert dl["source"] == "ws"
    assert "subscribed" in dl["reason"]
    assert h.delta(100, 1, A) == []  # seq 1 was the snapshot: a duplicate, dropped
    assert h.gaps() == []
