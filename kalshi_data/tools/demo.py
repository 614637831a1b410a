"""``kalshi-data demo`` (``make demo``): a whole local cluster, live, then a truth check.

Starts, under a work folder (default ``.demo/``): four PostgreSQL clusters (production and one
per gatherer, each with its own system identifier), the exchange simulator, three gatherers and
the deduplicator, each a real process with its own config file and log. A live terminal view
shows rates, lag, duplicates and gaps per gatherer, with the health and metrics URLs. Ctrl-C (or
``--duration S``) stops the simulator first, lets the deduplicator drain, stops everything in
order, and prints a summary comparing production with the simulator's truth file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from kalshi_data.errors import KalshiDataError
from kalshi_data.migrate import migrate
from kalshi_data.testing.pgcluster import PgCluster, free_port
from kalshi_data.testing.truth import compare
from kalshi_data.tools.users import create_user

console = Console(stderr=True)


class DemoError(KalshiDataError, RuntimeError):
    """The demo cannot start one of its processes."""


@dataclass
class Service:
    """One child process of the demo."""

    name: str
    argv: list[str]
    log: Path
    health_url: str | None = None
    metrics_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    def start(self, *, stdout_pipe: bool = False) -> None:
        """Launch (or relaunch), logging to ``log`` (stdout piped when the caller reads it)."""
        if self._out is not None:
            self._out.close()
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE if stdout_pipe else self._out,
            stderr=self._out,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops children in order
        )

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._out is not None:
            self._out.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@dataclass
class Demo:
    """Everything the demo started, so that it can all be stopped."""

    workdir: Path
    clusters: dict[str, PgCluster] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    sim_info: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0

    def secret_file(self, name: str, value: str) -> Path:
        """Write a secret (password, DSN) to a 0600 file; configs reference it as file:..."""
        path = self.workdir / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(value)
        path.chmod(0o600)
        return path


def _python() -> str:
    return sys.executable


def _setup_databases(
    demo: Demo,
    n_gatherers: int,
    prod_settings: dict[str, str] | None = None,
    *,
    timescaledb: bool = False,
) -> tuple[str, list[dict[str, str]]]:
    """Clusters, migrations and users; returns the dedup's production DSN file and gatherer DSNs.
    With ``timescaledb``, the gatherer clusters preload TimescaleDB (production never does)."""
    console.print("[bold]starting PostgreSQL clusters[/] (production + one per gatherer)")
    names = ["production", *[f"g{i + 1}" for i in range(n_gatherers)]]
    for name in names:
        cluster = PgCluster(demo.workdir / "pg" / name)
        if name == "production":
            cluster.init(prod_settings)
        else:
            cluster.init(timescaledb=timescaledb)
        cluster.start()
        demo.clusters[name] = cluster
    prod = demo.clusters["production"]
    prod.create_database("kalshi")
    migrate(prod.dsn("kalshi"), "production")
    dedup_pw = secrets.token_urlsafe(16)
    create_user(prod.dsn("kalshi"), "dedup_writer", "kd_dedup", dedup_pw)
    prod_dsn = demo.secret_file("production-dsn", prod.dsn("kalshi", "kd_dedup", dedup_pw))
    gatherers = []
    for name in names[1:]:
        c = demo.clusters[name]
        c.create_database("kalshi_ts")
        migrate(c.dsn("kalshi_ts"), "gatherer")
        wpw, rpw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        create_user(c.dsn("kalshi_ts"), "gatherer_writer", "kd_gatherer", wpw)
        create_user(c.dsn("kalshi_ts"), "dedup_reader", "kd_reader", rpw)
        gatherers.append(
            {
                "id": name,
                "writer_dsn": str(
                    demo.secret_file(f"{name}-writer-dsn", c.dsn("kalshi_ts", "kd_gatherer", wpw))
                ),
                "reader_dsn": str(
                    demo.secret_file(f"{name}-reader-dsn", c.dsn("kalshi_ts", "kd_reader", rpw))
                ),
            }
        )
    return str(prod_dsn), gatherers


def _start_simulator(demo: Demo, args: argparse.Namespace) -> None:
    sim = Service(
        "simulator",
        [
            _python(),
            "-m",
            "simulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--seed",
            str(args.seed),
            "--markets",
            str(args.markets),
            "--rate",
            str(args.rate),
            "--truth",
            str(demo.workdir / "truth.jsonl"),
            "--workdir",
            str(demo.workdir / "sim"),
        ],
        demo.workdir / "logs" / "simulator.log",
    )
    sim.start(stdout_pipe=True)
    demo.services.append(sim)
    assert sim.proc is not None
    assert sim.proc.stdout is not None
    line = sim.proc.stdout.readline()
    if not line:
        raise DemoError(f"the simulator did not start: see {sim.log}")
    demo.sim_info = json.loads(line)


def _start_gatherers(demo: Demo, gatherers: list[dict[str, str]]) -> None:
    info = demo.sim_info
    for g in gatherers:
        port = free_port()
        cfg = {
            "gatherer_id": g["id"],
            "kalshi": {
                "rest_url": info["rest_url"],
                "ws_url": info["ws_url"],
                "key_id": info["key_id"],
                "private_key_file": info["private_key_file"],
            },
            # A short flush interval trades a few more, smaller COPYs for freshness.
            "database": {"dsn": f"file:{g['writer_dsn']}", "flush_interval_s": 0.01},
            "spool_dir": str(demo.workdir / "spool" / g["id"]),
            "http": {"listen": f"127.0.0.1:{port}"},
            "snapshot_interval_s": 60,
            "log_level": "INFO",
        }
        path = demo.workdir / f"{g['id']}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        svc = Service(
            g["id"],
            [_python(), "-m", "gatherer", "--config", str(path)],
            demo.workdir / "logs" / f"{g['id']}.log",
            health_url=f"http://127.0.0.1:{port}/health",
            metrics_url=f"http://127.0.0.1:{port}/metrics",
        )
        svc.start()
        demo.services.append(svc)


def _start_dedup(demo: Demo, prod_dsn: str, gatherers: list[dict[str, str]]) -> Service:
    port = free_port()
    cfg = {
        "instance_id": "dedup-a",
        "production": {"dsn": f"file:{prod_dsn}"},
        "gatherers": [{"id": g["id"], "dsn": f"file:{g['reader_dsn']}"} for g in gatherers],
        "http": {"listen": f"127.0.0.1:{port}"},
        "poll_interval_s": 0.5,
    }
    path = demo.workdir / "dedup.yaml"
    path.write_text(yaml.safe_dump(cfg))
    svc = Service(
        "deduplicator",
        [_python(), "-m", "deduplicator", "--config", str(path)],
        demo.workdir / "logs" / "deduplicator.log",
        health_url=f"http://127.0.0.1:{port}/health",
        metrics_url=f"http://127.0.0.1:{port}/metrics",
    )
    svc.start()
    demo.services.append(svc)
    return svc


#: The demo audits one-minute windows, 20 s after they end (production: hours, docs/audit.md).
AUDIT_WINDOW_S = 60


def _setup_audit(demo: Demo) -> Path:
    """A kd_auditor login and an audit config (also read by ``kalshi-data status``)."""
    prod = demo.clusters["production"]
    pw = secrets.token_urlsafe(16)
    create_user(prod.dsn("kalshi"), "auditor", "kd_audit", pw)
    dsn = demo.secret_file("audit-dsn", prod.dsn("kalshi", "kd_audit", pw))
    cfg = {
        "production": {"dsn": f"file:{dsn}"},
        "kalshi": {"rest_url": demo.sim_info["rest_url"], "rate_per_s": 5, "burst": 10},
        "window_s": AUDIT_WINDOW_S,
        "settle_s": 20,  # the deduplicator's lag is seconds: audit after it merged the window
        "lookback_s": 3600,
        "metrics_textfile": str(demo.workdir / "audit.prom"),
        "status": {
            "gatherers": [
                {"id": s.name, "health_url": s.health_url}
                for s in demo.services
                if s.name.startswith("g") and s.health_url
            ],
            "deduplicators": [
                {"id": "dedup-a", "health_url": s.health_url}
                for s in demo.services
                if s.name == "deduplicator" and s.health_url
            ],
        },
    }
    path = demo.workdir / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_audit(demo: Demo, cfg: Path, *, now: float | None = None) -> subprocess.Popen[bytes]:
    """One ``kalshi-data audit`` run in the background (its log in logs/audit.log)."""
    argv = [_python(), "-m", "kalshi_data.cli", "audit", "--config", str(cfg)]
    if now is not None:
        argv += ["--now", str(now)]
    with (demo.workdir / "logs" / "audit.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)


def _audit_totals(demo: Demo) -> dict[str, float]:
    """Sums over the audited windows (production read as its superuser, as the demo owns it)."""
    import psycopg  # noqa: PLC0415

    try:
        with psycopg.connect(demo.clusters["production"].dsn("kalshi"), connect_timeout=2) as c:
            row = c.execute(
                "SELECT count(*) FILTER (WHERE w.status = 'done'), "
                "count(*) FILTER (WHERE w.status = 'pending'), "
                "coalesce(sum(exchange_trades), 0), coalesce(sum(live_trades), 0), "
                "coalesce(sum(backfilled), 0), coalesce(sum(missing_after), 0), "
                "(SELECT coalesce(sum(uncovered_gaps), 0) FROM coverage) "
                "FROM audit_windows w"
            ).fetchone()
    except Exception:
        return {}
    keys = ("done", "pending", "exchange", "live", "backfilled", "missing", "uncovered_gaps")
    return dict(zip(keys, (float(v) for v in row), strict=True)) if row else {}


def _audit_cell(totals: dict[str, float]) -> str:
    if not totals or not totals.get("done"):
        return "no window yet"
    live = totals["live"] / totals["exchange"] if totals["exchange"] else 1.0
    return (
        f"{totals['done']:.0f} windows: {totals['exchange']:.0f} trades, "
        f"{live:.1%} live, {totals['backfilled']:.0f} backfilled, {totals['missing']:.0f} missing"
    )


def _get(url: str | None, timeout_s: float = 1.0) -> str | None:
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (loopback only)
            return str(r.read().decode())
    except Exception:
        return None


def _metrics(url: str | None) -> dict[str, float]:
    """Sum of each metric family's samples (labels folded)."""
    text = _get(url)
    out: dict[str, float] = {}
    if text is None:
        return out
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
            out[f"{s.name}|{json.dumps(s.labels, sort_keys=True)}"] = float(s.value)
    return out


