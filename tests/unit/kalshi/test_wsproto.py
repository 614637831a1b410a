"""Sans-I/O WebSocket state: commands, subscriptions, sequence gaps, duplicates, errors."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.kalshi.wsproto import (
    CommandError,
    Data,
    Duplicate,
    Event,
    Gap,
    Ok,
    Resubscribe,
    Subscribed,
    SubscriptionList,
    Unsubscribed,
    WsProtocol,
)
from kalshi_data.records import DeltaRec, SnapshotRec, TickerRec

T1, T2, T3 = "FED-23DEC-T3.00", "FED-23DEC-T3.25", "FED-23DEC-T3.50"


def _frame(**obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _delta(sid: int, seq: int, ticker: str = T1, **extra: Any) -> str:
    msg = {
        "market_ticker": ticker,
        "price_dollars": "0.5000",
        "delta_fp": "1.00",
        "side": "yes",
        "ts_ms": 1669149841000,
    }
    return _frame(type="orderbook_delta", sid=sid, seq=seq, msg=msg, **extra)


def _snapshot(sid: int, seq: int, ticker: str = T1, **extra: Any) -> str:
    msg = {"market_ticker": ticker, "yes_dollars_fp": [["0.5000", "1.00"]]}
    return _frame(type="orderbook_snapshot", sid=sid, seq=seq, msg=msg, **extra)


def _subscribed(proto: WsProtocol, markets: list[str], sid: int = 5) -> int:
    cmd = proto.subscribe(["orderbook_delta"], markets)
    events = proto.feed(
        _frame(id=cmd.id, type="subscribed", msg={"channel": "orderbook_delta", "sid": sid})
    )
    assert events == [Subscribed(cmd.id, "orderbook_delta", sid)]
    return sid


def test_command_ids_and_text() -> None:
    """Commands get ids 1, 2, ... and serialise to the §3.1 shapes."""
    proto = WsProtocol()
    sub = proto.subscribe(["orderbook_delta", "trade"], [T1], send_initial_snapshot=True)
    assert sub.id == 1
    assert orjson.loads(sub.text) == {
        "id": 1,
        "cmd": "subscribe",
        "params": {
            "channels": ["orderbook_delta", "trade"],
            "market_tickers": [T1],
            "send_initial_snapshot": True,
        },
    }
    assert orjson.loads(proto.add_markets(7, [T2]).text) == {
        "id": 2,
        "cmd": "update_subscription",
        "params": {"sids": [7], "action": "add_markets", "market_tickers": [T2]},
    }
    assert orjson.loads(proto.get_snapshot(7, [T1]).text)["params"]["action"] == "get_snapshot"
    assert orjson.loads(proto.unsubscribe([7]).text) == {
        "id": 4,
        "cmd": "unsubscribe",
        "params": {"sids": [7]},
    }
    assert orjson.loads(proto.list_subscriptions().text) == {"id": 5, "cmd": "list_subscriptions"}
    assert set(proto.pending) == {1, 2, 3, 4, 5}
    proto.reset()
    assert proto.pending == {}
    assert proto.subscribe(["ticker"]).id == 1


def test_multi_channel_subscribe_gets_one_sid_per_channel() -> None:
    """A subscribe with two channels stays pending until both subscribed replies arrive."""
    proto = WsProtocol()
    cmd = proto.subscribe(["orderbook_delta", "market_lifecycle_v2"], [T1, T2])
    proto.feed(_frame(id=cmd.id, type="subscribed", msg={"channel": "orderbook_delta", "sid": 1}))
    assert cmd.id in proto.pending
    proto.feed(
        _frame(id=cmd.id, type="subscribed", msg={"channel": "market_lifecycle_v2", "sid": 2})
    )
    assert cmd.id not in proto.pending
    assert proto.subscriptions[1].markets == [T1, T2]
    assert proto.subscriptions[2].markets == []  # lifecycle: always all markets
    assert proto.sid_for("orderbook_delta", T2) == 1


def test_in_order_stream_yields_data() -> None:
    """Snapshot then deltas in seq order produce only Data events with records."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    events = proto.feed(_snapshot(sid, 1)) + proto.feed(_delta(sid, 2)) + proto.feed(_delta(sid, 3))
    assert [type(e) for e in events] == [Data, Data, Data]
    assert isinstance(events[0], Data)
    assert isinstance(events[0].record, SnapshotRec)
    assert isinstance(events[2], Data)
    assert isinstance(events[2].record, DeltaRec)
    assert events[2].seq == 3
    assert proto.subscriptions[sid].last_seq == 3


