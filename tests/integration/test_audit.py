"""The trade audit against real processes: a simulator, three gatherers, the deduplicator and
production clusters; every gatherer misses the same trades, on both sides of the exchange's
historical cutoff (set mid-run), the audit finds and backfills them from ``/historical/trades``
and ``/markets/trades``, and production then equals the simulator's truth. Also: an exchange
outage and 429 bursts leave the window pending, a backfilled trade later merged from a gatherer
stays one row, a second audit writes nothing, coverage matches the truth, and ``status`` on a
healthy and a degraded cluster."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml

from kalshi_data.testing import cluster as lc
from kalshi_data.testing.truth import database_identities, diff, load_truth
from kalshi_data.tools.users import create_user

WINDOW_S = 60


def _admin(info: dict[str, Any], path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"{info['admin_url']}/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _trades_emitted(info: dict[str, Any]) -> int:
    return int(_admin(info, "stats")["events"].get("trade", 0))


def _truth_trades(path: Path, skip_lines: int = 0) -> dict[str, tuple[str, int]]:
    """trade id -> (ticker, ts_ms) of every trade line after the first ``skip_lines``."""
    out = {}
    with path.open("rb") as f:
        for n, line in enumerate(f):
            obj = orjson.loads(line)
            if n >= skip_lines and obj["type"] == "trade":
                m = obj["msg"]
                out[m["trade_id"]] = (m["market_ticker"], int(m["ts_ms"]))
    return out


def _ids(dsn: str, where: str = "true") -> Counter[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT trade_id::text FROM trades WHERE {where}".encode()).fetchall()
    return Counter(r[0] for r in rows)


def _cli(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kalshi_data.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _windows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT window_start, status, exchange_trades, live_trades, backfilled, "
            "missing_after, attempts, last_error FROM audit_windows ORDER BY window_start"
        ).fetchall()


def test_audit_backfills_what_every_gatherer_missed(tmp_path: Path) -> None:
    """Withheld trades reach no connection: the audit finds exactly the trades production lacks,
    backfills them, survives an outage and 429s, and production then equals the truth."""
    demo = lc.LocalCluster(Path(tempfile.mkdtemp(prefix="kd-audit-")))
    (demo.workdir / "logs").mkdir(parents=True)
    try:
        prod_dsn, gatherers = lc.setup_databases(demo, 3)
        lc.start_simulator(demo, seed=11, markets=60, rate=300)
        info = demo.sim_info
        lc.start_gatherers(demo, gatherers)

        def all_subscribed() -> bool:
            conns = _admin(info, "connections")["connections"]
            return sum(1 for c in conns for s in c["sids"] if s["channel"] == "trade") >= 3

        _wait(all_subscribed, 60, "three trade subscriptions")
        cut = int(_admin(info, "truth_flush", {})["truth_lines"])
        dedup = lc.start_dedup(demo, prod_dsn, gatherers)
        prod = demo.clusters["production"].dsn("kalshi")
        audit_pw = secrets.token_urlsafe(12)
        create_user(prod, "auditor", "kd_audit", audit_pw)
        textfile = tmp_path / "audit.prom"
        cfg = {
            "production": {"dsn": demo.clusters["production"].dsn("kalshi", "kd_audit", audit_pw)},
            "kalshi": {
                "rest_url": info["rest_url"],
                "rate_per_s": 10,
                "burst": 10,
                "max_attempts": 3,
                "backoff_base_s": 0.05,
                "backoff_cap_s": 0.2,
            },
            "window_s": WINDOW_S,
            "settle_s": 0,
            "lookback_s": 900,
            "page_limit": 25,
            "metrics_textfile": str(textfile),
            "status": {
                "gatherers": [
                    {"id": s.name, "health_url": s.health_url}
                    for s in demo.services
                    if s.name.startswith("g")
                ],
                "deduplicators": [{"id": "dedup-a", "health_url": dedup.health_url}],
            },
        }
        cfg_path = tmp_path / "audit.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))

        # Live trades, then five that reach no connection, then live ones again.
        t0 = _trades_emitted(info)
        _wait(lambda: _trades_emitted(info) >= t0 + 10, 60, "live trades")
        # Three are withheld before the exchange's historical cutoff, set mid-run (older trades
        # leave /markets/trades for /historical/trades), and two after it.
        _admin(info, "withhold_trades", {"n": 3})
        _wait(lambda: _admin(info, "stats")["trades_withheld"] == 3, 60, "3 withheld trades")
        t1 = _trades_emitted(info)
        _wait(lambda: _trades_emitted(info) >= t1 + 10, 60, "more live trades")
        cutoff_us = int(
            _admin(info, "historical_cutoff", {"ts": time.time()})["historical_cutoff_us"]
        )
        t1 = _trades_emitted(info)
        _wait(lambda: _trades_emitted(info) >= t1 + 5, 60, "live trades after the cutoff")
        _admin(info, "withhold_trades", {"n": 2})
        _wait(lambda: _admin(info, "stats")["trades_withheld"] == 5, 60, "5 withheld trades")
        t1 = _trades_emitted(info)
        _wait(lambda: _trades_emitted(info) >= t1 + 10, 60, "more live trades")
        lc.wait_drained(demo, 60)
        # The deduplicator stops: later trades sit in the gatherer databases only (as they would
        # in a spool), so the audit backfills them first and the merge meets them afterwards.
        dedup.stop()
        t2 = _trades_emitted(info)
        _wait(lambda: _trades_emitted(info) >= t2 + 10, 60, "trades while dedup is down")
        _admin(info, "pause", {})
        _admin(info, "truth_flush", {})
        truth_path = demo.workdir / "truth.jsonl"
        truth = _truth_trades(truth_path)
        after_cut = set(_truth_trades(truth_path, cut))
        g_dsns = [demo.clusters[g["id"]].dsn("kalshi_ts") for g in gatherers]

        def gatherers_caught_up() -> bool:
            held = [after_cut - set(_ids(dsn)) for dsn in g_dsns]
            return all(h == held[0] for h in held) and len(held[0]) == 5

        _wait(gatherers_caught_up, 60, "every gatherer to hold all but the 5 withheld trades")
        union = set().union(*(set(_ids(dsn)) for dsn in g_dsns))
        withheld = after_cut - union
        before = _ids(prod)
        assert withheld.isdisjoint(before)
        # The audit must read both sources to find them all.
        assert sorted(truth[t][1] * 1000 < cutoff_us for t in withheld) == [False] * 2 + [True] * 3

        # An exchange outage (every attempt answers 503): the window stays pending.
        _admin(info, "rest_faults", {"status": 503, "count": 3})
        rc, out, err = _cli("audit", "--config", str(cfg_path), "--now", str(time.time() + 120))
        assert rc == 1, (out, err)
        rows = _windows(prod)
        assert [r[1] for r in rows] == ["pending"], rows
        assert rows[0][6] == 1
        assert "503" in (rows[0][7] or "")
        assert _ids(prod) == before

        # A 429 burst shorter than the retry budget: the run completes.
        _admin(info, "rest_faults", {"status": 429, "count": 2})
        now = time.time() + 120
        rc, out, err = _cli("audit", "--config", str(cfg_path), "--now", str(now))
        assert rc == 0, (out, err)
        report = json.loads(out)
        assert report["complete"]
        assert report["planned"] >= 2
        backfilled = set(_ids(prod, "gatherer_id = 'rest_backfill'"))
        assert backfilled == set(truth) - set(before)  # exactly what production lacked
        assert withheld <= backfilled
        assert (backfilled & after_cut) - union == withheld  # all gatherers missed: found
        after_audit = _ids(prod)
        assert set(after_audit) == set(truth)
        assert max(after_audit.values()) == 1
        windows = _windows(prod)
        assert all(w[1] == "done" for w in windows)
        assert sum(w[4] for w in windows) == len(backfilled)
        assert sum(w[2] for w in windows) == len(truth)
        assert sum(w[5] for w in windows) == 0
        prom = textfile.read_text()
        assert f"audit_trades_backfilled_total {len(backfilled)}" in prom
        assert f"audit_trades_missing_live_total {len(backfilled)}" in prom

        # Coverage rows match the truth per window and market.
        want: Counter[tuple[int, str]] = Counter(
            ((ts_ms // 1000) // WINDOW_S * WINDOW_S, ticker) for ticker, ts_ms in truth.values()
        )
        with psycopg.connect(prod) as conn:
            got = conn.execute(
                "SELECT extract(epoch FROM window_start)::bigint, ticker, exchange_trades, "
                "live_trades, backfilled, missing_after FROM coverage WHERE exchange_trades > 0"
            ).fetchall()
        assert Counter({(int(r[0]), r[1]): int(r[2]) for r in got}) == want
        assert all(r[2] == r[3] + r[4] and r[5] == 0 for r in got)
        assert sum(r[4] for r in got) == len(backfilled)

        # The merge resumes and meets the backfilled copies: still one row each, same provenance.
        dedup.start()
        lc.wait_drained(demo, 90)
        replayed = backfilled & union
        assert replayed, "no backfilled trade was also held by a gatherer"

        def merged() -> bool:
            with psycopg.connect(prod) as conn:
                n = conn.execute(
                    "SELECT sum(rows_read) FROM sync_cursors WHERE table_name = 'trades'"
                ).fetchone()
            return n is not None and n[0] is not None and int(n[0]) >= len(union)

        _wait(merged, 90, "the deduplicator to read every gatherer's trades")
        final = _ids(prod)
        assert max(final.values()) == 1
        assert set(final) == set(truth)
        assert set(_ids(prod, "gatherer_id = 'rest_backfill'")) == backfilled
        report_t = diff(load_truth(truth_path), database_identities(prod))["trades"]
        assert report_t.exact, (report_t.missing, report_t.extra)

        # A second audit plans nothing and writes nothing; a re-audit finds nothing new.
        rc, out, _ = _cli("audit", "--config", str(cfg_path), "--now", str(now))
        assert rc == 0
        assert json.loads(out)["planned"] == 0
        since = str(min(ts for _, ts in truth.values()) / 1000)
        rc, out, err = _cli("audit", "--config", str(cfg_path), "--now", str(now), "--since", since)
        assert rc == 0, (out, err)
        again = json.loads(out)["windows"]
        assert sum(w["backfilled"] for w in again) == len(backfilled)
        assert sum(w["exchange_trades"] for w in again) == len(truth)
        assert _ids(prod) == final
        assert [w[:6] for w in _windows(prod)] == [w[:6] for w in windows]

        rc, out, _ = _cli("coverage", "--config", str(cfg_path), "--day", "today")
        assert rc == 0
        assert "total" in out

        # status: healthy with everything up, then degraded with one gatherer gone.
        _admin(info, "resume", {})
        rc, out, err = _cli("status", "--config", str(cfg_path), "--json", "--now", str(now))
        doc = json.loads(out)
        assert rc == 0, doc
        assert doc["healthy"]
        assert set(doc["gatherers"]) == {"g1", "g2", "g3"}
        assert doc["deduplicators"]["dedup-a"]["role"] == "leader"
        assert doc["production"]["reachable"]
        assert doc["audit"]["last_window"]["missing_after"] == 0
        g3 = next(s for s in demo.services if s.name == "g3")
        g3.stop()
        rc, out, _ = _cli("status", "--config", str(cfg_path), "--json", "--now", str(now))
        doc = json.loads(out)
        assert rc == 1
        assert not doc["healthy"]
        assert doc["gatherers"]["g3"]["status"] == "down"
        assert any("g3" in p for p in doc["problems"])
        rc, out, _ = _cli("status", "--config", str(cfg_path), "--now", str(now))
        assert rc == 1
        assert "NOT HEALTHY" in out
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