def _view(demo: Demo, prev: dict[str, dict[str, float]], dt: float) -> Table:
    table = Table(title=f"kalshi-data demo — {time.monotonic() - demo.started_at:.0f} s")
    for col in ("service", "status", "msgs/s", "rows", "gaps", "dead letters", "spool B", "lag s"):
        table.add_column(col, justify="right" if col != "service" else "left")
    dedup = next(s for s in demo.services if s.name == "deduplicator")
    dedup_health = json.loads(_get(dedup.health_url) or "{}")
    for svc in demo.services:
        if svc.metrics_url is None:
            continue
        m = _metrics(svc.metrics_url)
        health = json.loads(_get(svc.health_url) or "{}")
        status = health.get("status", "down")
        if svc is dedup:
            rows = m.get("dedup_rows_written_total", 0.0)
            rate = (rows - prev.get(svc.name, {}).get("rows", rows)) / max(dt, 1e-6)
            dup = m.get('dedup_duplicate_ratio|{"table": "orderbook_deltas"}', 0.0)
            table.add_row(
                f"deduplicator ({health.get('role', '?')})",
                status,
                f"{rate:,.0f} rows",
                f"{rows:,.0f}",
                "",
                "",
                "",
                f"dup ratio {dup:.2f}",
            )
        else:
            msgs = m.get("gatherer_messages_total", 0.0)
            rate = (msgs - prev.get(svc.name, {}).get("msgs", msgs)) / max(dt, 1e-6)
            lag = dedup_health.get("gatherers", {}).get(svc.name, {}).get("max_lag_seconds")
            table.add_row(
                svc.name,
                status,
                f"{rate:,.0f}",
                f"{m.get('gatherer_rows_written_total', 0):,.0f}",
                f"{m.get('gatherer_gaps_total', 0):.0f}",
                f"{m.get('gatherer_dead_letters_total', 0):.0f}",
                f"{m.get('gatherer_spool_bytes', 0):,.0f}",
                "-" if lag is None else f"{lag:.1f}",
            )
            prev.setdefault(svc.name, {})["msgs"] = msgs
            continue
        prev.setdefault(svc.name, {})["rows"] = rows
    table.caption = f"trade audit (1-min windows): {_audit_cell(_audit_totals(demo))}"
    return table


