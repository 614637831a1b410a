"""The Kalshi protocol core against the in-process simulator over loopback (real WS and HTTP)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.kalshi.rest import KalshiRest
from kalshi_data.kalshi.signer import Signer
from kalshi_data.kalshi.wsconnect import ws_connect
from kalshi_data.kalshi.wsproto import (
    Data,
    Event,
    Gap,
    Resubscribe,
    Subscribed,
    SubscriptionList,
    WsProtocol,
)
from kalshi_data.records import DeltaRec, MarketRec, SnapshotRec, TradeRec
from kalshi_data.resilience import RetryPolicy
from simulator.config import SimConfig
from simulator.server import Simulator

FAST = RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=8)
N_MARKETS = 60
Book = dict[str, dict[int, int]]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A running simulator on 127.0.0.1, always stopped."""
    simulator = Simulator(SimConfig(markets=N_MARKETS, rate=400.0, seed=11))
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def _signer(sim: Simulator) -> Signer:
    assert sim.private_key_path is not None
    return Signer.from_pem_file(sim.key_id, sim.private_key_path)


async def _admin(sim: Simulator, name: str, body: dict[str, Any] | None = None) -> Any:
    async with aiohttp.ClientSession() as session:
        url = f"{sim.admin_url}/{name}"
        if body is None:
            async with session.get(url) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()
        async with session.post(url, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def _open_markets(sim: Simulator, n: int) -> list[str]:
    async with KalshiRest(sim.rest_url, policy=FAST) as rest:
        got = [m async for m in rest.get_markets(status="open")]
    tickers = [m.ticker for m in got if isinstance(m, MarketRec)]
    assert len(tickers) >= n
    return tickers[:n]


async def _until(
    ws: aiohttp.ClientWebSocketResponse,
    proto: WsProtocol,
    done: Callable[[list[Event]], bool],
    timeout_s: float = 15.0,
) -> list[Event]:
    """Feed received frames to ``proto`` until ``done(events so far)`` or the deadline."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    while not done(events):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"condition not met in {timeout_s}s; last events: {events[-5:]}")
        frame = await asyncio.wait_for(ws.receive_str(), left)
        events.extend(proto.feed(frame))
    return events


async def _subscribe(
    ws: aiohttp.ClientWebSocketResponse,
    proto: WsProtocol,
    channels: list[str],
    tickers: list[str] | None,
) -> list[Event]:
    cmd = proto.subscribe(channels, tickers)
    await ws.send_str(cmd.text)
    return await _until(
        ws, proto, lambda ev: sum(isinstance(e, Subscribed) for e in ev) == len(channels)
    )


async def _conn_id(sim: Simulator) -> int:
    conns = (await _admin(sim, "connections"))["connections"]
    assert len(conns) == 1
    return int(conns[0]["id"])


def _apply(books: dict[str, Book], rec: SnapshotRec | DeltaRec) -> None:
    if isinstance(rec, SnapshotRec):
        books[rec.ticker] = {"yes": dict(rec.yes), "no": dict(rec.no)}
        return
    side = books[rec.ticker][rec.side]
    new = side.get(rec.price, 0) + rec.delta
    assert new >= 0, f"negative level after {rec}"
    if new:
        side[rec.price] = new
    else:
        side.pop(rec.price, None)


async def test_ws_book_rebuild_matches_rest(sim: Simulator) -> None:
    """Snapshot + deltas over a real WebSocket rebuild books equal to REST's, gap-free."""
    tickers = await _open_markets(sim, 12)
    proto = WsProtocol()
    http = aiohttp.ClientSession()
    ws = await ws_connect(http, sim.ws_url, _signer(sim))
    try:
        await _subscribe(ws, proto, ["orderbook_delta"], tickers)
        books: dict[str, Book] = {}
        counts = {"deltas": 0, "seen": 0}

        def absorb(events: list[Event]) -> None:
            for e in events[counts["seen"] :]:
                assert not isinstance(e, (Gap, DeadLetter)), e
                if isinstance(e, Data):
                    assert isinstance(e.record, (SnapshotRec, DeltaRec)), e.record
                    _apply(books, e.record)
                    counts["deltas"] += isinstance(e.record, DeltaRec)
            counts["seen"] = len(events)

        def enough(events: list[Event]) -> bool:
            absorb(events)
            return counts["deltas"] >= 30 and len(books) == len(tickers)

        def barrier(events: list[Event]) -> bool:
            absorb(events)
            return any(isinstance(e, SubscriptionList) for e in events)

        await _until(ws, proto, enough, timeout_s=30.0)
        # Freeze the exchange, then use list_subscriptions as a barrier: the server answers it
        # after every frame queued before it, so the books are final when the reply arrives.
        await _admin(sim, "pause", {})
        counts["seen"] = 0
        await ws.send_str(proto.list_subscriptions().text)
        await _until(ws, proto, barrier)
        async with KalshiRest(sim.rest_url, policy=FAST, signer=_signer(sim)) as rest:
            rest_books = await rest.get_orderbooks(tickers)
        assert len(rest_books) == len(tickers)
        for snap in rest_books:
            assert isinstance(snap, SnapshotRec)
            ws_book = books[snap.ticker]
            assert tuple(sorted(ws_book["yes"].items())) == snap.yes, snap.ticker
            assert tuple(sorted(ws_book["no"].items())) == snap.no, snap.ticker
        assert proto.subscriptions[next(iter(proto.subscriptions))].markets == tickers
    finally:
        await ws.close()
        await http.close()


async def test_injected_seq_gap_is_detected(sim: Simulator) -> None:
    """Frames skipped by the simulator (admin skip_seq) surface as one Gap of that size."""
    tickers = await _open_markets(sim, 20)
    proto = WsProtocol()
    http = aiohttp.ClientSession()
    ws = await ws_connect(http, sim.ws_url, _signer(sim))
    try:
        events = await _subscribe(ws, proto, ["orderbook_delta"], tickers)
        sid = next(e.sid for e in events if isinstance(e, Subscribed))
        # let the initial snapshots through, then cut 3 frames out of the stream
        await _until(ws, proto, lambda ev: sum(isinstance(e, Data) for e in ev) >= len(tickers))
        await _admin(sim, "skip_seq", {"conn": await _conn_id(sim), "sid": sid, "n": 3})
        events = await _until(ws, proto, lambda ev: any(isinstance(e, Gap) for e in ev))
        gap = next(e for e in events if isinstance(e, Gap))
        assert gap.sid == sid
        assert gap.channel == "orderbook_delta"
        assert gap.markets == tuple(tickers)
        assert gap.received - gap.expected == 3
        after = events[events.index(gap) + 1]
        assert isinstance(after, Data)
        assert after.seq == gap.received
    finally:
        await ws.close()
        await http.close()


async def test_terminal_error_and_malformed_frame(sim: Simulator) -> None:
    """Error 25 on a sid yields Resubscribe with its markets; a broken frame a DeadLetter."""
    tickers = await _open_markets(sim, 5)
    proto = WsProtocol()
    http = aiohttp.ClientSession()
    ws = await ws_connect(http, sim.ws_url, _signer(sim))
    try:
        events = await _subscribe(ws, proto, ["orderbook_delta"], tickers)
        sid = next(e.sid for e in events if isinstance(e, Subscribed))
        conn = await _conn_id(sim)
        await _admin(sim, "malformed", {"conn": conn})
        events = await _until(ws, proto, lambda ev: any(isinstance(e, DeadLetter) for e in ev))
        dead = next(e for e in events if isinstance(e, DeadLetter))
        assert dead.reason
        await _admin(sim, "sub_error", {"conn": conn, "sid": sid, "code": 25})
        events = await _until(ws, proto, lambda ev: any(isinstance(e, Resubscribe) for e in ev))
        resub = next(e for e in events if isinstance(e, Resubscribe))
        assert (resub.sid, resub.code, resub.markets) == (sid, 25, tuple(tickers))
        assert sid not in proto.subscriptions
    finally:
        await ws.close()
        await http.close()


async def test_bad_key_refused(sim: Simulator) -> None:
    """A WebSocket upgrade signed by an unknown key is refused with a non-101 status."""
    stranger = Signer(sim.key_id, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await ws_connect(http, sim.ws_url, stranger)
    assert info.value.status in {401, 403}


async def test_rest_paging_returns_every_market_once(sim: Simulator) -> None:
    """Small pages over the simulator's catalogue return each market exactly once."""
    async with KalshiRest(sim.rest_url, policy=FAST) as rest:
        got = [m async for m in rest.get_markets(limit=7)]
    tickers = [m.ticker for m in got if isinstance(m, MarketRec)]
    assert len(tickers) == len(got)
    assert len(set(tickers)) == len(tickers)
    stats = await _admin(sim, "stats")
    assert len(tickers) == stats["markets"]


async def test_rest_429_burst_retried_through_bucket(sim: Simulator) -> None:
    """A burst of 429s from the simulator is retried (each retry paying the bucket) to success."""
    await _admin(sim, "rest_faults", {"status": 429, "count": 4})
    async with KalshiRest(sim.rest_url, policy=FAST) as rest:
        status = await rest.get_exchange_status()
        assert rest.retries_total == 4
        assert rest.requests_total == 5
    assert status.exchange_active is True
    stats = await _admin(sim, "stats")
    assert stats["rest_faults_served"] >= 4


async def test_ws_and_rest_trades_agree(sim: Simulator) -> None:
    """A trade seen on the WS trade channel and via REST /markets/trades is the same record."""
    proto = WsProtocol()
    http = aiohttp.ClientSession()
    ws = await ws_connect(http, sim.ws_url, _signer(sim))
    try:
        await _subscribe(ws, proto, ["trade"], None)
        events = await _until(
            ws,
            proto,
            lambda ev: sum(isinstance(e, Data) and isinstance(e.record, TradeRec) for e in ev) >= 3,
        )
    finally:
        await ws.close()
        await http.close()
    ws_trades = [e.record for e in events if isinstance(e, Data) and isinstance(e.record, TradeRec)]
    async with KalshiRest(sim.rest_url, policy=FAST) as rest:
        for trade in ws_trades:
            rest_trades = [t async for t in rest.get_trades(trade.ticker)]
            match = [
                t for t in rest_trades if isinstance(t, TradeRec) and t.trade_id == trade.trade_id
            ]
            assert match == [dataclasses.replace(trade, sid=None, seq=None)]
            assert match[0].row(0)[:10] == trade.row(0)[:10]  # identity and data columns


async def test_issue11_orderbook_rest_needs_the_signature(sim: Simulator) -> None:
    """OpenAPI 3.13 marks the order-book endpoints authenticated: signed works, unsigned is 401."""
    from kalshi_data.kalshi.rest import AuthError

    ticker = next(m.ticker for m in sim.exchange.market_list if m.book.yes)
    async with KalshiRest(sim.rest_url, policy=FAST, signer=_signer(sim)) as rest:
        snap = await rest.get_orderbook(ticker)
        assert isinstance(snap, SnapshotRec)
        assert snap.yes
    async with KalshiRest(sim.rest_url, policy=FAST) as rest:
        with pytest.raises(AuthError):
            await rest.get_orderbook(ticker)
