"""A gatherer captures exactly the simulator's truth (simulator + real PostgreSQL)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.integration.gatherer_support import (
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


async def test_capture_equals_truth(gatherer_dsn, tmp_path):
    """Trades, deltas (k keeps identical ones apart), tickers and lifecycle equal the truth."""
    dsn = gatherer_dsn
    async with (
        simulator(tmp_path, rate=1500.0, lifecycle_share=0.01) as sim,
        gatherer(config_data(sim, dsn, tmp_path, snapshot_interval_s=1)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 6000, 30, "6000 events")
        await quiesce(sim, svc)
        assert svc.health_server is not None
        url = f"http://127.0.0.1:{svc.health_server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/health") as resp:
                health = await resp.json()
            async with http.get(url + "/ready") as resp:
                ready = resp.status
            async with http.get(url + "/metrics") as resp:
                metrics = await resp.text()
        assert await run.finish() == 0
    assert_truth(dsn, tmp_path / "truth.jsonl")
    k_max = query(dsn, "SELECT max(k) FROM orderbook_deltas")[0][0]
    assert k_max >= 1, "the run should contain identical deltas in one millisecond"
    assert query(dsn, "SELECT count(*) FROM orderbook_deltas WHERE suspect")[0][0] == 0
    assert query(dsn, "SELECT count(*) FROM dead_letters")[0][0] == 0
    # metadata versions and REST snapshots (slot time = whole seconds here)
    assert query(dsn, "SELECT count(DISTINCT ticker) FROM markets")[0][0] >= 40
    assert query(dsn, "SELECT count(*) FROM events")[0][0] > 0
    assert query(dsn, "SELECT count(*) FROM series")[0][0] > 0
    rest = query(
        dsn,
        "SELECT count(*), count(*) FILTER (WHERE extract(microseconds FROM exchange_ts)::int"
        " %% 1000000 <> 0) FROM orderbook_snapshots WHERE source = 'rest'",
    )[0]
    assert rest[0] > 0
    assert rest[1] == 0
    assert health["status"] == "healthy", health
    assert health["components"]["connections"] == {"up": 2, "total": 2}
    assert ready == 200
    assert 'gatherer_messages_total{channel="orderbook_delta",gatherer="g1"}' in metrics