def _admin_post(demo: Demo, path: str) -> None:
    """POST a simulator admin call (pause, truth_flush ...); best effort."""
    url = f"{demo.sim_info.get('admin_url')}/{path}"
    req = urllib.request.Request(url, data=b"{}", method="POST")  # noqa: S310 (loopback only)
    with contextlib.suppress(Exception), urllib.request.urlopen(req, timeout=5):  # noqa: S310
        pass


def _wait_drained(demo: Demo, timeout_s: float) -> None:
    """Wait until the deduplicator has nothing pending from any gatherer."""
    dedup = next(s for s in demo.services if s.name == "deduplicator")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = json.loads(_get(dedup.health_url) or "{}")
        gatherers = health.get("gatherers", {})
        if gatherers and all(
            g.get("backlog_rows", 1) == 0 and (g.get("max_lag_seconds") or 0) < 2.0
            for g in gatherers.values()
        ):
            return
        time.sleep(0.5)


def _summary(demo: Demo, since_us: int, until_us: int) -> bool:
    truth = demo.workdir / "truth.jsonl"
    report = compare(
        demo.clusters["production"].dsn("kalshi"), truth, since_us=since_us, until_us=until_us
    )
    table = Table(title="production vs the simulator's truth (window all gatherers subscribed)")
    for col in ("table", "truth", "production", "missing", "extra", "exact"):
        table.add_column(col)
    exact = True
    for name, diff in report.items():
        exact &= diff.exact
        table.add_row(
            name,
            str(diff.expected),
            str(diff.found),
            str(sum(diff.missing.values())),
            str(sum(diff.extra.values())),
            "yes" if diff.exact else "NO",
        )
    console.print(table)
    totals = _audit_totals(demo)
    audit = Table(title="trade audit vs the exchange's GET /markets/trades (whole run)")
    for col in ("windows done", "pending", "exchange trades", "live", "backfilled", "missing"):
        audit.add_column(col, justify="right")
    audit.add_column("uncovered book gaps", justify="right")
    if totals:
        audit.add_row(
            *(
                f"{totals[k]:.0f}"
                for k in ("done", "pending", "exchange", "live", "backfilled", "missing")
            ),
            f"{totals['uncovered_gaps']:.0f}",
        )
    console.print(audit)
    return exact and not totals.get("missing")