def test_gap_detected_and_frame_still_delivered() -> None:
    """seq > last+1 yields Gap(expected, received) and then the frame's Data."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1, T2])
    proto.feed(_snapshot(sid, 1))
    events = proto.feed(_delta(sid, 5))
    assert events[0] == Gap(sid, "orderbook_delta", (T1, T2), 2, 5)
    assert isinstance(events[1], Data)
    assert events[1].seq == 5
    assert [type(e) for e in proto.feed(_delta(sid, 6))] == [Data]


def test_missing_first_snapshot_is_a_gap() -> None:
    """A delta before any snapshot is a gap (expected 0: no baseline), whatever its seq."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    events = proto.feed(_delta(sid, 3))
    assert events[0] == Gap(sid, "orderbook_delta", (T1,), 0, 3)
    assert [type(e) for e in proto.feed(_delta(sid, 4))] == [Data]


def test_issue11_first_seq_is_the_snapshot_baseline() -> None:
    """The spec does not promise seq starts at 1: a first snapshot at seq 41 is no gap."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    events = proto.feed(_snapshot(sid, 41)) + proto.feed(_delta(sid, 42))
    assert [type(e) for e in events] == [Data, Data]
    events = proto.feed(_delta(sid, 45))
    assert events[0] == Gap(sid, "orderbook_delta", (T1,), 43, 45)


def test_duplicates_dropped() -> None:
    """seq <= last yields Duplicate and no Data."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    proto.feed(_snapshot(sid, 1))
    proto.feed(_delta(sid, 2))
    assert proto.feed(_delta(sid, 2)) == [Duplicate(sid, 2)]
    assert proto.feed(_delta(sid, 1)) == [Duplicate(sid, 1)]


def test_bad_payload_with_good_seq_is_not_a_gap() -> None:
    """A malformed msg still advances seq: Data carries a DeadLetter, the next frame is in order."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    proto.feed(_snapshot(sid, 1))
    events = proto.feed(_frame(type="orderbook_delta", sid=sid, seq=2, msg={"market_ticker": T1}))
    assert len(events) == 1
    assert isinstance(events[0], Data)
    assert isinstance(events[0].record, DeadLetter)
    assert [type(e) for e in proto.feed(_delta(sid, 3))] == [Data]


def test_ok_seq_consumed_or_not_is_tolerated() -> None:
    """An ok reply's seq may or may not consume a number: neither case is a gap or duplicate."""
    for consumes in (True, False):
        proto = WsProtocol()
        sid = _subscribed(proto, [T1])
        proto.feed(_snapshot(sid, 1))
        cmd = proto.add_markets(sid, [T2])
        ok_seq = 2 if consumes else 1
        events = proto.feed(
            _frame(id=cmd.id, type="ok", sid=sid, seq=ok_seq, msg={"market_tickers": [T1, T2]})
        )
        assert events == [Ok(cmd.id, sid, (T1, T2))]
        nxt = proto.feed(_snapshot(sid, ok_seq + 1, T2))
        assert [type(e) for e in nxt] == [Data], consumes


def test_add_and_delete_markets_track_the_list() -> None:
    """add/delete_markets update the sid's markets, from the ok list or from the command."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    cmd = proto.add_markets(sid, [T2, T3])
    proto.feed(_frame(id=cmd.id, type="ok", sid=sid, msg={"market_tickers": [T1, T2, T3]}))
    assert proto.subscriptions[sid].markets == [T1, T2, T3]
    cmd = proto.delete_markets(sid, [T2])
    # skip_ticker_ack: no list in the reply, the command's tickers are applied.
    assert proto.feed(_frame(id=cmd.id, type="ok", sid=sid)) == [Ok(cmd.id, sid, None)]
    assert proto.subscriptions[sid].markets == [T1, T3]
    assert proto.sid_for("orderbook_delta", T2) is None
    assert proto.pending == {}


def test_get_snapshot_answers_echo_the_id() -> None:
    """Snapshots answering get_snapshot carry the command id and clear the pending command."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1, T2])
    proto.feed(_snapshot(sid, 1, T1))
    proto.feed(_snapshot(sid, 2, T2))
    cmd = proto.get_snapshot(sid, [T1, T2])
    first = proto.feed(_snapshot(sid, 3, T1, id=cmd.id))
    assert isinstance(first[0], Data)
    assert first[0].cmd_id == cmd.id
    assert cmd.id in proto.pending
    proto.feed(_snapshot(sid, 4, T2, id=cmd.id))
    assert cmd.id not in proto.pending
    assert proto.subscriptions[sid].markets == [T1, T2]


