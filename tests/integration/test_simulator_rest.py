"""The simulator's REST API over real HTTP: paging, filters, shapes, errors, rate limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulator import SimConfig, Simulator
from simulator.auth import sign_headers
from simulator.catalog import STATUS_FILTER
from simulator.fixed import rfc3339_us


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    s = Simulator(
        SimConfig(
            seed=9,
            markets=400,
            rate=3000,
            workdir=tmp_path,
            lifecycle_share=0.05,
            rest_tokens_per_s=0,
        )
    )
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def wait_for(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def get(
    http: aiohttp.ClientSession,
    url: str,
    status: int = 200,
    sim: Simulator | None = None,
) -> Any:
    """GET ``url``; signed with the simulator's key when ``sim`` is given."""
    headers: dict[str, str] = {}
    if sim is not None:
        assert sim.private_key_path is not None
        path = "/" + url.split("://", 1)[1].split("/", 1)[1]
        headers = sign_headers(
            sim.private_key_path.read_bytes(), sim.key_id, "GET", path, time.time_ns() // 10**6
        )
    async with http.get(url, headers=headers) as r:
        assert r.status == status, await r.text()
        return await r.json()


async def test_every_market_is_paged_exactly_once_while_markets_appear(sim: Simulator):
    """Paging returns each market once, ends with "", and includes markets created meanwhile."""
    before = {m.ticker for m in sim.exchange.market_list}
    seen: list[str] = []
    cursor = ""
    async with aiohttp.ClientSession() as http:
        while True:
            page = await get(http, f"{sim.rest_url}/markets?limit=37&cursor={cursor}")
            seen += [m["ticker"] for m in page["markets"]]
            cursor = page["cursor"]
            if not cursor:
                break
            if len(seen) == 37:
                await wait_for(lambda: len(sim.exchange.market_list) > len(before))
    assert len(seen) == len(set(seen))
    assert before <= set(seen)
    assert len(sim.exchange.market_list) > len(before)  # markets were created while paging


async def test_market_filters_and_limits(sim: Simulator):
    """status/event/series/tickers filters hold; limit above 1000 is a 400."""
    ex = sim.exchange
    async with aiohttp.ClientSession() as http:
        for status in ("unopened", "open", "paused", "closed", "settled"):
            page = await get(http, f"{sim.rest_url}/markets?status={status}&limit=1000")
            assert page["markets"], status
            assert all(STATUS_FILTER[m["status"]] == status for m in page["markets"])
        paused = await get(http, f"{sim.rest_url}/markets?status=paused&limit=1000")
        assert {m["status"] for m in paused["markets"]} == {"inactive"}  # issue 11
        await get(http, f"{sim.rest_url}/markets?limit=1001", 400)
        await get(http, f"{sim.rest_url}/markets?status=running", 400)
        await get(http, f"{sim.rest_url}/markets?cursor=zzz", 400)
        ev = ex.event_list[3]
        page = await get(http, f"{sim.rest_url}/markets?event_ticker={ev.event_ticker}")
        assert [m["ticker"] for m in page["markets"]] == ev.markets
        page = await get(
            http, f"{sim.rest_url}/markets?series_ticker={ev.series_ticker}&limit=1000"
        )
        assert {m["event_ticker"] for m in page["markets"]} >= {ev.event_ticker}
        two = [ex.market_list[5].ticker, ex.market_list[2].ticker]
        page = await get(http, f"{sim.rest_url}/markets?tickers={','.join(two)}")
        assert {m["ticker"] for m in page["markets"]} == set(two)
        page = await get(http, f"{sim.rest_url}/markets")
        assert len(page["markets"]) == 100