def main(argv: list[str]) -> int:
    """Run the demo; exit 0 when production matched the truth, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="kalshi-data demo", description=__doc__)
    parser.add_argument("--workdir", default=".demo", help="folder for clusters, configs, logs")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    parser.add_argument("--markets", type=int, default=300)
    parser.add_argument("--rate", type=float, default=400, help="simulator messages/s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gatherers", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before comparing")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "logs").mkdir(parents=True)
    demo = Demo(workdir)
    stopping = False

    def _interrupt(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    ok = False
    try:
        prod_dsn, gatherers = _setup_databases(demo, args.gatherers)
        _start_simulator(demo, args)
        _start_gatherers(demo, gatherers)
        _start_dedup(demo, prod_dsn, gatherers)
        audit_cfg = _setup_audit(demo)
        demo.started_at = time.monotonic()
        console.print(
            f"simulator REST {demo.sim_info.get('rest_url')}  admin "
            f"{demo.sim_info.get('admin_url')}"
        )
        for svc in demo.services:
            if svc.health_url:
                console.print(f"  {svc.name:13} health {svc.health_url}  metrics {svc.metrics_url}")
        console.print(f"logs and configs in {workdir}; Ctrl-C stops everything")
        since_us = int((time.time() + args.warmup) * 1e6)
        prev: dict[str, dict[str, float]] = {}
        last = time.monotonic()
        audit: subprocess.Popen[bytes] | None = None
        next_audit = time.monotonic() + 10
        with Live(console=console, refresh_per_second=2) as live:
            while not stopping:
                if args.duration and time.monotonic() - demo.started_at >= args.duration:
                    break
                dead = [s.name for s in demo.services if s.proc and s.proc.poll() is not None]
                if dead:
                    console.print(f"[red]stopped unexpectedly: {dead}; see {workdir / 'logs'}")
                    break
                now = time.monotonic()
                if now >= next_audit and (audit is None or audit.poll() is not None):
                    audit = _run_audit(demo, audit_cfg)  # closed 1-min windows, in the background
                    next_audit = now + 20
                live.update(_view(demo, prev, now - last))
                last = now
                time.sleep(1.0)
        console.print("pausing the simulator, letting the deduplicator drain, auditing …")
        until_us = int(time.time() * 1e6)
        _admin_post(demo, "pause")
        _wait_drained(demo, 60)
        if audit is not None:
            audit.wait(120)
        # The simulator no longer trades: every window up to now can be closed and audited.
        _run_audit(demo, audit_cfg, now=time.time() + AUDIT_WINDOW_S + 21).wait(300)
        demo.services[0].stop()
        _wait_drained(demo, 60)
        if until_us > since_us:
            ok = _summary(demo, since_us, until_us)
        else:
            console.print("ran too briefly to compare (shorter than the warm-up)")
            ok = True
    finally:
        for svc in reversed(demo.services):
            code = svc.stop()
            if code not in (0, None, -signal.SIGTERM):
                console.print(f"{svc.name} exited with {code}; see {svc.log}")
        for cluster in demo.clusters.values():
            with contextlib.suppress(Exception):
                cluster.stop()
        if os.environ.get("KALSHI_DATA_DEMO_KEEP") != "1":
            for cluster in demo.clusters.values():
                cluster.destroy()
    return 0 if ok else 1