def test_terminal_errors_request_resubscribe() -> None:
    """Errors 10 and 25 on a sid kill it and yield Resubscribe with its channel and markets."""
    for code in (10, 25):
        proto = WsProtocol()
        sid = _subscribed(proto, [T1, T2])
        events = proto.feed(_frame(type="error", sid=sid, msg={"code": code, "msg": "overflow"}))
        assert events == [Resubscribe(sid, "orderbook_delta", (T1, T2), code)]
        assert sid not in proto.subscriptions


def test_command_error() -> None:
    """A refused command yields CommandError with its id, code and text; pending cleared."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    cmd = proto.add_markets(sid, [T2])
    events = proto.feed(
        _frame(
            id=cmd.id,
            type="error",
            msg={"code": 26, "msg": "Subscription market limit exceeded", "market_tickers": [T2]},
        )
    )
    assert events == [CommandError(cmd.id, 26, "Subscription market limit exceeded", sid, (T2,))]
    assert cmd.id not in proto.pending
    assert proto.subscriptions[sid].markets == [T1]


def test_list_and_unsubscribe() -> None:
    """list_subscriptions yields the (sid, channel) list; unsubscribed removes the sid."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    cmd = proto.list_subscriptions()
    events = proto.feed(
        _frame(id=cmd.id, type="ok", msg=[{"channel": "orderbook_delta", "sid": sid}, {"bad": 1}])
    )
    assert events == [SubscriptionList(cmd.id, ((sid, "orderbook_delta"),))]
    cmd = proto.unsubscribe([sid])
    assert proto.feed(_frame(id=cmd.id, type="unsubscribed", sid=sid, seq=9)) == [Unsubscribed(sid)]
    assert proto.subscriptions == {}
    assert proto.pending == {}


def test_ticker_frames_have_no_seq() -> None:
    """Ticker frames pass through without sequence tracking."""
    proto = WsProtocol()
    cmd = proto.subscribe(["ticker"])
    proto.feed(_frame(id=cmd.id, type="subscribed", msg={"channel": "ticker", "sid": 3}))
    msg = {
        "market_ticker": T1,
        "price_dollars": "0.4800",
        "yes_bid_dollars": "0.4500",
        "yes_ask_dollars": "0.5300",
        "volume_fp": "1.00",
        "open_interest_fp": "1.00",
        "dollar_volume": 1,
        "dollar_open_interest": 1,
        "yes_bid_size_fp": "1.00",
        "yes_ask_size_fp": "1.00",
        "last_trade_size_fp": "1.00",
        "ts_ms": 1669149841000,
    }
    for _ in range(2):
        events = proto.feed(_frame(type="ticker", sid=3, msg=msg))
        assert len(events) == 1
        assert isinstance(events[0], Data)
        assert events[0].seq is None
        assert isinstance(events[0].record, TickerRec)


