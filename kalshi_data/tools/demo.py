"""``kalshi-data demo`` (``make demo``): a whole local cluster, live, then a truth check.

Starts, under a work folder (default ``.demo/``): four PostgreSQL clusters (production and one
per gatherer, each with its own system identifier), the exchange simulator, three gatherers and
the deduplicator, each a real process with its own config file and log (the cluster is
:mod:`kalshi_data.testing.cluster`'s, which the tests drive too). A live terminal view shows
rates, lag, duplicates and gaps per gatherer, with the health and metrics URLs. Ctrl-C (or
``--duration S``) stops the simulator first, lets the deduplicator drain, stops everything in
order, and prints a summary comparing production with the simulator's truth file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from kalshi_data.testing.cluster import (
    LocalCluster,
    Service,
    admin,
    python,
    setup_databases,
    start_dedup,
    start_gatherers,
    start_simulator,
    wait_drained,
)
from kalshi_data.testing.truth import compare
from kalshi_data.tools.users import create_user

console = Console(stderr=True)


#: The demo audits one-minute windows, 20 s after they end (production: hours, docs/audit.md).
AUDIT_WINDOW_S = 60


def _setup_audit(demo: LocalCluster) -> Path:
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


def _run_audit(
    demo: LocalCluster, cfg: Path, *, now: float | None = None
) -> subprocess.Popen[bytes]:
    """One ``kalshi-data audit`` run in the background (its log in logs/audit.log)."""
    argv = [python(), "-m", "kalshi_data.cli", "audit", "--config", str(cfg)]
    if now is not None:
        argv += ["--now", str(now)]
    with (demo.workdir / "logs" / "audit.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)


def _audit_totals(demo: LocalCluster) -> dict[str, float]:
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


def _dedup_row(svc: Service, prev: dict[str, dict[str, float]], dt: float) -> list[str]:
    m, health = svc.metrics(), svc.health()
    rows = m.get("dedup_rows_written_total", 0.0)
    rate = (rows - prev.get(svc.name, {}).get("rows", rows)) / max(dt, 1e-6)
    prev.setdefault(svc.name, {})["rows"] = rows
    dup = m.get('dedup_duplicate_ratio|{"table": "orderbook_deltas"}', 0.0)
    role = f"deduplicator ({health.get('role', '?')})"
    status = health.get("status", "down")
    return [role, status, f"{rate:,.0f} rows", f"{rows:,.0f}", "", "", "", f"dup ratio {dup:.2f}"]


def _gatherer_row(
    svc: Service, lag: float | None, prev: dict[str, dict[str, float]], dt: float
) -> list[str]:
    m = svc.metrics()
    msgs = m.get("gatherer_messages_total", 0.0)
    rate = (msgs - prev.get(svc.name, {}).get("msgs", msgs)) / max(dt, 1e-6)
    prev.setdefault(svc.name, {})["msgs"] = msgs
    return [
        svc.name,
        svc.health().get("status", "down"),
        f"{rate:,.0f}",
        f"{m.get('gatherer_rows_written_total', 0):,.0f}",
        f"{m.get('gatherer_gaps_total', 0):.0f}",
        f"{m.get('gatherer_dead_letters_total', 0):.0f}",
        f"{m.get('gatherer_spool_bytes', 0):,.0f}",
        "-" if lag is None else f"{lag:.1f}",
    ]


def _view(demo: LocalCluster, prev: dict[str, dict[str, float]], dt: float) -> Table:
    table = Table(title=f"kalshi-data demo — {time.monotonic() - demo.started_at:.0f} s")
    for col in ("service", "status", "msgs/s", "rows", "gaps", "dead letters", "spool B", "lag s"):
        table.add_column(col, justify="right" if col != "service" else "left")
    dedup = demo.service("deduplicator")
    lags = {k: v.get("max_lag_seconds") for k, v in dedup.health().get("gatherers", {}).items()}
    for svc in demo.services:
        if svc is dedup:
            table.add_row(*_dedup_row(svc, prev, dt))
        elif svc.metrics_url is not None:
            table.add_row(*_gatherer_row(svc, lags.get(svc.name), prev, dt))
    table.caption = f"trade audit (1-min windows): {_audit_cell(_audit_totals(demo))}"
    return table


def _admin_post(demo: LocalCluster, path: str) -> None:
    """POST a simulator admin call (pause, truth_flush ...); best effort."""
    with contextlib.suppress(Exception):
        admin(demo, path, {})


def _summary(demo: LocalCluster, since_us: int, until_us: int) -> bool:
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


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kalshi-data demo", description=__doc__)
    parser.add_argument("--workdir", default=".demo", help="folder for clusters, configs, logs")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    parser.add_argument("--markets", type=int, default=300)
    parser.add_argument("--rate", type=float, default=400, help="simulator messages/s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gatherers", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before comparing")
    return parser.parse_args(argv)


def _start(demo: LocalCluster, args: argparse.Namespace) -> Path:
    """Every process of the cluster, then the audit's config (returned)."""
    console.print("[bold]starting PostgreSQL clusters[/] (production + one per gatherer)")
    prod_dsn, gatherers = setup_databases(demo, args.gatherers)
    start_simulator(demo, seed=args.seed, markets=args.markets, rate=args.rate)
    start_gatherers(demo, gatherers)
    start_dedup(demo, prod_dsn, gatherers)
    audit_cfg = _setup_audit(demo)
    demo.started_at = time.monotonic()
    info = demo.sim_info
    console.print(f"simulator REST {info.get('rest_url')}  admin {info.get('admin_url')}")
    for svc in demo.services:
        if svc.health_url:
            console.print(f"  {svc.name:13} health {svc.health_url}  metrics {svc.metrics_url}")
    console.print(f"logs and configs in {demo.workdir}; Ctrl-C stops everything")
    return audit_cfg


