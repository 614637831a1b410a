"""The whole pipeline as real processes: each gatherer loses different messages, the
deduplicator is killed mid-stream, and production still equals the simulator's truth."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kalshi_data.testing.truth import database_identities, diff, load_truth
from kalshi_data.tools import demo as d


def _admin(info: dict[str, Any], path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"{info['admin_url']}/{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _connections(info: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_admin(info, "connections")["connections"])


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _metric(svc: d.Service, name: str) -> float:
    return d._metrics(svc.metrics_url).get(name, 0.0)


def _sub(conns: list[dict[str, Any]], ids: set[int], channel: str) -> tuple[int, int]:
    for c in conns:
        if c["id"] in ids:
            for s in c["sids"]:
                if s["channel"] == channel:
                    return int(c["id"]), int(s["sid"])
    raise AssertionError(f"no {channel} subscription among connections {ids}")


@pytest.mark.both_backends
def test_different_holes_and_a_killed_deduplicator(gatherer_backend: str) -> None:
    """Gap on g1, dropped connection on g2, error 25 + malformed frame on g3, kill -9 of the
    deduplicator: production equals the truth file, row for row, nothing doubled (gatherers on
    plain PostgreSQL, then on TimescaleDB)."""
    # Not tmp_path: a concurrent pytest session may prune old basetemp folders under it.
    demo = d.Demo(Path(tempfile.mkdtemp(prefix="kd-pipeline-")))
    (demo.workdir / "logs").mkdir(parents=True)
    args = argparse.Namespace(seed=5, markets=120, rate=600)
    try:
        prod_dsn, gatherers = d._setup_databases(
            demo, 3, timescaledb=gatherer_backend == "timescaledb"
        )
        d._start_simulator(demo, args)
        info = demo.sim_info
        owned: dict[str, set[int]] = {}
        for g in gatherers:
            before = {c["id"] for c in _connections(info)}
            d._start_gatherers(demo, [g])

            def subscribed(before: set[int] = before) -> bool:
                new = [c for c in _connections(info) if c["id"] not in before]
                chans = {s["channel"] for c in new for s in c["sids"]}
                return {"orderbook_delta", "trade", "ticker", "market_lifecycle_v2"} <= chans

            _wait(subscribed, 60, f"{g['id']} subscribed")
            time.sleep(1.0)  # let every order-book batch subscribe (add_markets)
            owned[g["id"]] = {c["id"] for c in _connections(info)} - before
        dedup = d._start_dedup(demo, prod_dsn, gatherers)
        gsvc = {s.name: s for s in demo.services if s.name.startswith("g")}
        prod = demo.clusters["production"].dsn("kalshi")

        # The cut: pause activity, wait until production has everything, snapshot it.
        _admin(info, "pause", {})
        cut = int(_admin(info, "truth_flush", {})["truth_lines"])
        d._wait_drained(demo, 60)
        time.sleep(1.5)
        d._wait_drained(demo, 30)
        before_rows = database_identities(prod)
        _admin(info, "resume", {})
        time.sleep(3)

        conns = _connections(info)
        c1, ob1 = _sub(conns, owned["g1"], "orderbook_delta")
        _admin(info, "skip_seq", {"conn": c1, "sid": ob1, "n": 5})
        c2, _ = _sub(conns, owned["g2"], "orderbook_delta")
        _admin(info, "drop", {"conn": c2})
        c3, tr3 = _sub(conns, owned["g3"], "trade")
        _admin(info, "sub_error", {"conn": c3, "sid": tr3, "code": 25})
        _admin(info, "malformed", {"conn": c3})
        time.sleep(2)
        assert dedup.proc is not None
        dedup.proc.send_signal(signal.SIGKILL)
        dedup.proc.wait(10)
        time.sleep(2)
        dedup.start()
        time.sleep(6)

        _admin(info, "pause", {})
        _admin(info, "truth_flush", {})
        _wait(lambda: _metric(gsvc["g1"], "gatherer_gaps_total") >= 1, 30, "g1's gap")
        d._wait_drained(demo, 90)
        time.sleep(1.5)
        d._wait_drained(demo, 60)

        truth = load_truth(demo.workdir / "truth.jsonl", skip_lines=cut)
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
        # The faults really happened, and the holes were real: g1 itself misses deltas.
        assert _metric(gsvc["g2"], "gatherer_reconnects_total") >= 1
        assert _metric(gsvc["g3"], "gatherer_dead_letters_total") >= 1
        g1_rows = database_identities(demo.clusters["g1"].dsn("kalshi_ts"))
        g1_missing = truth.tables["orderbook_deltas"] - g1_rows["orderbook_deltas"]
        assert sum(g1_missing.values()) >= 1
        assert sum(Counter(new_rows["trades"]).values()) == report["trades"].expected
    except BaseException:
        for svc in demo.services:
            print(f"--- {svc.name} log tail ---")
            if svc.log.exists():
                print("\n".join(svc.log.read_text().splitlines()[-15:]))
        raise
    finally:
        for svc in reversed(demo.services):
            svc.stop()
        for cluster in demo.clusters.values():
            cluster.destroy()
        shutil.rmtree(demo.workdir, ignore_errors=True)


pytestmark = pytest.mark.timeout(400)
