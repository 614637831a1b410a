"""The whole pipeline as real processes: each gatherer loses different messages, the
deduplicator is killed mid-stream, and production still equals the simulator's truth."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kalshi_data.testing import cluster as lc
from kalshi_data.testing.truth import database_identities, diff, load_truth


def _metric(svc: lc.Service, name: str) -> float:
    return svc.metrics().get(name, 0.0)


def _sub(conns: list[dict[str, Any]], ids: set[int], channel: str) -> tuple[int, int]:
    for c in conns:
        if c["id"] in ids:
            for s in c["sids"]:
                if s["channel"] == channel:
                    return int(c["id"]), int(s["sid"])
    raise AssertionError(f"no {channel} subscription among connections {ids}")


def _delivered(cluster: lc.LocalCluster, conn_sids: list[tuple[int, int]]) -> list[int]:
    """Frames the simulator delivered on each (connection, sid)."""
    by_key = {
        (c["id"], s["sid"]): int(s["delivered"])
        for c in lc.sim_connections(cluster)
        for s in c["sids"]
    }
    return [by_key.get(k, 0) for k in conn_sids]


def _traffic_flowed(cluster: lc.LocalCluster, conn_sids: list[tuple[int, int]], n: int) -> None:
    """Wait until at least ``n`` more frames went out on every one of ``conn_sids``."""
    start = _delivered(cluster, conn_sids)
    lc.wait_for(
        lambda: all(b - a >= n for a, b in zip(start, _delivered(cluster, conn_sids), strict=True)),
        30,
        f"{n} frames on each of {conn_sids}",
    )


def _events(cluster: lc.LocalCluster, kind: str | None = None) -> Any:
    """The simulator's count of events emitted, by frame type (or of one type)."""
    events = {"orderbook_delta": 0, "trade": 0, **lc.admin(cluster, "stats")["events"]}
    return events if kind is None else int(events.get(kind, 0))


def _rows_written(cluster: lc.LocalCluster) -> float:
    return sum(
        _metric(s, "gatherer_rows_written_total") for s in cluster.gatherer_services().values()
    )