def test_reset_forgets_sids() -> None:
    """After reset, old sids are unknown and frames for them are not sequence-checked."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    proto.feed(_snapshot(sid, 1))
    proto.reset()
    assert proto.subscriptions == {}
    assert [type(e) for e in proto.feed(_delta(sid, 1))] == [Data]


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.builds(_delta, st.integers(0, 3), st.integers(0, 8)),
            st.builds(
                lambda i, s, c: _frame(id=i, type="subscribed", msg={"channel": c, "sid": s}),
                st.integers(0, 4),
                st.integers(0, 3),
                st.sampled_from(["orderbook_delta", "trade"]),
            ),
            st.builds(
                lambda i, s, q, c: _frame(
                    id=i, type="error", sid=s, seq=q, msg={"code": c, "msg": "x"}
                ),
                st.integers(0, 4),
                st.integers(0, 3),
                st.integers(0, 3),
                st.sampled_from([7, 10, 25, 26]),
            ),
            st.builds(
                lambda i, s, q: _frame(id=i, type="ok", sid=s, seq=q, msg={"market_tickers": [T1]}),
                st.integers(0, 4),
                st.integers(0, 3),
                st.integers(0, 8),
            ),
            st.builds(
                lambda i, s: _frame(id=i, type="unsubscribed", sid=s, seq=1),
                st.integers(0, 4),
                st.integers(0, 3),
            ),
            st.binary(max_size=40),
        ),
        max_size=30,
    )
)
def test_any_frame_sequence_never_raises(frames: list[str | bytes]) -> None:
    """feed() returns events for any sequence of frames and never raises."""
    proto = WsProtocol()
    proto.subscribe(["orderbook_delta"], [T1])
    proto.add_markets(1, [T2])
    seen: list[Event] = []
    for f in frames:
        seen.extend(proto.feed(f))
    for sid, sub in proto.subscriptions.items():
        assert sub.sid == sid


def test_issue11_use_yes_price_frames_stored_in_the_no_convention() -> None:
    """With ``use_yes_price`` sent, NO-side levels arrive on the YES scale: stored as NO prices,
    and the record says which convention the wire used."""
    proto = WsProtocol()
    cmd = proto.subscribe(["orderbook_delta"], [T1], use_yes_price=True)
    assert orjson.loads(cmd.text)["params"]["use_yes_price"] is True
    proto.feed(_frame(id=cmd.id, type="subscribed", msg={"channel": "orderbook_delta", "sid": 9}))
    snap_msg = {
        "market_ticker": T1,
        "yes_dollars_fp": [["0.3000", "2.00"]],
        "no_dollars_fp": [["0.6000", "5.00"], ["0.8000", "1.00"]],  # NO bids 0.40 and 0.20
    }
    snap = proto.feed(_frame(type="orderbook_snapshot", sid=9, seq=1, msg=snap_msg))[0]
    no_delta = {
        "market_ticker": T1,
        "price_dollars": "0.6000",
        "delta_fp": "-5.00",
        "side": "no",
        "ts_ms": 1669149841000,
    }
    d = proto.feed(_frame(type="orderbook_delta", sid=9, seq=2, msg=no_delta))
    assert isinstance(snap, Data)
    assert isinstance(snap.record, SnapshotRec)
    assert snap.record.no == ((2000, 100), (4000, 500))
    assert snap.record.yes == ((3000, 200),)
    assert snap.record.wire_scale == "yes"
    rec = d[-1]
    assert isinstance(rec, Data)
    assert isinstance(rec.record, DeltaRec)
    assert (rec.record.side, rec.record.price, rec.record.wire_scale) == ("no", 4000, "yes")
    plain = WsProtocol()
    sid = _subscribed(plain, [T1])
    assert "use_yes_price" not in orjson.loads(plain.subscribe(["trade"]).text)["params"]
    out = plain.feed(_frame(type="orderbook_delta", sid=sid, seq=1, msg=no_delta))[-1]
    assert isinstance(out, Data)
    assert isinstance(out.record, DeltaRec)
    assert (out.record.price, out.record.wire_scale) == (6000, "no")


def test_issue11_subscription_error_with_seq_is_no_gap() -> None:
    """A subscription-scoped error (27) carrying a seq: a CommandError, and the data seq that
    skips its number is no gap."""
    proto = WsProtocol()
    sid = _subscribed(proto, [T1])
    proto.feed(_snapshot(sid, 1))
    cmd = proto.get_snapshot(sid, [T1])
    err = {"code": 27, "msg": "Too many requests"}
    events = proto.feed(_frame(id=cmd.id, type="error", sid=sid, seq=2, msg=err))
    assert events == [CommandError(cmd.id, 27, "Too many requests", sid, ())]
    assert [type(e) for e in proto.feed(_delta(sid, 3))] == [Data]
