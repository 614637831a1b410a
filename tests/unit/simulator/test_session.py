"""The sans-I/O WebSocket session: commands, error codes, seq per sid, fan-out faults."""

from __future__ import annotations

import orjson
import pytest

from simulator import frames
from simulator.config import SimConfig
from simulator.hub import Hub
from simulator.market import Exchange
from simulator.session import Session


def make(**cfg) -> tuple[Hub, Session]:
    config = SimConfig(markets=50, **cfg)
    hub = Hub(config, Exchange(1, 50, 1_700_000_000), now_ms=lambda: 1_700_000_000_000)
    s = Session(1, hub)
    hub.add(s)
    return hub, s


def drain(s: Session):
    out = [orjson.loads(f) for f in s.out]
    s.out.clear()
    return out


def send(s: Session, obj):
    s.handle(obj if isinstance(obj, bytes | str) else orjson.dumps(obj))
    return drain(s)


def active(hub: Hub, n: int) -> list[str]:
    return [m.ticker for m in hub.exchange.market_list if m.status == "active"][:n]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"{not json", 1),
        (b"[1,2]", 1),
        ({"id": 1, "cmd": "dance"}, 5),
        ({"id": 1, "cmd": "subscribe"}, 2),
        ({"id": 1, "cmd": "subscribe", "params": {}}, 3),
        ({"id": 1, "cmd": "subscribe", "params": {"channels": []}}, 3),
        ({"id": 1, "cmd": "subscribe", "params": {"channels": ["nope"]}}, 8),
        ({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"]}}, 14),
        (
            {
                "id": 1,
                "cmd": "subscribe",
                "params": {"channels": ["trade"], "market_ticker": "A", "market_tickers": ["B"]},
            },
            11,
        ),
        ({"id": 1, "cmd": "unsubscribe", "params": {}}, 4),
        ({"id": 1, "cmd": "unsubscribe"}, 2),
        ({"id": 1, "cmd": "unsubscribe", "params": {"sids": [99]}}, 7),
        ({"id": 1, "cmd": "update_subscription", "params": {"action": "add_markets"}}, 12),
        ({"id": 1, "cmd": "update_subscription", "params": {"sids": [1, 2]}}, 12),
        ({"id": 1, "cmd": "update_subscription", "params": {"sid": 42, "action": "x"}}, 7),
    ],
)
def test_bad_commands_answer_documented_error_codes(command, code):
    """Each malformed command gets the §3.2 error code (and echoes the id when it had one)."""
    _, s = make()
    replies = send(s, command)
    assert len(replies) == 1
    assert replies[0]["type"] == "error"
    assert replies[0]["msg"]["code"] == code
    if isinstance(command, dict):
        assert replies[0]["id"] == 1


def test_update_subscription_errors_on_a_live_sid():
    """Missing action 15, unknown action 13, missing tickers 14, over the cap 26."""
    hub, s = make(max_markets_per_sub=3)
    ticks = active(hub, 5)
    send(
        s,
        {
            "id": 1,
            "cmd": "subscribe",
            "params": {"channels": ["orderbook_delta"], "market_tickers": ticks[:2]},
        },
    )
    upd = {"id": 2, "cmd": "update_subscription"}
    assert send(s, {**upd, "params": {"sid": 1}})[0]["msg"]["code"] == 15
    assert send(s, {**upd, "params": {"sid": 1, "action": "fly"}})[0]["msg"]["code"] == 13
    assert send(s, {**upd, "params": {"sid": 1, "action": "add_markets"}})[0]["msg"]["code"] == 14
    over = {"sid": 1, "action": "add_markets", "market_tickers": ticks[2:4]}
    assert send(s, {**upd, "params": over})[0]["msg"]["code"] == 26
    big = {"channels": ["trade"], "market_tickers": ticks[:4]}
    assert send(s, {"id": 3, "cmd": "subscribe", "params": big})[0]["msg"]["code"] == 26