async def test_market_object_shape_and_404(sim: Simulator):
    """A market carries the §4 fields with fixed-point strings; unknown tickers are a JSON 404."""
    m = next(m for m in sim.exchange.market_list if m.status == "active")
    async with aiohttp.ClientSession() as http:
        body = (await get(http, f"{sim.rest_url}/markets/{m.ticker}"))["market"]
        missing = await get(http, f"{sim.rest_url}/markets/NOPE-1", 404)
    assert missing == {
        "error": {"code": "not_found", "message": "market not found", "service": "exchange"}
    }
    for key in ("yes_bid_dollars", "last_price_dollars", "notional_value_dollars"):
        assert len(body[key].split(".")[1]) == 4
    for key in ("volume_fp", "open_interest_fp", "yes_bid_size_fp"):
        assert len(body[key].split(".")[1]) == 2
    assert body["status"] == "active"
    assert body["close_time"].endswith("Z")
    assert body["price_level_structure"] in ("linear_cent", "deci_cent")


async def test_orderbook_levels_ascending_with_depth(sim: Simulator):
    """Order book levels ascend (best bid last); depth keeps the best levels."""
    sim.pause()
    m = max(sim.exchange.market_list, key=lambda x: len(x.book.yes))
    async with aiohttp.ClientSession() as http:
        book_url = f"{sim.rest_url}/markets/{m.ticker}/orderbook"
        full = (await get(http, book_url, sim=sim))["orderbook_fp"]
        top = (await get(http, f"{book_url}?depth=2", sim=sim))["orderbook_fp"]
        many_url = f"{sim.rest_url}/markets/orderbooks?tickers={m.ticker},NOPE"
        many = await get(http, many_url, sim=sim)
        # Issue 11: the OpenAPI spec marks both order-book endpoints as authenticated.
        unsigned = await get(http, book_url, 401)
        assert unsigned["error"]["code"] == "unauthorized"
        await get(http, many_url, 401)
        await get(http, f"{sim.rest_url}/markets/{m.ticker}", 200)  # no auth needed there
    prices = [float(p) for p, _ in full["yes_dollars"]]
    assert prices == sorted(prices)
    assert len(prices) == len(m.book.yes) >= 2
    assert top["yes_dollars"] == full["yes_dollars"][-2:]
    assert many == {"orderbooks": [{"ticker": m.ticker, "orderbook_fp": full}]}


async def test_trades_newest_first_with_cursor_and_time_filter(sim: Simulator):
    """Trades page newest first without repeats; ticker and min_ts/max_ts filter."""
    await wait_for(lambda: len(sim.exchange.trades) > 120)
    sim.pause()
    kept = len(sim.exchange.trades)
    assert kept > 0
    ids: list[str] = []
    times: list[str] = []
    cursor = ""
    async with aiohttp.ClientSession() as http:
        while True:
            page = await get(http, f"{sim.rest_url}/markets/trades?limit=50&cursor={cursor}")
            ids += [t["trade_id"] for t in page["trades"]]
            times += [t["created_time"] for t in page["trades"]]
            cursor = page["cursor"]
            if not cursor:
                break
        assert len(ids) == len(set(ids)) == kept
        assert times == sorted(times, reverse=True)
        one = sim.exchange.trades[-1].msg
        page = await get(
            http, f"{sim.rest_url}/markets/trades?ticker={one['market_ticker']}&limit=1000"
        )
        assert {t["ticker"] for t in page["trades"]} == {one["market_ticker"]}
        assert {"trade_id", "count_fp", "yes_price_dollars", "taker_outcome_side"} <= set(
            page["trades"][0]
        )
        future = int(time.time()) + 3600
        page = await get(http, f"{sim.rest_url}/markets/trades?min_ts={future}")
        assert page == {"trades": [], "cursor": ""}


