"""REST client against a real aiohttp server on 127.0.0.1: paging, retries, limits, signing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.kalshi.rest import (
    AuthError,
    BadResponse,
    KalshiRest,
    NotFound,
    RateLimited,
    ResponseTooLarge,
    ServerError,
)
from kalshi_data.kalshi.signer import HEADER_SIGNATURE, HEADER_TIMESTAMP, Signer, message, verify
from kalshi_data.records import MarketRec, SnapshotRec, TradeRec
from kalshi_data.resilience import RetryPolicy, TokenBucket

FAST = RetryPolicy(base_s=0.001, cap_s=0.005, max_attempts=6)
N_MARKETS = 257


@dataclass
class Server:
    """A tiny Kalshi-shaped REST server with scripted failures."""

    url: str = ""
    hits: dict[str, int] = field(default_factory=dict)
    fail_next: list[tuple[int, bytes]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)


def _market(i: int) -> dict[str, Any]:
    return {"ticker": f"SIM-M{i:04d}", "event_ticker": f"SIM-E{i // 10:03d}", "status": "active"}


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """Start the server on an ephemeral loopback port; always shut it down."""
    state = Server()

    def counted(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            state.hits[request.path] = state.hits.get(request.path, 0) + 1
            state.headers_seen.append(dict(request.headers))
            state.queries.append({k: request.query.getall(k) for k in request.query})
            if state.fail_next:
                status, body = state.fail_next.pop(0)
                return web.Response(status=status, body=body, content_type="application/json")
            out: web.StreamResponse = await handler(request)
            return out

        return wrapped

    async def markets(request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "100"))
        start = int(request.query.get("cursor") or 0)
        page = [_market(i) for i in range(start, min(start + limit, N_MARKETS))]
        nxt = str(start + limit) if start + limit < N_MARKETS else ""
        return web.json_response({"markets": page, "cursor": nxt})

    async def market(request: web.Request) -> web.Response:
        ticker = request.match_info["ticker"]
        if ticker != "SIM-M0001":
            return web.json_response(
                {"error": {"code": "not_found", "message": "not found", "service": "x"}}, status=404
            )
        return web.json_response({"market": _market(1)})

    async def orderbook(request: web.Request) -> web.Response:
        return web.json_response(
            {"orderbook_fp": {"yes_dollars": [["0.4000", "5.00"], ["0.4200", "13.00"]]}}
        )

    async def orderbooks(request: web.Request) -> web.Response:
        books = [
            {"ticker": t, "orderbook_fp": {"no_dollars": [["0.5000", "1.00"]]}}
            for t in request.query.getall("tickers")
        ]
        return web.json_response({"orderbooks": books})

    async def trades(request: web.Request) -> web.Response:
        trade = {
            "trade_id": "d91bc706-ee49-470d-82d8-11418bda6fed",
            "ticker": "SIM-M0001",
            "count_fp": "3.00",
            "yes_price_dollars": "0.3000",
            "no_price_dollars": "0.7000",
            "taker_outcome_side": "yes",
            "taker_book_side": "bid",
            "is_block_trade": False,
            "created_time": "2026-01-01T00:00:00Z",
        }
        return web.json_response({"trades": [trade, {"trade_id": "bad"}], "cursor": ""})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b'{"x":"' + b"a" * 5000 + b'"}', content_type="application/json")

    async def loop(request: web.Request) -> web.Response:
        return web.json_response({"items": [1], "cursor": "same"})

    async def notjson(request: web.Request) -> web.Response:
        return web.Response(body=b"<html>oops</html>", content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"exchange_active": True, "trading_active": False})

    app = web.Application()
    app.router.add_get("/trade-api/v2/markets", counted(markets))
    app.router.add_get("/trade-api/v2/markets/trades", counted(trades))
    app.router.add_get("/trade-api/v2/markets/orderbooks", counted(orderbooks))
    app.router.add_get("/trade-api/v2/markets/{ticker}", counted(market))
    app.router.add_get("/trade-api/v2/markets/{ticker}/orderbook", counted(orderbook))
    app.router.add_get("/trade-api/v2/big", counted(big))
    app.router.add_get("/trade-api/v2/loop", counted(loop))
    app.router.add_get("/trade-api/v2/notjson", counted(notjson))
    app.router.add_get("/trade-api/v2/exchange/status", counted(status))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/trade-api/v2"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_paging_returns_every_market_once(server: Server) -> None:
    """paginate follows cursors until "" and yields each market exactly once."""
    async with KalshiRest(server.url, policy=FAST) as rest:
        got = [m async for m in rest.get_markets(status="open", limit=50)]
    assert all(isinstance(m, MarketRec) for m in got)
    tickers = [m.ticker for m in got if isinstance(m, MarketRec)]
    assert len(tickers) == N_MARKETS
    assert len(set(tickers)) == N_MARKETS
    assert server.hits["/trade-api/v2/markets"] == 6  # ceil(257 / 50)
    assert server.queries[0]["status"] == ["open"]
    assert "cursor" not in server.queries[0]
    assert server.queries[1]["cursor"] == ["50"]


async def test_429_burst_retried_through_bucket(server: Server) -> None:
    """Three 429s then success: 4 attempts, each paying the bucket's request cost."""
    now = [0.0]
    bucket = TokenBucket(10.0, 100.0, clock=lambda: now[0])
    server.fail_next = [(429, b'{"error": "too many requests"}')] * 3
    retried: list[BaseException] = []
    async with KalshiRest(
        server.url, policy=FAST, bucket=bucket, on_retry=lambda a, e, d: retried.append(e)
    ) as rest:
        status = await rest.get_exchange_status()
        assert rest.requests_total == 4
        assert rest.retries_total == 3
    assert status.exchange_active is True
    assert status.trading_active is False
    assert all(isinstance(e, RateLimited) for e in retried)
    assert bucket.try_acquire(60.0)  # 100 - 4 x 10 = 60 left, exactly
    assert not bucket.try_acquire(0.5)


