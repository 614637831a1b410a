"""The local PostgreSQL killed with kill -9 mid-stream and restarted: nothing lost or doubled."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.testing.truth import compare
from tests.integration.gatherer_support import (
    assert_loss_only_inside_gaps,
    assert_truth,
    config_data,
    gatherer,
    query,
    quiesce,
    simulator,
    subscribed,
    wait_for,
)

pytestmark = pytest.mark.both_backends


async def _crash_run(
    cluster: PgCluster, dsn: str, tmp_path, *, outage_s: float, rate: float
) -> None:
    async with (
        simulator(tmp_path, rate=rate, markets=40, lifecycle_share=0.005) as sim,
        gatherer(config_data(sim, dsn, tmp_path, snapshot_interval_s=1)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 1000, 30, "traffic before the crash")
        await asyncio.to_thread(cluster.kill9)
        writer = svc.writer
        assert writer is not None
        await wait_for(lambda: not writer.db_up, 30, "the writer to notice")
        down_health = await svc.health()
        crashed_at = time.monotonic()
        await wait_for(lambda: writer.spool_bytes > 0, 30, "rows to reach the spool")
        await wait_for(lambda: time.monotonic() - crashed_at >= outage_s, outage_s + 5, "outage")
        await asyncio.to_thread(cluster.start)
        await wait_for(lambda: writer.db_up, 60, "the writer to reconnect")
        lines = sim.truth_lines
        await wait_for(lambda: sim.truth_lines >= lines + 1000, 30, "traffic after the restart")
        await quiesce(sim, svc, timeout_s=60)
        assert writer.spool_bytes == 0
        up_health = await svc.health()
        assert await run.finish() == 0
        received = dict(svc.rows_put)
    # The writer stored exactly what the gatherer handed it (events are never merged)...
    for table in ("trades", "orderbook_deltas", "gaps", "dead_letters"):
        n = query(dsn, f"SELECT count(*) FROM {table}")[0][0]
        assert n == received.get(table, 0), (table, n, received)
    # ... and that is exactly the truth.
    assert down_health["components"]["database"] == {"up": False}
    assert down_health["status"] == "degraded"
    assert up_health["status"] == "healthy", up_health
    assert_truth(dsn, tmp_path / "truth.jsonl")


async def test_local_db_kill9_brief(pg_cluster, own_gatherer_dsn, tmp_path):
    """A few seconds of local-DB outage: spooled, replayed, exactly the truth."""
    await _crash_run(pg_cluster, own_gatherer_dsn, tmp_path, outage_s=3.0, rate=1500.0)


@pytest.mark.chaos
async def test_local_db_kill9_30s(pg_cluster, own_gatherer_dsn, tmp_path):
    """Thirty seconds of local-DB outage at a higher rate: still exactly the truth."""
    await _crash_run(pg_cluster, own_gatherer_dsn, tmp_path, outage_s=30.0, rate=4000.0)


async def test_spool_full_stops_reading_then_reconnects_with_gaps(
    pg_cluster, own_gatherer_dsn, tmp_path
):
    """Local DB down and a tiny spool bound: the gatherer closes its WebSockets (health:
    spool_full), reconnects once the DB drained the spool, records the missed window as gap
    rows, and stores every row it accepted exactly once; loss only inside the gap windows."""
    dsn = own_gatherer_dsn
    bound = 256 * 1024
    async with (
        simulator(tmp_path, rate=1500.0, markets=30, lifecycle_share=0.0) as sim,
        gatherer(config_data(sim, dsn, tmp_path, spool_max_bytes=bound)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        manager, writer, ingest = svc.manager, svc.writer, svc.ingest
        assert manager is not None
        assert writer is not None
        assert ingest is not None
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 1000, 30, "traffic before the crash")
        await asyncio.to_thread(pg_cluster.kill9)
        await wait_for(lambda: writer.spool_full, 60, "the spool to reach its bound")
        await wait_for(lambda: manager.up == 0, 10, "every WebSocket closed")
        assert manager.paused
        health_server = svc.health_server
        assert health_server is not None
        url = f"http://{health_server.host}:{health_server.port}/health"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            full_health = await resp.json()
        # Not reading: the exchange goes on, the gatherer receives nothing.
        frames = sum(ingest.frames.values())
        lines = sim.truth_lines
        await wait_for(lambda: sim.truth_lines >= lines + 1500, 30, "exchange traffic meanwhile")
        assert sum(ingest.frames.values()) == frames
        assert manager.up == 0
        peak = writer.spool_bytes
        await asyncio.to_thread(pg_cluster.start)
        await wait_for(lambda: not writer.spool_full, 60, "the spool to drain below low water")
        await wait_for(lambda: subscribed(svc), 60, "reconnected and resubscribed")
        await wait_for(
            lambda: (
                query(dsn, "SELECT count(*) FROM gaps WHERE state = 'open'")[0][0]
                == query(dsn, "SELECT count(*) FROM gaps WHERE state = 'recovered'")[0][0]
            ),
            60,
            "every gap to recover",
        )
        # The check below counts traffic from 1 s after the last recovery: wait until the
        # exchange has run past that instant, then for 1000 more lines.
        last_recovery_us = query(
            dsn,
            "SELECT (extract(epoch FROM max(recovered_at)) * 1e6)::bigint FROM gaps"
            " WHERE state = 'recovered'",
        )[0][0]
        await wait_for(
            lambda: time.time() * 1e6 > last_recovery_us + 1_500_000, 30, "1 s past the recovery"
        )
        lines = sim.truth_lines
        await wait_for(lambda: sim.truth_lines >= lines + 1000, 30, "traffic after the return")
        await quiesce(sim, svc, timeout_s=60)
        up_health = await svc.health()
        assert await run.finish() == 0
        received = dict(svc.rows_put)
        episodes = writer.full_episodes
    assert full_health["status"] == "degraded", full_health
    comp = full_health["components"]
    assert comp["spool_full"] is True
    assert comp["spool_max_bytes"] == bound
    assert comp["spool_bytes"] >= bound
    assert comp["connections"]["up"] == 0
    assert up_health["components"]["spool_full"] is False
    assert up_health["status"] == "healthy", up_health
    assert episodes == 1
    print(f"spool peak {peak} bytes for a bound of {bound}")
    # Every accepted row is stored exactly once...
    for table in ("trades", "orderbook_deltas", "gaps", "dead_letters"):
        n = query(dsn, f"SELECT count(*) FROM {table}")[0][0]
        assert n == received.get(table, 0), (table, n, received)
    # ... the pause is recorded as reconnect gaps of the order books and the firehose ...
    hows = {
        (c, h.split(" ")[0])
        for c, h in query(dsn, "SELECT channel, how FROM gaps WHERE state = 'recovered'")
    }
    assert ("orderbook_delta", "reconnect") in hows
    assert ("trade", "reconnect") in hows
    # ... and the loss lies only inside those windows; nothing extra anywhere.
    report, lo = assert_loss_only_inside_gaps(dsn, tmp_path / "truth.jsonl")
    assert report["trades"].missing, "the paused window lost nothing: the test did not pause"
    before = compare(dsn, tmp_path / "truth.jsonl", until_us=lo)
    for table in ("trades", "orderbook_deltas"):
        assert before[table].exact, (table, list(before[table].missing)[:5])


async def test_local_db_down_at_start_waits_then_starts(
    pg_cluster, own_gatherer_dsn, tmp_path, caplog
):
    """The start-up checks retry through the Supervisor while the local DB is down: a stop
    during the wait ends the run at once (the backoff sleep is interrupted), and when the
    database comes back the gatherer starts and writes."""
    dsn = own_gatherer_dsn
    await asyncio.to_thread(pg_cluster.stop)
    retries = "local database not reachable at start"
    try:
        async with simulator(tmp_path, rate=500.0, markets=5) as sim:
            # Long backoff: without the stop event cutting the sleep, finish() would time out.
            slow = config_data(sim, dsn, tmp_path, backoff_base_s=30, backoff_cap_s=30)
            caplog.set_level(logging.WARNING, logger="gatherer.service")
            async with gatherer(slow) as run:
                await wait_for(lambda: retries in caplog.text, 30, "a start-up retry")
                assert run.service.writer is None
                assert await run.finish(timeout_s=5) == 0
            caplog.clear()
            async with gatherer(config_data(sim, dsn, tmp_path)) as run:
                await wait_for(lambda: caplog.text.count(retries) >= 2, 30, "start-up retries")
                assert run.service.writer is None
                await asyncio.to_thread(pg_cluster.start)
                await wait_for(lambda: run.service.writer is not None, 30, "the start-up checks")
                svc = run.service
                await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
                sim.resume()
                await wait_for(
                    lambda: query(dsn, "SELECT count(*) FROM trades")[0][0] > 0, 30, "rows written"
                )
                assert await run.finish() == 0
    finally:
        if not pg_cluster.is_running():
            await asyncio.to_thread(pg_cluster.start)
    assert query(dsn, "SELECT count(*) FROM markets")[0][0] > 0
