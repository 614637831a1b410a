"""The local PostgreSQL killed with kill -9 mid-stream and restarted: nothing lost or doubled."""

from __future__ import annotations

import asyncio
import time

import pytest

from kalshi_data.pgcluster import PgCluster
from tests.integration.gatherer_support import (
    assert_truth,
    config_data,
    gatherer,
    gatherer_db,
    query,
    quiesce,
    simulator,
    subscribed,
    wait_for,
)

pytestmark = pytest.mark.both_backends


async def _crash_run(cluster: PgCluster, tmp_path, *, outage_s: float, rate: float) -> None:
    dsn = gatherer_db(cluster.create_database("g1"))
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


async def test_local_db_kill9_brief(pg_cluster, tmp_path):
    """A few seconds of local-DB outage: spooled, replayed, exactly the truth."""
    await _crash_run(pg_cluster, tmp_path, outage_s=3.0, rate=1500.0)


@pytest.mark.chaos
async def test_local_db_kill9_30s(pg_cluster, tmp_path):
    """Thirty seconds of local-DB outage at a higher rate: still exactly the truth."""
    await _crash_run(pg_cluster, tmp_path, outage_s=30.0, rate=4000.0)