def test_subscribe_many_channels_one_sid_each_and_snapshots_from_seq_one():
    """One subscribed per channel with its own sid; orderbook snapshots count seq from 1."""
    hub, s = make()
    ticks = active(hub, 3)
    replies = send(
        s,
        {
            "id": 5,
            "cmd": "subscribe",
            "params": {"channels": ["orderbook_delta", "trade", "ticker"], "market_tickers": ticks},
        },
    )
    subscribed = [r for r in replies if r["type"] == "subscribed"]
    assert [r["msg"]["channel"] for r in subscribed] == ["orderbook_delta", "trade", "ticker"]
    assert [r["msg"]["sid"] for r in subscribed] == [1, 2, 3]
    assert all(r["id"] == 5 for r in subscribed)
    snaps = [r for r in replies if r["type"] == "orderbook_snapshot"]
    assert [r["seq"] for r in snaps] == [1, 2, 3]
    assert [r["msg"]["market_ticker"] for r in snaps] == ticks
    listing = send(s, {"id": 6, "cmd": "list_subscriptions"})
    expected = [
        {"channel": "orderbook_delta", "sid": 1},
        {"channel": "trade", "sid": 2},
        {"channel": "ticker", "sid": 3},
    ]
    assert listing == [{"id": 6, "type": "ok", "msg": expected}]


def test_ok_and_unsubscribed_do_not_consume_seq_unless_configured():
    """By default ok/unsubscribed carry the current seq; with the flag they take the next one."""
    for consume, expect in ((False, (2, 2)), (True, (3, 4))):
        hub, s = make(control_frames_consume_seq=consume)
        ticks = active(hub, 3)
        send(
            s,
            {
                "id": 1,
                "cmd": "subscribe",
                "params": {"channels": ["orderbook_delta"], "market_tickers": ticks[:2]},
            },
        )
        ok = send(
            s,
            {
                "id": 2,
                "cmd": "update_subscription",
                "params": {"sid": 1, "action": "delete_markets", "market_tickers": [ticks[1]]},
            },
        )
        assert ok == [
            {
                "id": 2,
                "type": "ok",
                "sid": 1,
                "seq": expect[0],
                "msg": {"market_tickers": [ticks[0]]},
            }
        ]
        gone = send(s, {"id": 3, "cmd": "unsubscribe", "params": {"sids": [1]}})
        assert gone == [{"id": 3, "type": "unsubscribed", "sid": 1, "seq": expect[1]}]


def test_get_snapshot_echoes_id_and_add_markets_sends_new_snapshots():
    """get_snapshot re-sends snapshots with the command id; add_markets replies ok + snapshots."""
    hub, s = make()
    ticks = active(hub, 3)
    send(
        s,
        {
            "id": 1,
            "cmd": "subscribe",
            "params": {"channels": ["orderbook_delta"], "market_ticker": ticks[0]},
        },
    )
    snap = send(
        s,
        {"id": 9, "cmd": "update_subscription", "params": {"sids": [1], "action": "get_snapshot"}},
    )
    assert [(r["type"], r["id"], r["seq"]) for r in snap] == [("orderbook_snapshot", 9, 2)]
    add = send(
        s,
        {
            "id": 10,
            "cmd": "update_subscription",
            "params": {
                "sid": 1,
                "action": "add_markets",
                "market_tickers": ticks[1:],
                "skip_ticker_ack": True,
            },
        },
    )
    assert add[0] == {"id": 10, "type": "ok", "sid": 1, "seq": 2}
    assert [r["msg"]["market_ticker"] for r in add[1:]] == ticks[1:]


def test_fanout_routes_by_ticker_and_applies_seq_faults():
    """Deltas reach only their market's subscribers; skip jumps seq, dup repeats a frame."""
    hub, s = make()
    hot = active(hub, 1)[0]
    send(
        s,
        {
            "id": 1,
            "cmd": "subscribe",
            "params": {"channels": ["orderbook_delta"], "market_ticker": hot},
        },
    )
    m = hub.exchange.markets[hot]
    other = next(x for x in hub.exchange.market_list if x.ticker != hot)
    msg = {"market_ticker": hot, "x": 1}
    hub.publish([("orderbook_delta", other.ticker, {"market_ticker": other.ticker})])
    hub.publish([("orderbook_delta", m.ticker, msg)])
    sub = s.subs[1]
    sub.skip, sub.dup = 2, 1
    sub.refresh_faulty()
    hub.publish([("orderbook_delta", m.ticker, msg)] * 4)
    seqs = [r["seq"] for r in drain(s)]
    assert seqs == [2, 5, 5, 6]
    sub.corrupt = "invalid_json"
    sub.refresh_faulty()
    hub.publish([("orderbook_delta", m.ticker, msg)])
    raw = s.out.popleft()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    assert hub.events["orderbook_delta"] == 7