async def test_5xx_retried_then_gives_up(server: Server) -> None:
    """5xx is retried; after max_attempts the ServerError surfaces with its status."""
    server.fail_next = [(503, b"{}")] * 10
    async with KalshiRest(server.url, policy=FAST) as rest:
        with pytest.raises(ServerError) as info:
            await rest.get_exchange_status()
    assert info.value.status == 503
    assert server.hits["/trade-api/v2/exchange/status"] == FAST.max_attempts


async def test_permanent_errors_not_retried(server: Server) -> None:
    """404 and 401 fail at once, with Kalshi's error code."""
    async with KalshiRest(server.url, policy=FAST) as rest:
        with pytest.raises(NotFound) as info:
            await rest.get_market("SIM-NOPE")
        assert info.value.code == "not_found"
        server.fail_next = [(401, b'{"error":{"code":"invalid_credentials","message":"x"}}')]
        with pytest.raises(AuthError):
            await rest.get_exchange_status()
    assert server.hits["/trade-api/v2/markets/SIM-NOPE"] == 1
    assert server.hits["/trade-api/v2/exchange/status"] == 1


async def test_body_limit_and_bad_bodies(server: Server) -> None:
    """Oversized, non-JSON and looping responses are refused with named errors."""
    async with KalshiRest(server.url, policy=FAST, max_body_bytes=1000) as rest:
        with pytest.raises(ResponseTooLarge):
            await rest.get_json("/big")
        with pytest.raises(BadResponse, match="not JSON"):
            await rest.get_json("/notjson")
        with pytest.raises(BadResponse, match="cursor repeats"):
            _ = [x async for x in rest.paginate("/loop", None, "items")]


async def test_network_error_retried_then_raised() -> None:
    """A refused connection is retried per the policy, then surfaces as an OSError."""
    policy = RetryPolicy(base_s=0.001, cap_s=0.002, max_attempts=3)
    async with KalshiRest("http://127.0.0.1:9/trade-api/v2", policy=policy) as rest:
        with pytest.raises(OSError):
            await rest.get_exchange_status()
        assert rest.requests_total == 3


async def test_typed_helpers(server: Server) -> None:
    """Orderbook(s), single market and trades come back as records or dead letters."""
    async with KalshiRest(server.url, policy=FAST) as rest:
        book = await rest.get_orderbook("SIM-M0001", depth=5)
        books = await rest.get_orderbooks(["SIM-M0001", "SIM-M0002"])
        market = await rest.get_market("SIM-M0001")
        trades = [t async for t in rest.get_trades("SIM-M0001")]
    assert isinstance(book, SnapshotRec)
    assert book.yes == ((4000, 500), (4200, 1300))
    assert server.queries[0]["depth"] == ["5"]
    assert [b.ticker for b in books if isinstance(b, SnapshotRec)] == ["SIM-M0001", "SIM-M0002"]
    assert isinstance(market, MarketRec)
    assert isinstance(trades[0], TradeRec)
    assert isinstance(trades[1], DeadLetter)
    assert trades[1].reason.startswith("rest trade:")


async def test_requests_are_signed(server: Server) -> None:
    """With a signer, each request carries headers signed over the full path without query."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with KalshiRest(server.url, policy=FAST, signer=Signer("kid", key)) as rest:
        await rest.get_json("/markets", {"limit": 1})
    headers = server.headers_seen[-1]
    text = message("GET", "/trade-api/v2/markets", int(headers[HEADER_TIMESTAMP]))
    assert verify(key.public_key(), text, headers[HEADER_SIGNATURE])
    assert orjson.dumps(headers[HEADER_SIGNATURE])  # plain ASCII base64
