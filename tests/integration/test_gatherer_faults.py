"""Faults from the simulator's admin API: recovered, gaps and dead letters recorded, no doubles."""

from __future__ import annotations

import functools
import logging
from typing import Any

import aiohttp
import pytest

from kalshi_data.testing.truth import compare
from simulator.server import Simulator
from tests.integration.gatherer_support import (
    assert_loss_only_inside_gaps,
    config_data,
    gatherer,
    query,
    quiesce,
    simulator,
    subscribed,
    wait_for,
)


async def admin(sim: Simulator, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
    """Call the simulator's admin API."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{sim.admin_url}/{name}", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def orderbook_sid(sim: Simulator) -> tuple[int, int, int]:
    """(connection id, sid, market count) of an order-book subscription with markets."""
    conns = (await admin(sim, "GET", "connections"))["connections"]
    for c in conns:
        for s in c["sids"]:
            if s["channel"] == "orderbook_delta" and s["markets"]:
                return c["id"], s["sid"], s["markets"]
    raise AssertionError("no order-book subscription")


async def channel_sid(sim: Simulator, channel: str) -> tuple[int, int]:
    """(connection id, sid) of the firehose ``channel``."""
    for c in (await admin(sim, "GET", "connections"))["connections"]:
        for s in c["sids"]:
            if s["channel"] == channel:
                return c["id"], s["sid"]
    raise AssertionError(f"no {channel} subscription")


def markets_of_sid(service: Any, sid: int) -> set[str]:
    """The markets the gatherer placed in subscription ``sid``."""
    for conn in service.manager.connections:
        slot = conn.layout.slot_by_sid(sid)
        if slot is not None:
            return set(slot.markets)
    raise AssertionError(f"sid {sid} unknown to the gatherer")


async def test_seq_gap_loses_exactly_the_skipped_frames(gatherer_dsn, tmp_path):
    """A seq gap: gap row names sid and range, resync recovers, only skipped frames missing."""
    dsn = gatherer_dsn
    async with (
        simulator(tmp_path, rate=800.0, markets=20, lifecycle_share=0.0) as sim,
        gatherer(config_data(sim, dsn, tmp_path)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        conn_id, sid, _ = await orderbook_sid(sim)
        sid_markets = markets_of_sid(svc, sid)
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 500, 30, "traffic")
        await admin(sim, "POST", "duplicate", {"conn": conn_id, "sid": sid, "n": 5})
        await admin(sim, "POST", "malformed", {"conn": conn_id, "kind": "invalid_json"})
        await admin(sim, "POST", "skip_seq", {"conn": conn_id, "sid": sid, "n": 3})
        ingest = svc.ingest
        assert ingest is not None
        await wait_for(
            lambda: query(dsn, "SELECT count(*) FROM gaps WHERE state = 'recovered'")[0][0] == 1,
            30,
            "the gap to recover",
        )
        await wait_for(lambda: sim.truth_lines >= 2500, 30, "more traffic")
        await quiesce(sim, svc)
        assert await run.finish() == 0
    report = compare(dsn, tmp_path / "truth.jsonl")
    for table, diff in report.items():
        assert not diff.extra, (table, diff.extra)
        if table != "orderbook_deltas":
            assert diff.exact, (table, diff.missing)
    missing = report["orderbook_deltas"].missing
    assert sum(missing.values()) == 3, missing
    assert {ident[0] for ident in missing} <= sid_markets
    gaps = query(
        dsn,
        "SELECT state, sid, channel, expected, received, how, recovered_at IS NOT NULL,"
        " markets FROM gaps ORDER BY state",
    )
    assert len(gaps) == 2
    (opened, recovered) = gaps
    assert opened[:3] == ("open", sid, "orderbook_delta")
    assert opened[4] - opened[3] == 3
    assert recovered[:3] == ("recovered", sid, "orderbook_delta")
    assert recovered[5] == "get_snapshot"
    assert recovered[6] is True
    assert set(opened[7]) == sid_markets
    assert query(dsn, "SELECT count(*) FROM orderbook_deltas WHERE suspect")[0][0] >= 1
    dead = query(dsn, "SELECT source, reason FROM dead_letters")
    assert len(dead) == 1
    assert dead[0][0] == "ws"


async def test_terminal_errors_and_drops_recover(gatherer_dsn, tmp_path):
    """Error 25/10 resubscribe, a dropped connection reconnects; nothing doubled, loss bounded."""
    dsn = gatherer_dsn
    async with (
        simulator(tmp_path, rate=800.0, markets=20, lifecycle_share=0.0) as sim,
        gatherer(config_data(sim, dsn, tmp_path)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 300, 30, "traffic")
        conn_id, sid, _ = await orderbook_sid(sim)
        await admin(sim, "POST", "sub_error", {"conn": conn_id, "sid": sid, "code": 25})
        tconn, tsid = await channel_sid(sim, "trade")
        await admin(sim, "POST", "sub_error", {"conn": tconn, "sid": tsid, "code": 10})
        await wait_for(lambda: subscribed(svc), 30, "resubscribed after errors")
        await wait_for(
            lambda: query(dsn, "SELECT count(*) FROM gaps WHERE state = 'recovered'")[0][0] == 2,
            30,
            "both gaps to recover",
        )
        connects = [c.connects for c in svc.manager.connections]  # type: ignore[union-attr]
        await admin(sim, "POST", "drop", {})
        await wait_for(
            lambda: all(
                c.connects > n and c.up
                for c, n in zip(svc.manager.connections, connects, strict=True)  # type: ignore[union-attr]
            ),
            30,
            "reconnects",
        )
        await wait_for(lambda: subscribed(svc), 30, "resubscribed after the drop")
        await wait_for(
            lambda: (
                query(dsn, "SELECT count(*) FROM gaps WHERE state = 'open'")[0][0]
                == query(dsn, "SELECT count(*) FROM gaps WHERE state = 'recovered'")[0][0]
            ),
            30,
            "every gap to recover",
        )
        await wait_for(lambda: sim.truth_lines >= 3000, 30, "more traffic")
        await quiesce(sim, svc)
        health = await svc.health()
        assert await run.finish() == 0
    assert health["components"]["open_gaps"] == 0
    rows = query(dsn, "SELECT channel, how FROM gaps WHERE state = 'recovered'")
    hows = {(c, h.split(" ")[0]) for c, h in rows}
    assert ("orderbook_delta", "resubscribe") in hows
    assert ("trade", "resubscribe") in hows
    assert ("orderbook_delta", "reconnect") in hows
    # Loss only inside [detected_at, recovered_at] windows; nothing extra anywhere.
    assert_loss_only_inside_gaps(dsn, tmp_path / "truth.jsonl")


async def test_clean_close_and_abort_both_reconnect_only_the_abort_warns(
    gatherer_dsn, tmp_path, caplog: pytest.LogCaptureFixture
):
    """The reconnect supervisor: a clean server close (1001) and an abort both reconnect and
    resubscribe (reconnect gaps recovered); only the abort is a 'connection failed' warning."""
    dsn = gatherer_dsn
    caplog.set_level(logging.INFO, logger="gatherer.connections")
    async with (
        simulator(tmp_path, markets=10) as sim,
        gatherer(config_data(sim, dsn, tmp_path, connections=1)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        conn = svc.manager.connections[0]  # type: ignore[union-attr]
        failed = "connection failed or lost"
        clean = "ws0: the server closed the connection (code 1001)"
        for mode, warned in (("close", False), ("abort", True)):
            caplog.clear()
            connects = conn.connects
            await admin(sim, "POST", "drop", {"mode": mode})
            reconnected = functools.partial(lambda n: conn.connects > n, connects)
            await wait_for(reconnected, 20, f"a reconnect after {mode}")
            await wait_for(lambda: subscribed(svc), 30, f"resubscribed after {mode}")
            messages = [r.getMessage() for r in caplog.records]
            assert any(failed in m for m in messages) is warned, (mode, messages)
            assert (clean in messages) is not warned, (mode, messages)
            assert any("reconnected, resubscribing" in m for m in messages), messages
        await wait_for(
            lambda: query(dsn, "SELECT count(*) FROM gaps WHERE state = 'recovered'")[0][0] >= 2,
            30,
            "the reconnect gaps to recover",
        )
        assert await run.finish() == 0
    rows = query(dsn, "SELECT state, how FROM gaps")
    assert rows.count(("recovered", "reconnect")) >= 2


async def test_rest_429_burst_and_quiet_markets(gatherer_dsn, tmp_path):
    """A 429 burst at start is retried through the bucket; silence never kills a connection."""
    dsn = gatherer_dsn
    async with simulator(tmp_path, markets=30) as sim:
        await admin(sim, "POST", "rest_faults", {"status": 429, "count": 8})
        async with gatherer(config_data(sim, dsn, tmp_path, snapshot_interval_s=1)) as run:
            svc = run.service
            await wait_for(lambda: subscribed(svc), 60, "all subscriptions despite 429s")
            stats = await admin(sim, "GET", "stats")
            assert stats["rest_faults_served"] >= 8
            # Eight 429s outlast the REST client's eight attempts: the registry's Supervisor
            # retried the initial load.
            retried = svc.metrics.rest_errors.labels("g1", "registry")._value.get()  # type: ignore[attr-defined]
            assert retried >= 1
            open_now = {
                m.ticker
                for m in sim.exchange.market_list
                if m.status_filter in {"open", "unopened"}
            }
            assert set(svc.registry.markets) == open_now  # type: ignore[union-attr]
            connects = [c.connects for c in svc.manager.connections]  # type: ignore[union-attr]
            frames = [c.frames for c in svc.manager.connections]  # type: ignore[union-attr]
            # The exchange is paused: no data for several ping periods (2 s) and timeouts (5 s);
            # the server's heartbeat pings and our pings keep every connection up.
            poller = svc.poller
            assert poller is not None
            start = poller.passes
            await wait_for(lambda: poller.passes >= start + 7, 30, "seven silent seconds")
            assert [c.connects for c in svc.manager.connections] == connects  # type: ignore[union-attr]
            assert all(c.up for c in svc.manager.connections)  # type: ignore[union-attr]
            assert [c.frames for c in svc.manager.connections] == frames  # type: ignore[union-attr]
            assert await run.finish() == 0
    assert query(dsn, "SELECT count(*) FROM gaps")[0][0] == 0


async def test_dead_peer_detected_by_ping_timeout(gatherer_dsn, tmp_path):
    """A peer that stops answering pings is dropped by ping/pong liveness and reconnected."""
    dsn = gatherer_dsn
    async with (
        simulator(tmp_path, markets=10) as sim,
        gatherer(config_data(sim, dsn, tmp_path, connections=1)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        conn = svc.manager.connections[0]  # type: ignore[union-attr]
        connects = conn.connects
        (sim_conn,) = (await admin(sim, "GET", "connections"))["connections"]
        await admin(sim, "POST", "pings", {"conn": sim_conn["id"], "enabled": False})
        # ping_interval_s=2, ping_timeout_s=5 in config_data: a dead peer is seen within ~7 s.
        await wait_for(lambda: conn.connects > connects, 20, "a reconnect after missed pongs")
        await wait_for(lambda: subscribed(svc), 30, "resubscribed")
        assert await run.finish() == 0
    rows = query(dsn, "SELECT state, how FROM gaps ORDER BY state")
    assert ("recovered", "reconnect") in rows


async def test_market_limit_error_26_splits_subscriptions(gatherer_dsn, tmp_path):
    """The exchange caps markets per subscription below ours: every market still ends up in
    exactly one order-book subscription, and the capture is exact."""
    dsn = gatherer_dsn
    async with (
        simulator(tmp_path, markets=30, max_markets_per_sub=4, rate=600.0) as sim,
        gatherer(config_data(sim, dsn, tmp_path, markets_per_subscription=10)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 60, "all subscriptions within the cap")
        placed = [
            t
            for c in sim.ws.connections.values()
            for s in c.session.subs.values()
            if s.channel == "orderbook_delta" and s.tickers
            for t in s.tickers
        ]
        assert len(placed) == len(set(placed)) == len(svc.registry.markets)  # type: ignore[union-attr]
        assert all(
            len(s.tickers or ()) <= 4
            for c in sim.ws.connections.values()
            for s in c.session.subs.values()
        )
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 1500, 30, "traffic")
        await quiesce(sim, svc)
        assert await run.finish() == 0
    for table, diff in compare(dsn, tmp_path / "truth.jsonl").items():
        assert diff.exact, (table, diff.missing, diff.extra)