async def test_historical_cutoff_splits_the_trade_history(sim: Simulator):
    """Trades created before the cutoff leave ``/markets/trades`` for ``/historical/trades``
    (paged alike, no signature needed); ``/historical/cutoff`` reports it (the epoch when there
    is none); the admin API moves it."""

    async def all_pages(http: aiohttp.ClientSession, path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = ""
        while True:
            page = await get(http, f"{sim.rest_url}{path}?limit=40&cursor={cursor}")
            out += page["trades"]
            cursor = page["cursor"]
            if not cursor:
                return out

    await wait_for(lambda: len(sim.exchange.trades) > 100)
    sim.pause()
    kept = list(sim.exchange.trades)
    async with aiohttp.ClientSession() as http:
        assert await get(http, f"{sim.rest_url}/historical/cutoff") == {
            "market_settled_ts": "1970-01-01T00:00:00.000000Z",
            "trades_created_ts": "1970-01-01T00:00:00.000000Z",
            "orders_updated_ts": "1970-01-01T00:00:00.000000Z",
        }
        assert await all_pages(http, "/historical/trades") == []
        cut = kept[len(kept) // 2].created_us
        async with http.post(
            f"{sim.admin_url}/historical_cutoff", json={"ts": rfc3339_us(cut)}
        ) as r:
            assert r.status == 200
            assert (await r.json())["historical_cutoff_us"] == cut
        body = await get(http, f"{sim.rest_url}/historical/cutoff")
        assert body["trades_created_ts"] == rfc3339_us(cut)
        old = await all_pages(http, "/historical/trades")
        live = await all_pages(http, "/markets/trades")
        assert [t["trade_id"] for t in old] == [
            t.msg["trade_id"] for t in reversed(kept) if t.created_us < cut
        ]
        assert [t["trade_id"] for t in live] == [
            t.msg["trade_id"] for t in reversed(kept) if t.created_us >= cut
        ]
        assert {"trade_id", "ticker", "count_fp", "created_time"} <= set(old[0])
        # Unix seconds work too; a cursor of one listing is refused by the other.
        async with http.post(f"{sim.admin_url}/historical_cutoff", json={"ts": 1}) as r:
            assert (await r.json())["historical_cutoff_us"] == 1_000_000
        page = await get(http, f"{sim.rest_url}/markets/trades?limit=5")
        await get(http, f"{sim.rest_url}/historical/trades?cursor={page['cursor']}", 400)
        async with http.post(f"{sim.admin_url}/historical_cutoff", json={}) as r:
            assert r.status == 400


async def test_events_series_and_status(sim: Simulator):
    """Events page by 200 at most (400 above), nest markets on request; series list and 404."""
    ex = sim.exchange
    async with aiohttp.ClientSession() as http:
        await get(http, f"{sim.rest_url}/events?limit=201", 400)
        page = await get(http, f"{sim.rest_url}/events?limit=5&with_nested_markets=true")
        assert len(page["events"]) == 5
        assert page["cursor"]
        first = page["events"][0]
        assert [m["ticker"] for m in first["markets"]] == ex.event_list[0].markets
        one = await get(http, f"{sim.rest_url}/events/{first['event_ticker']}")
        assert "markets" not in one["event"]
        assert [m["ticker"] for m in one["markets"]] == ex.event_list[0].markets
        await get(http, f"{sim.rest_url}/events/NOPE", 404)
        series = (await get(http, f"{sim.rest_url}/series"))["series"]
        assert {s["ticker"] for s in series} == set(ex.series)
        single = await get(http, f"{sim.rest_url}/series/{series[0]['ticker']}")
        assert single["series"] == series[0]
        await get(http, f"{sim.rest_url}/series/NOPE", 404)
        status = await get(http, f"{sim.rest_url}/exchange/status")
        assert status == {"exchange_active": True, "trading_active": True}


async def test_429_once_the_token_bucket_is_empty(tmp_path: Path):
    """With 40 tokens and cost 10, the fifth quick request gets 429 without Retry-After."""
    cfg = SimConfig(
        markets=20, rate=0, workdir=tmp_path, rest_tokens_per_s=1, rest_bucket_tokens=40
    )
    async with Simulator(cfg) as sim, aiohttp.ClientSession() as http:
        statuses = []
        body: Any = None
        retry_after: str | None = "unset"
        for _ in range(5):
            async with http.get(f"{sim.rest_url}/exchange/status") as r:
                statuses.append(r.status)
                body = await r.json()
                retry_after = r.headers.get("Retry-After")
        assert statuses == [200, 200, 200, 200, 429]
        assert body == {"error": "too many requests"}
        assert retry_after is None
        assert sim.rest.limited == 1
