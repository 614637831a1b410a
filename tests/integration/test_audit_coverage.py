"""The audit in-process against the simulator and a real production database: dry runs write
nothing, a 429 storm leaves the window pending, an outage mid-window resumes from the
watermark, and the order-book side of coverage (gap windows no gatherer covered, closed by the
next snapshot) matches a run with known holes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from kalshi_data.config import load_config
from kalshi_data.kalshi.rest import KalshiRest
from kalshi_data.resilience import RetryPolicy
from kalshi_data.tools import audit as a
from simulator import Simulator
from tests.integration.conftest import StartSimulator

WINDOW_S = 60


@pytest.fixture
async def sim(start_simulator: StartSimulator) -> Simulator:
    return await start_simulator(seed=3, markets=20, rate=400, rest_tokens_per_s=0)


def _cfg(dsn: str, rest_url: str, **extra: Any) -> a.AuditConfig:
    data: dict[str, Any] = {
        "production": {"dsn": dsn},
        "kalshi": {"rest_url": rest_url, "max_attempts": 2, "backoff_base_s": 0.01},
        "window_s": WINDOW_S,
        "settle_s": 0,
        "lookback_s": 300,
        "page_limit": 10,
        "gatherers": ["g1", "g2", "g3"],
        **extra,
    }
    return load_config(a.AuditConfig, None, data=data, env={})


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return int(row[0])


async def _trades_in(sim: Simulator, start: int, n: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = sum(1 for t in sim.exchange.trades if start <= t.msg["ts_ms"] // 1000 < start + 60)
        if got >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the simulator made too few trades")


class _FailAfterFirstPage(KalshiRest):
    """A real client that arms the simulator's 503 answers once the first page of trades is
    read (the historical cutoff is asked first)."""

    def __init__(self, sim: Simulator, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim = sim

    async def get_json(self, path: str, params: Any = None) -> dict[str, Any]:
        page = await super().get_json(path, params)
        if path.endswith("/trades"):
            self.sim.rest.faults.pending_5xx = 1000
        return page


async def test_dry_run_then_outage_mid_window_resumes_from_the_watermark(
    sim: Simulator, prod_db: str
) -> None:
    """Dry run writes nothing; a 503 after page one leaves the window pending at its watermark;
    the next run continues there and every exchange trade is counted and backfilled once."""
    left = WINDOW_S - time.time() % WINDOW_S
    if left < 5:  # too little of this minute left to trade in: use the next one
        await asyncio.sleep(left + 0.1)
    start = a.window_floor(time.time(), WINDOW_S)
    await _trades_in(sim, start, 35)
    sim.pause()
    cfg = _cfg(prod_db, sim.rest_url)
    exchange = {
        t.msg["trade_id"]
        for t in sim.exchange.trades
        if start <= t.msg["ts_ms"] // 1000 < start + 60
    }
    now = start + WINDOW_S + 1.0
    dry = await a.run_audit(cfg, now=now, since=start, until=start + 1, dry_run=True)
    assert dry.windows[0].tally.totals()["backfilled"] == len(exchange)
    assert _count(prod_db, "SELECT count(*) FROM trades") == 0
    assert _count(prod_db, "SELECT count(*) FROM audit_windows") == 0

    sim.rest.faults.pending_429 = 1000  # a 429 storm longer than the retry budget
    stormed = await a.run_audit(cfg, now=now, since=start, until=start + 1)
    assert not stormed.complete
    assert stormed.pending_error is not None
    assert "429" in stormed.pending_error
    with psycopg.connect(prod_db) as c:
        assert c.execute("SELECT status, attempts, pages FROM audit_windows").fetchall() == [
            ("pending", 1, 0)
        ]
    sim.rest.faults.pending_429 = 0

    conn = await a.connect(cfg)
    try:
        rest = _FailAfterFirstPage(
            sim, sim.rest_url, policy=RetryPolicy(base_s=0.01, cap_s=0.02, max_attempts=2)
        )
        async with rest:
            with pytest.raises(a.WindowPending):
                await a.audit_window(conn, rest, cfg, start, peers=["g1"])
    finally:
        await conn.close()
    with psycopg.connect(prod_db) as c:
        status, pages, watermark, seen = c.execute(
            "SELECT status, pages, watermark, exchange_trades FROM audit_windows "
            "WHERE window_start = to_timestamp(%s)",
            (start,),
        ).fetchone() or (None, None, None, None)
    assert status == "pending"
    assert pages == 1
    assert watermark
    assert 0 < seen <= 10
    assert _count(prod_db, "SELECT count(*) FROM trades") == seen

    sim.rest.faults.pending_5xx = 0
    run = await a.run_audit(cfg, now=now)
    assert run.complete, run.as_dict()
    with psycopg.connect(prod_db) as c:
        row = c.execute(
            "SELECT status, exchange_trades, backfilled, live_trades FROM audit_windows "
            "WHERE window_start = to_timestamp(%s)",
            (start,),
        ).fetchone()
        ids = {r[0] for r in c.execute("SELECT trade_id::text FROM trades").fetchall()}
    assert row == ("done", len(exchange), len(exchange), 0)
    assert ids == exchange


def _at(base: datetime, s: float) -> datetime:
    return base + timedelta(seconds=s)


async def test_uncovered_gap_windows_match_known_holes(sim: Simulator, prod_db: str) -> None:
    """A market where all three gatherers were in a gap at once gets one uncovered window (from
    the last gap's start to the next snapshot); a market one gatherer covered gets none."""
    sim.pause()
    start = a.window_floor(time.time(), 3600) - 2 * 3600  # an hour the simulator never traded
    base = datetime.fromtimestamp(start, UTC)
    with psycopg.connect(prod_db) as c:
        for g in ("g1", "g2", "g3"):
            c.execute(
                "INSERT INTO sync_cursors (gatherer_id, table_name) VALUES (%s, 'trades')", (g,)
            )
        gaps = [  # gatherer, markets, detected at (s into the hour), recovered at
            ("g1", ["M-A", "M-B"], 100, 130),
            ("g2", ["M-A", "M-B"], 105, 131),
            ("g3", ["M-A"], 110, 132),
            ("g1", ["M-C"], 1000, None),  # never recovered, no snapshot: open to the window end
            ("g2", ["M-C"], 1500, None),
            ("g3", ["M-C"], 2000, None),
        ]
        for i, (g, markets, t0, t1) in enumerate(gaps):
            gid = f"00000000-0000-0000-0000-{i:012d}"
            for state, rec in (("open", None), ("recovered", t1)):
                if state == "recovered" and t1 is None:
                    continue
                c.execute(
                    "INSERT INTO gaps (gap_id, state, sid, channel, markets, detected_at, "
                    "recovered_at, received_at, gatherer_id) "
                    "VALUES (%s, %s, 1, 'orderbook_delta', %s, %s, %s, now(), %s)",
                    (
                        gid,
                        state,
                        markets,
                        _at(base, t0),
                        None if rec is None else _at(base, rec),
                        g,
                    ),
                )
        c.execute(  # the next snapshot of M-A closes every M-A gap at 120 s
            "INSERT INTO orderbook_snapshots (ticker, exchange_ts, source, yes_prices, yes_counts, "
            "no_prices, no_counts, content_hash, suspect, received_at, gatherer_id) "
            "VALUES ('M-A', %s, 'ws', '{}', '{}', '{}', '{}', 1, false, now(), 'g2')",
            (_at(base, 120),),
        )
    cfg = _cfg(prod_db, sim.rest_url, window_s=3600, lookback_s=3 * 3600)
    run = await a.run_audit(cfg, now=start + 3600 + 1, since=start, until=start + 1)
    assert run.complete, run.as_dict()
    with psycopg.connect(prod_db) as c:
        rows = c.execute(
            "SELECT ticker, uncovered_gaps, uncovered_gap_s, exchange_trades FROM coverage "
            "ORDER BY ticker"
        ).fetchall()
    # M-A: all three in a gap from 110 s (the last to start) to the snapshot at 120 s.
    # M-B: g3 had no gap there, so it covered. M-C: all three from 2000 s to the window end.
    assert rows == [("M-A", 1, 10.0, 0), ("M-C", 1, 1600.0, 0)]


async def test_one_audit_run_at_a_time(sim: Simulator, prod_db: str) -> None:
    """While another session holds the audit's lock, a run plans and writes nothing."""
    cfg = _cfg(prod_db, sim.rest_url)
    with psycopg.connect(prod_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('kalshi_data.audit'))")
        run = await a.run_audit(cfg, now=time.time())
        assert not run.complete
        assert run.pending_error == "another audit run holds the lock"
        assert _count(prod_db, "SELECT count(*) FROM audit_windows") == 0