@dataclass
class _Stop:
    """Set by SIGINT/SIGTERM: the live loop ends and the demo winds down."""

    requested: bool = False

    def __call__(self, _sig: int, _frame: object) -> None:
        self.requested = True


def _live(
    demo: LocalCluster, args: argparse.Namespace, audit_cfg: Path, stop: _Stop
) -> subprocess.Popen[bytes] | None:
    """The live view until ``--duration``, a signal or a dead process; audits in the
    background every 20 s; returns the audit run still going, if any."""
    prev: dict[str, dict[str, float]] = {}
    last = time.monotonic()
    audit: subprocess.Popen[bytes] | None = None
    next_audit = time.monotonic() + 10
    with Live(console=console, refresh_per_second=2) as live:
        while not stop.requested:
            if args.duration and time.monotonic() - demo.started_at >= args.duration:
                break
            dead = [s.name for s in demo.services if s.proc and s.proc.poll() is not None]
            if dead:
                console.print(f"[red]stopped unexpectedly: {dead}; see {demo.workdir / 'logs'}")
                break
            now = time.monotonic()
            if now >= next_audit and (audit is None or audit.poll() is not None):
                audit = _run_audit(demo, audit_cfg)  # closed 1-min windows, in the background
                next_audit = now + 20
            live.update(_view(demo, prev, now - last))
            last = now
            time.sleep(1.0)
    return audit


def _wind_down(demo: LocalCluster, audit_cfg: Path, audit: subprocess.Popen[bytes] | None) -> None:
    """Pause the simulator, let the deduplicator drain, audit every window, stop the
    simulator and drain again."""
    console.print("pausing the simulator, letting the deduplicator drain, auditing …")
    _admin_post(demo, "pause")
    wait_drained(demo, 60)
    if audit is not None:
        audit.wait(120)
    # The simulator no longer trades: every window up to now can be closed and audited.
    _run_audit(demo, audit_cfg, now=time.time() + AUDIT_WINDOW_S + 21).wait(300)
    demo.service("simulator").stop()
    wait_drained(demo, 60)


def _stop_all(demo: LocalCluster) -> None:
    codes = demo.stop(destroy=os.environ.get("KALSHI_DATA_DEMO_KEEP") != "1")
    for svc in demo.services:
        code = codes.get(svc.name)
        if code not in (0, None, -signal.SIGTERM):
            console.print(f"{svc.name} exited with {code}; see {svc.log}")


def main(argv: list[str]) -> int:
    """Run the demo; exit 0 when production matched the truth, 1 otherwise."""
    args = _parse(argv)
    workdir = Path(args.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "logs").mkdir(parents=True)
    demo = LocalCluster(workdir)
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        audit_cfg = _start(demo, args)
        since_us = int((time.time() + args.warmup) * 1e6)
        audit = _live(demo, args, audit_cfg, stop)
        until_us = int(time.time() * 1e6)
        _wind_down(demo, audit_cfg, audit)
        if until_us <= since_us:
            console.print("ran too briefly to compare (shorter than the warm-up)")
            return 0
        return 0 if _summary(demo, since_us, until_us) else 1
    finally:
        _stop_all(demo)
