"""The simulator's WebSocket over real loopback sockets: auth, snapshots, seq, truth, faults."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from simulator import SimConfig, Simulator
from simulator.auth import sign_headers

WS_PATH = "/trade-api/ws/v2"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    s = Simulator(
        SimConfig(
            seed=5,
            markets=200,
            rate=2000,
            truth_path=tmp_path / "truth.jsonl",
            workdir=tmp_path,
            ping_interval_s=0.2,
            lifecycle_share=0.01,
        )
    )
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def auth(sim: Simulator, ts_ms: int | None = None) -> dict[str, str]:
    assert sim.private_key_path is not None
    ts = ts_ms if ts_ms is not None else time.time_ns() // 1_000_000
    return sign_headers(sim.private_key_path.read_bytes(), sim.key_id, "GET", WS_PATH, ts)


async def open_ws(sim: Simulator) -> ClientConnection:
    return await connect(
        sim.ws_url, additional_headers=auth(sim), max_size=None, ping_interval=None
    )


async def recv(ws: ClientConnection, limit_s: float = 5.0) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), limit_s))


async def collect(
    ws: ClientConnection, done: Callable[[list[Any]], bool], limit_s: float = 10.0
) -> list[Any]:
    """Read frames until ``done(frames)`` holds; fail at the deadline."""
    got: list[Any] = []
    deadline = asyncio.get_running_loop().time() + limit_s
    while not done(got):
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"condition not met; {len(got)} frames"
        got.append(await recv(ws, left))
    return got


async def drain(ws: ClientConnection, cmd_id: int) -> list[Any]:
    """Everything queued before a list_subscriptions reply (frames are sent in order)."""
    await ws.send(orjson.dumps({"id": cmd_id, "cmd": "list_subscriptions"}).decode())
    frames = await collect(
        ws, lambda f: bool(f) and f[-1].get("id") == cmd_id and f[-1]["type"] == "ok"
    )
    return frames[:-1]


async def wait_for(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def active(sim: Simulator, n: int) -> list[str]:
    return [m.ticker for m in sim.exchange.market_list if m.status == "active"][:n]


def seqs_by_sid(frames: list[Any]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for f in frames:
        if "seq" in f and f["type"] not in ("ok", "unsubscribed"):
            out.setdefault(f["sid"], []).append(f["seq"])
    return out


async def admin(sim: Simulator, name: str, body: dict[str, Any] | None = None) -> Any:
    async with aiohttp.ClientSession() as http:
        if body is None and name in ("connections", "stats"):
            async with http.get(f"{sim.admin_url}/{name}") as r:
                assert r.status == 200
                return await r.json()
        async with http.post(f"{sim.admin_url}/{name}", json=body or {}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def test_snapshot_then_deltas_rebuild_the_rest_orderbook(sim: Simulator):
    """Snapshot + deltas, applied in seq order, equal the REST order book after a pause."""
    tickers = active(sim, 100)
    async with await open_ws(sim) as ws:
        cmd = {"channels": ["orderbook_delta"], "market_tickers": tickers}
        await ws.send(orjson.dumps({"id": 1, "cmd": "subscribe", "params": cmd}).decode())
        frames = await collect(ws, lambda f: sum(x["type"] == "orderbook_delta" for x in f) >= 300)
        sim.pause()
        frames += await drain(ws, 99)
    assert frames[0] == {
        "id": 1,
        "type": "subscribed",
        "msg": {"channel": "orderbook_delta", "sid": 1},
    }
    seqs = seqs_by_sid(frames)[1]
    assert seqs == list(range(1, len(seqs) + 1))
    books: dict[str, dict[str, dict[Decimal, Decimal]]] = {}
    for f in frames:
        m = f.get("msg")
        if f["type"] == "orderbook_snapshot":
            books[m["market_ticker"]] = {
                side: {Decimal(p): Decimal(q) for p, q in m.get(f"{side}_dollars_fp", [])}
                for side in ("yes", "no")
            }
        elif f["type"] == "orderbook_delta":
            levels = books[m["market_ticker"]][m["side"]]
            size = levels.get(Decimal(m["price_dollars"]), Decimal(0)) + Decimal(m["delta_fp"])
            assert size >= 0
            levels[Decimal(m["price_dollars"])] = size
            if size == 0:
                del levels[Decimal(m["price_dollars"])]
    assert set(books) == set(tickers)
    async with aiohttp.ClientSession() as http:
        url = f"{sim.rest_url}/markets/orderbooks?tickers={','.join(tickers)}"
        from simulator.auth import sign_headers  # the spec marks order books authenticated

        assert sim.private_key_path is not None
        headers = sign_headers(
            sim.private_key_path.read_bytes(),
            sim.key_id,
            "GET",
            "/trade-api/v2/markets/orderbooks",
            time.time_ns() // 1_000_000,
        )
        async with http.get(url, headers=headers) as r:
            rest = (await r.json())["orderbooks"]
    assert len(rest) == len(tickers)
    for ob in rest:
        fp = ob["orderbook_fp"]
        for side in ("yes", "no"):
            levels = fp[f"{side}_dollars"]
            assert [Decimal(p) for p, _ in levels] == sorted(Decimal(p) for p, _ in levels)
            assert {Decimal(p): Decimal(q) for p, q in levels} == books[ob["ticker"]][side]


@pytest.mark.parametrize("case", ["unsigned", "bad_signature", "stale", "unknown_key"])
async def test_bad_auth_is_refused_before_the_upgrade(sim: Simulator, case: str, tmp_path: Path):
    """Unsigned, wrongly signed, stale or unknown-key upgrades get HTTP 401, not 101."""
    headers = auth(sim)
    if case == "unsigned":
        headers = {}
    elif case == "bad_signature":
        sig = headers["KALSHI-ACCESS-SIGNATURE"]
        headers["KALSHI-ACCESS-SIGNATURE"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    elif case == "stale":
        headers = auth(sim, time.time_ns() // 1_000_000 - 60_000)
    else:
        headers["KALSHI-ACCESS-KEY"] = "not-a-key"
    with pytest.raises(InvalidStatus) as info:
        await connect(sim.ws_url, additional_headers=headers, ping_interval=None)
    assert info.value.response.status_code == 401
    assert sim.ws.refused == 1


async def test_each_channel_has_its_own_sid_and_seq_from_one(sim: Simulator):
    """Firehose trade/lifecycle sids count seq from 1 without gaps; ticker frames carry none."""
    async with await open_ws(sim) as ws:
        params = {"channels": ["trade", "ticker", "market_lifecycle_v2"]}
        await ws.send(orjson.dumps({"id": 7, "cmd": "subscribe", "params": params}).decode())
        frames = await collect(ws, lambda f: sum(x["type"] == "trade" for x in f) >= 50)
    subscribed = {f["msg"]["channel"]: f["msg"]["sid"] for f in frames if f["type"] == "subscribed"}
    assert subscribed == {"trade": 1, "ticker": 2, "market_lifecycle_v2": 3}
    by_sid = seqs_by_sid(frames)
    for seqs in by_sid.values():
        assert seqs == list(range(1, len(seqs) + 1))
    tickers = [f for f in frames if f["type"] == "ticker"]
    assert tickers
    assert all("seq" not in f and f["sid"] == 2 for f in tickers)


async def test_truth_equals_what_a_perfect_subscriber_received(sim: Simulator):
    """For the subscribed period, truth lines and received data frames are the same multiset."""
    assert sim.truth is not None
    sim.pause()
    tickers = [m.ticker for m in sim.exchange.market_list]
    async with await open_ws(sim) as ws:
        for i, params in enumerate(
            [
                {"channels": ["orderbook_delta"], "market_tickers": tickers},
                {"channels": ["trade", "ticker", "market_lifecycle_v2"]},
            ]
        ):
            await ws.send(
                orjson.dumps({"id": i + 1, "cmd": "subscribe", "params": params}).decode()
            )
        await drain(ws, 50)
        sim.truth_flush()
        start = sim.truth_lines
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= start + 4000)
        sim.pause()
        frames = await drain(ws, 51)
    sim.truth_flush()
    lines = sim.truth.path.read_bytes().splitlines()[start:]
    subscribed = set(tickers)
    truth: Counter[tuple[str, bytes]] = Counter()
    for line in lines:
        ev = orjson.loads(line)
        if ev["type"] == "orderbook_delta" and ev["msg"]["market_ticker"] not in subscribed:
            continue  # markets created after the subscription: not in its ticker list
        truth[ev["type"], orjson.dumps(ev["msg"])] += 1
    got = Counter((f["type"], orjson.dumps(f["msg"])) for f in frames)
    assert sum(got.values()) >= 4000
    assert got == truth
    assert {t for t, _ in got} >= {"orderbook_delta", "trade", "ticker", "market_lifecycle_v2"}


async def test_skip_duplicate_and_malformed_faults_reach_one_sid(sim: Simulator):
    """skip_seq jumps seq by n (frames in truth), duplicate repeats, malformed breaks a frame."""
    await admin(sim, "rate", {"rate": 600})  # a short backlog: faults apply at enqueue time
    async with await open_ws(sim) as ws:
        await ws.send(
            orjson.dumps({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}}).decode()
        )
        first = (await collect(ws, lambda f: len(f) >= 3))[1:]  # after "subscribed"
        conn = (await admin(sim, "connections"))["connections"][0]["id"]
        await admin(sim, "skip_seq", {"conn": conn, "sid": 1, "n": 3})
        frames = first + await collect(ws, lambda f: len(_jumps(first + f)) > 0)
        frames += await collect(ws, lambda f: len(f) >= 5)
        assert _jumps(frames) == [4]
        seqs = [f["seq"] for f in frames]
        await admin(sim, "duplicate", {"conn": conn, "sid": 1})
        frames = await collect(ws, lambda f: len(f) >= 2 and f[-1] == f[-2])
        frames += await collect(ws, lambda f: len(f) >= 5)
        assert sum(a == b for a, b in itertools.pairwise(frames)) == 1
        await admin(sim, "malformed", {"conn": conn, "sid": 1, "kind": "invalid_json"})
        raws: list[str | bytes] = []
        deadline = time.monotonic() + 10
        while all(_parses(r) for r in raws):
            assert time.monotonic() < deadline
            raws.append(await asyncio.wait_for(ws.recv(), 5))
        after = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        if len(raws) >= 2:  # the broken frame used a seq number of its own
            assert after["seq"] == orjson.loads(raws[-2])["seq"] + 2
        await admin(sim, "malformed", {"conn": conn, "kind": "unknown_type"})
        frames = await collect(ws, lambda f: any(x["type"] == "mystery_frame" for x in f))
        assert frames[-1]["type"] == "mystery_frame"
    sim.truth_flush()
    assert sim.truth is not None
    trade_ids = {
        orjson.loads(x)["msg"]["trade_id"]
        for x in sim.truth.path.read_bytes().splitlines()
        if x.startswith(b'{"type":"trade"')
    }
    assert len(trade_ids) >= seqs[-1]  # every seq number (skipped ones included) was a real trade


def _jumps(frames: list[Any]) -> list[int]:
    seqs = [f["seq"] for f in frames]
    return [b - a for a, b in itertools.pairwise(seqs) if b != a + 1]


def _parses(raw: str | bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


async def test_sub_error_ends_the_subscription(sim: Simulator):
    """Error 10 on a sid arrives with that sid and the sid is gone afterwards."""
    async with await open_ws(sim) as ws:
        await ws.send(
            orjson.dumps(
                {"id": 1, "cmd": "subscribe", "params": {"channels": ["trade", "ticker"]}}
            ).decode()
        )
        await collect(ws, lambda f: len(f) >= 2)
        conn = (await admin(sim, "connections"))["connections"][0]["id"]
        await admin(sim, "sub_error", {"conn": conn, "sid": 1, "code": 10})
        frames = await collect(ws, lambda f: any(x["type"] == "error" for x in f))
        assert frames[-1] == {
            "type": "error",
            "sid": 1,
            "msg": {"code": 10, "msg": "Channel error"},
        }
        rest = await drain(ws, 9)
        assert all(f.get("sid") != 1 for f in rest)
        await ws.send(orjson.dumps({"id": 10, "cmd": "list_subscriptions"}).decode())
        listing = await collect(ws, lambda f: bool(f) and f[-1].get("id") == 10)
        assert listing[-1]["msg"] == [{"channel": "ticker", "sid": 2}]


async def test_drop_cuts_the_connection(sim: Simulator):
    """POST /admin/drop aborts the socket; the client sees the connection closed."""
    async with await open_ws(sim) as ws:
        await wait_for(lambda: len(sim.ws.connections) == 1)
        result = await admin(sim, "drop", {})
        assert len(result["dropped"]) == 1
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    await wait_for(lambda: not sim.ws.connections)


async def test_server_pings_heartbeat_and_can_go_silent(sim: Simulator):
    """Pings carry 'heartbeat' and client pings get pongs, until pings are switched off."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.ws_url, headers=auth(sim), autoping=False) as ws,
    ):
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.PING
        assert msg.data == b"heartbeat"
        await ws.ping(b"x")
        msg = await ws.receive(timeout=5)
        while msg.type == aiohttp.WSMsgType.PING:
            msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.PONG
        conn = (await admin(sim, "connections"))["connections"][0]["id"]
        await admin(sim, "pings", {"conn": conn, "enabled": False})
        while True:  # a Ping already in flight may still arrive
            await ws.ping(b"y")
            try:
                msg = await ws.receive(timeout=1.0)  # five ping intervals of silence
            except TimeoutError:
                break
            assert msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG)