def test_buffer_overflow_ends_subscriptions_with_error_25():
    """A connection whose queue passes the bound loses its subscriptions with error 25."""
    hub, s = make(max_buffered_frames=5)
    send(s, {"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}})
    hub.publish([("trade", "T", {"n": i}) for i in range(10)])
    frames_out = drain(s)
    assert frames_out[-1] == {
        "type": "error",
        "sid": 1,
        "msg": {"code": 25, "msg": frames.ERRORS[25]},
    }
    assert not s.subs
    assert len(frames_out) == 7  # six data frames, then the terminal error


@pytest.mark.parametrize("kind", frames.MALFORMED_KINDS)
def test_malformed_kinds_are_detectably_broken(kind):
    """Each malformed kind breaks a delta in the documented way."""
    msg = {
        "market_ticker": "A",
        "market_id": "x",
        "price_dollars": "0.5000",
        "delta_fp": "1.00",
        "side": "yes",
    }
    raw = frames.malformed(kind, "orderbook_delta", 1, 3, msg)
    if kind == "invalid_json":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        return
    frame = orjson.loads(raw)
    if kind == "missing_field":
        assert "price_dollars" not in frame["msg"]
    elif kind == "bad_price":
        assert frame["msg"]["price_dollars"] == "1.2500"
    elif kind == "six_decimals":  # valid: the same price with 6 decimals
        assert frame["msg"]["price_dollars"] == "0.500000"
    elif kind == "subunit_price":
        assert frame["msg"]["price_dollars"] == "0.500050"
    else:
        assert frame["type"] == "mystery_frame"


def test_issue11_subscriptions_start_at_first_seq() -> None:
    """``first_seq`` sets the seq of a subscription's first frame (the snapshot)."""
    hub, s = make(first_seq=1000)
    tickers = active(hub, 2)
    out = send(
        s,
        {
            "id": 1,
            "cmd": "subscribe",
            "params": {"channels": ["orderbook_delta"], "market_tickers": tickers},
        },
    )
    snaps = [f for f in out if f["type"] == "orderbook_snapshot"]
    assert [f["seq"] for f in snaps] == [1000, 1001]


@pytest.mark.parametrize(
    ("mode", "flag", "yes_scale"),
    [
        ("flag", None, False),
        ("flag", False, False),
        ("flag", True, True),
        ("yes_default", None, True),
        ("yes_default", False, True),  # the flag is ignored after the flip
    ],
)
def test_issue11_use_yes_price_modes(mode: str, flag: bool | None, yes_scale: bool) -> None:
    """The flag is honoured (default false) in ``flag`` mode and ignored in ``yes_default``."""
    from simulator import shapes

    hub, s = make(price_mode=mode)
    m = next(m for m in hub.exchange.market_list if m.status == "active" and m.book.no)
    params: dict[str, object] = {"channels": ["orderbook_delta"], "market_tickers": [m.ticker]}
    if flag is not None:
        params["use_yes_price"] = flag
    out = send(s, {"id": 1, "cmd": "subscribe", "params": params})
    snap = next(f for f in out if f["type"] == "orderbook_snapshot")["msg"]
    best_no = max(m.book.no)
    wire = {row[0] for row in snap["no_dollars_fp"]}
    want = f"0.{10_000 - best_no:04d}" if yes_scale else f"0.{best_no:04d}"
    assert want in wire
    sub = next(iter(s.subs.values()))
    assert sub.yes_scale is yes_scale
    body = orjson.dumps(shapes.delta_msg(m, "no", best_no, 100, 1_700_000_000_000))
    hub.publish_serialised([("orderbook_delta", m.ticker, body)])
    delta = drain(s)[-1]["msg"]
    assert delta["price_dollars"] == want


def test_issue11_refused_commands_carry_code_sid_and_seq() -> None:
    """Armed 27/18 refuse the next commands; a subscription-scoped one carries sid and seq."""
    hub, s = make(control_frames_consume_seq=True)
    tickers = active(hub, 2)
    params = {"channels": ["orderbook_delta"], "market_tickers": tickers[:1]}
    send(s, {"id": 1, "cmd": "subscribe", "params": params})
    sub = next(iter(s.subs.values()))
    before = sub.seq
    s.refuse.extend([27, 18])
    update = {"sids": [sub.sid], "action": "add_markets", "market_tickers": tickers[1:]}
    first = send(s, {"id": 2, "cmd": "update_subscription", "params": update})
    second = send(s, {"id": 3, "cmd": "subscribe", "params": {"channels": ["trade"]}})
    assert first == [
        {
            "id": 2,
            "sid": sub.sid,
            "seq": before + 1,
            "type": "error",
            "msg": {"code": 27, "msg": "Too many requests"},
        }
    ]
    assert second == [{"id": 3, "type": "error", "msg": {"code": 18, "msg": "Command timeout"}}]
    assert list(sub.tickers or ()) == tickers[:1]  # nothing changed
    assert s.refused == 2
