"""The audit across Kalshi's historical cutoff, in-process against the simulator (real HTTP) and a
real production database: a window cut by the cutoff is read from ``/historical/trades`` before
it and ``/markets/trades`` from it, each trade once; a window left pending in its live part
while the cutoff moves into it starts over and stays exact; a cutoff moving while a window is
paged makes the window read again; a second run writes nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from aiohttp import web

from kalshi_data.config import load_config
from kalshi_data.kalshi.rest import KalshiRest
from kalshi_data.resilience import RetryPolicy
from kalshi_data.tools import audit as a
from simulator import Simulator
from simulator.rest import trade_obj
from tests.integration.conftest import StartSimulator

WINDOW_S = 60
LIMIT = 10


@pytest.fixture
async def sim(start_simulator: StartSimulator) -> Simulator:
    return await start_simulator(seed=5, markets=20, rate=1500, rest_tokens_per_s=0)


def _cfg(dsn: str, rest_url: str) -> a.AuditConfig:
    data: dict[str, Any] = {
        "production": {"dsn": dsn},
        "kalshi": {"rest_url": rest_url, "max_attempts": 2, "backoff_base_s": 0.01},
        "window_s": WINDOW_S,
        "settle_s": 0,
        "lookback_s": WINDOW_S,  # the timer's runs plan only the window under test
        "page_limit": LIMIT,
        "gatherers": ["g1"],
    }
    return load_config(a.AuditConfig, None, data=data, env={})


def _in(sim: Simulator, start: int) -> list[Any]:
    return [t for t in sim.exchange.trades if start <= t.msg["ts_ms"] // 1000 < start + WINDOW_S]


async def _more_trades(sim: Simulator, start: int, n: int) -> None:
    want = len(_in(sim, start)) + n
    deadline = time.monotonic() + 20
    while len(_in(sim, start)) < want:
        assert time.monotonic() < deadline, "the simulator made too few trades"
        await asyncio.sleep(0.02)


class _Hook(KalshiRest):
    """A real client that runs ``hook`` once, after the first page of live trades."""

    def __init__(self, hook: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hook = hook
        self.paths: list[str] = []

    async def get_json(self, path: str, params: Any = None) -> dict[str, Any]:
        page = await super().get_json(path, params)
        self.paths.append(path)
        if path == a.TRADES_PATH and self.hook is not None:
            self.hook()
            self.hook = None
        return page


def _window(dsn: str, start: int) -> tuple[Any, ...]:
    with psycopg.connect(dsn) as c:
        row = c.execute(
            "SELECT status, pages, watermark, exchange_trades, backfilled, live_trades, "
            "missing_after FROM audit_windows WHERE window_start = to_timestamp(%s)",
            (start,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def _trade_ids(dsn: str) -> Counter[str]:
    with psycopg.connect(dsn) as c:
        return Counter(r[0] for r in c.execute("SELECT trade_id::text FROM trades").fetchall())


def _window_count(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT count(*) FROM audit_windows").fetchone()
    assert row is not None
    return int(row[0])


async def test_window_across_the_cutoff_stays_exact_while_the_cutoff_moves(
    sim: Simulator, prod_db: str
) -> None:
    left = WINDOW_S - time.time() % WINDOW_S
    if left < 25:  # too little of this minute left to trade in: use the next one
        await asyncio.sleep(left + 0.1)
    start = a.window_floor(time.time(), WINDOW_S)
    await _more_trades(sim, start, 8)
    # The cutoff is set mid-run: older trades leave /markets/trades for /historical/trades.
    c1 = sim.exchange.trades[-1].created_us + 1
    sim.rest.historical_cutoff_us = c1
    await _more_trades(sim, start, 3 * LIMIT)
    c2 = sim.exchange.trades[-1].created_us + 1  # where the cutoff moves later
    await _more_trades(sim, start, 2 * LIMIT)
    sim.pause()
    trades = _in(sim, start)
    assert time.time() < start + WINDOW_S + 5, "the window closed while trading"
    truth = {t.msg["trade_id"] for t in trades}
    before_c1 = {t.msg["trade_id"] for t in trades if t.created_us < c1}
    c1_to_c2 = {t.msg["trade_id"] for t in trades if c1 <= t.created_us < c2}
    assert len(before_c1) >= 8
    assert len(c1_to_c2) >= 3 * LIMIT
    cfg = _cfg(prod_db, sim.rest_url)
    now = start + WINDOW_S + 1.0

    # Run 1: the historical part is read, then one live page; then the exchange fails.
    def outage() -> None:
        sim.rest.faults.pending_5xx = 1000

    policy = RetryPolicy(base_s=0.01, cap_s=0.02, max_attempts=2)
    conn = await a.connect(cfg)
    try:
        rest = _Hook(outage, sim.rest_url, policy=policy)
        async with rest:
            with pytest.raises(a.WindowPending):
                await a.audit_window(conn, rest, cfg, start, peers=["g1"])
        assert rest.paths[0] == a.CUTOFF_PATH
        assert a.HISTORICAL_TRADES_PATH in rest.paths
    finally:
        await conn.close()
    status, pages, watermark, seen, backfilled, live, missing = _window(prod_db, start)
    assert pages == rest.paths.count(a.HISTORICAL_TRADES_PATH) + 1
    split1 = a.split_window(start, start + WINDOW_S, c1)[0]
    assert status == "pending"
    assert watermark.startswith(f"live|{split1}|"), watermark
    assert not watermark.endswith("|"), watermark  # a cursor inside the live part
    assert seen == backfilled == len(before_c1) + LIMIT  # all historical, one live page
    assert set(_trade_ids(prod_db)) >= before_c1

    # The cutoff moves into the window's live part; the pending window must not resume its
    # live cursor (the trades between c1 and c2 have left that listing): it starts over.
    sim.rest.faults.pending_5xx = 0
    sim.rest.historical_cutoff_us = c2
    run = await a.run_audit(cfg, now=now)
    assert run.complete, run.as_dict()
    assert run.planned == 1
    assert _window_count(prod_db) == 1
    status, _pages, watermark, seen, backfilled, live, missing = _window(prod_db, start)
    assert (status, watermark, seen, backfilled, live, missing) == (
        "done",
        None,
        len(truth),
        len(truth),
        0,
        0,
    )
    ids = _trade_ids(prod_db)
    assert set(ids) == truth
    assert max(ids.values()) == 1
    with psycopg.connect(prod_db) as c:
        cov: dict[str, int] = dict(
            c.execute(
                "SELECT ticker, exchange_trades FROM coverage WHERE window_start = "
                "to_timestamp(%s) AND exchange_trades > 0",
                (start,),
            ).fetchall()
        )
    assert cov == Counter(t.msg["market_ticker"] for t in trades)

    # A second run plans nothing and writes nothing.
    again = await a.run_audit(cfg, now=now)
    assert again.planned == 0
    assert again.complete
    assert _trade_ids(prod_db) == ids

    # A re-audit during which the cutoff moves past the whole window: the window is read
    # again with the new split in the same run, still each trade once, nothing inserted.
    def move_past() -> None:
        sim.rest.historical_cutoff_us = (start + WINDOW_S) * 1_000_000 + 1

    sim.rest.historical_cutoff_us = c1
    conn = await a.connect(cfg)
    try:
        rest = _Hook(move_past, sim.rest_url, policy=policy)
        async with rest:
            result = await a.audit_window(conn, rest, cfg, start, peers=["g1"], restart=True)
    finally:
        await conn.close()
    assert result.tally.totals() == {
        "exchange_trades": len(truth),
        "live_trades": 0,
        "backfilled": len(truth),
        "missing_after": 0,
    }
    assert rest.paths.count(a.CUTOFF_PATH) == 3  # first, moved, confirmed
    assert _window(prod_db, start)[3:] == (len(truth), len(truth), 0, 0)
    assert _trade_ids(prod_db) == ids


async def test_an_exchange_without_the_historical_api_is_read_live(
    prod_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 404 for ``/historical/cutoff`` (an older API, a stub) means no partition: logged once,
    every window paged from ``/markets/trades`` only, the cutoff not asked again."""
    start = a.window_floor(time.time(), WINDOW_S) - 10 * WINDOW_S
    tid = "7b1e1f46-8a5c-4c59-9d5a-0b8e6b2c9b11"
    msg = {
        "trade_id": tid,
        "market_ticker": "KXA-1",
        "count_fp": "1.00",
        "yes_price_dollars": "0.4100",
        "no_price_dollars": "0.5900",
        "taker_side": "yes",
        "taker_outcome_side": "yes",
        "taker_book_side": "bid",
        "is_block_trade": False,
    }
    asked: list[str] = []

    async def trades(request: web.Request) -> web.Response:
        asked.append(request.path)
        created = (start + 5) * 1_000_000 + 123_456
        return web.json_response({"trades": [trade_obj(msg, created)], "cursor": ""})

    async def other(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"error": {"code": "not_found"}}, status=404)

    app = web.Application()
    app.router.add_get("/trade-api/v2/markets/trades", trades)
    app.router.add_get("/{tail:.*}", other)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        cfg = _cfg(prod_db, f"http://127.0.0.1:{port}/trade-api/v2")
        with caplog.at_level(logging.INFO, logger="kalshi_data.audit"):
            run = await a.run_audit(cfg, now=start + 2 * WINDOW_S + 1, since=start - WINDOW_S)
    finally:
        await runner.cleanup()
    assert run.complete, run.as_dict()
    assert run.planned == 3  # the trade outside two of them is dropped client-side
    assert asked.count("/trade-api/v2" + a.CUTOFF_PATH) == 1
    assert a.HISTORICAL_TRADES_PATH not in {p.removeprefix("/trade-api/v2") for p in asked}
    assert sum(1 for r in caplog.records if "no historical partition" in r.getMessage()) == 1
    assert set(_trade_ids(prod_db)) == {tid}
    assert _window(prod_db, start)[:4] == ("done", 1, None, 1)


pytestmark = pytest.mark.timeout(180)