async def test_slow_consumer_queue_grows(sim: Simulator):
    """A delay per frame makes the connection's queue grow (visible in /admin/connections)."""
    async with await open_ws(sim) as ws:
        await wait_for(lambda: len(sim.ws.connections) == 1)
        conn = next(iter(sim.ws.connections))
        await admin(sim, "slow", {"conn": conn, "delay_ms": 50})
        await ws.send(
            orjson.dumps(
                {"id": 1, "cmd": "subscribe", "params": {"channels": ["ticker", "trade"]}}
            ).decode()
        )
        deadline = time.monotonic() + 10
        while True:
            info = (await admin(sim, "connections"))["connections"][0]
            if info["queued_frames"] > 100:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert info["send_delay_ms"] == 50


async def test_rest_bursts_pause_resume_and_stats(sim: Simulator):
    """429 and 5xx bursts hit the next N REST requests; pause freezes the event counters."""
    await admin(sim, "rest_faults", {"status": 429, "count": 2})
    await admin(sim, "rest_faults", {"status": 502, "count": 1})
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(4):
            async with http.get(f"{sim.rest_url}/exchange/status") as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert await r.json() == {"error": "too many requests"}
                    assert "Retry-After" not in r.headers
        assert statuses == [429, 429, 502, 200]
    await admin(sim, "pause")
    frozen = (await admin(sim, "stats"))["events_total"]
    await asyncio.sleep(0.1)  # twenty driver ticks: nothing may be emitted while paused
    assert (await admin(sim, "stats"))["events_total"] == frozen
    await admin(sim, "resume")
    await wait_for(lambda: sum(sim.hub.events.values()) > frozen)
    stats = await admin(sim, "stats")
    assert stats["rest_faults_served"] == 3
    assert set(stats["events"]) >= {"orderbook_delta", "trade", "ticker"}
    # Pause first: while running, the driver may log more lines between the reply and the read.
    await admin(sim, "pause")
    flushed = (await admin(sim, "truth_flush"))["truth_lines"]
    assert flushed == sim.truth_lines > 0
    assert sim.truth is not None
    assert len(sim.truth.path.read_bytes().splitlines()) == flushed


async def test_admin_rejects_unknown_targets(sim: Simulator):
    """Unknown connection ids and bad bodies are 404/400, not crashes."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.admin_url}/skip_seq", json={"conn": 42, "sid": 1}) as r:
            assert r.status == 404
        async with http.post(f"{sim.admin_url}/malformed", json={"conn": 1, "kind": "x"}) as r:
            assert r.status == 400
        async with http.post(f"{sim.admin_url}/rate", data=b"[") as r:
            assert r.status == 400


_ = websockets  # the library under test on the client side