@pytest.mark.both_backends
def test_different_holes_and_a_killed_deduplicator(gatherer_backend: str) -> None:
    """Gap on g1, dropped connection on g2, error 25 + malformed frame on g3, kill -9 of the
    deduplicator: production equals the truth file, row for row, nothing doubled (gatherers on
    plain PostgreSQL, then on TimescaleDB)."""
    # Not tmp_path: a concurrent pytest session may prune old basetemp folders under it.
    cluster = lc.LocalCluster(Path(tempfile.mkdtemp(prefix="kd-pipeline-")))
    (cluster.workdir / "logs").mkdir(parents=True)
    try:
        prod_dsn, gatherers = lc.setup_databases(
            cluster, 3, timescaledb=gatherer_backend == "timescaledb"
        )
        lc.start_simulator(cluster, seed=5, markets=120, rate=600)
        owned: dict[str, set[int]] = {}
        for g in gatherers:
            before = {c["id"] for c in lc.sim_connections(cluster)}
            (svc,) = lc.start_gatherers(cluster, [g])

            def up(svc: lc.Service = svc, before: set[int] = before) -> bool:
                # Every channel, and every market of the registry in an order-book batch.
                markets = svc.health().get("components", {}).get("markets", 0)
                new = {c["id"] for c in lc.sim_connections(cluster)} - before
                return markets > 0 and lc.subscribed(cluster, new, markets)

            lc.wait_for(up, 60, f"{g['id']} subscribed to every market")
            owned[g["id"]] = {c["id"] for c in lc.sim_connections(cluster)} - before
        dedup = lc.start_dedup(cluster, prod_dsn, gatherers)
        gsvc = cluster.gatherer_services()
        prod = cluster.clusters["production"].dsn("kalshi")

        # The cut: pause activity, wait until production has everything, snapshot it.
        lc.admin(cluster, "pause", {})
        cut = int(lc.admin(cluster, "truth_flush", {})["truth_lines"])
        at_cut = _events(cluster)
        lc.wait_settled(cluster, 90)
        before_rows = database_identities(prod)
        lc.admin(cluster, "resume", {})

        conns = lc.sim_connections(cluster)
        c1, ob1 = _sub(conns, owned["g1"], "orderbook_delta")
        c2, ob2 = _sub(conns, owned["g2"], "orderbook_delta")
        c3, tr3 = _sub(conns, owned["g3"], "trade")
        _, ob3 = _sub(conns, owned["g3"], "orderbook_delta")
        _traffic_flowed(cluster, [(c1, ob1), (c2, ob2), (c3, ob3)], 50)
        lc.admin(cluster, "skip_seq", {"conn": c1, "sid": ob1, "n": 5})
        lc.admin(cluster, "drop", {"conn": c2})
        lc.admin(cluster, "sub_error", {"conn": c3, "sid": tr3, "code": 25})
        lc.admin(cluster, "malformed", {"conn": c3})
        # Each fault reached its gatherer while the deduplicator was still running.
        lc.wait_for(lambda: _metric(gsvc["g1"], "gatherer_gaps_total") >= 1, 30, "g1's gap")
        lc.wait_for(
            lambda: _metric(gsvc["g2"], "gatherer_reconnects_total") >= 1, 30, "g2's reconnect"
        )
        lc.wait_for(
            lambda: _metric(gsvc["g3"], "gatherer_dead_letters_total") >= 1, 30, "g3's dead letter"
        )
        assert dedup.proc is not None
        dedup.proc.send_signal(signal.SIGKILL)
        dedup.proc.wait(10)
        # The gatherers keep writing while the deduplicator is down: it must catch up.
        written = _rows_written(cluster)
        lc.wait_for(lambda: _rows_written(cluster) >= written + 200, 30, "rows written meanwhile")
        dedup.start()
        assert lc.wait_drained(cluster, 90), "the restarted deduplicator did not catch up live"
        # Enough traffic after the cut for the comparison to mean something (asserted below).
        lc.wait_for(
            lambda: (
                _events(cluster, "orderbook_delta") >= at_cut["orderbook_delta"] + 1500
                and _events(cluster, "trade") >= at_cut["trade"] + 80
            ),
            60,
            "1,500 deltas and 80 trades since the cut",
        )

        lc.admin(cluster, "pause", {})
        lc.admin(cluster, "truth_flush", {})
        lc.wait_settled(cluster, 90)

        truth = load_truth(cluster.workdir / "truth.jsonl", skip_lines=cut)
        after_rows = database_identities(prod)
        new_rows = {t: after_rows[t] - before_rows[t] for t in after_rows}
        report = diff(truth, new_rows)
        for name, r in report.items():
            assert r.exact, (
                f"{name}: {sum(r.missing.values())} missing, {sum(r.extra.values())} extra "
                f"of {r.expected} (e.g. {list(r.missing)[:2]} / {list(r.extra)[:2]})"
            )
        assert report["orderbook_deltas"].expected > 1000
        assert report["trades"].expected > 50
        # The holes were real: g1 itself misses deltas.
        g1_rows = database_identities(cluster.clusters["g1"].dsn("kalshi_ts"))
        g1_missing = truth.tables["orderbook_deltas"] - g1_rows["orderbook_deltas"]
        assert sum(g1_missing.values()) >= 1
        assert sum(Counter(new_rows["trades"]).values()) == report["trades"].expected
    except BaseException:
        for svc in cluster.services:
            print(f"--- {svc.name} log tail ---")
            print(svc.log_tail())
        raise
    finally:
        cluster.stop()
        shutil.rmtree(cluster.workdir, ignore_errors=True)


pytestmark = pytest.mark.timeout(400)
