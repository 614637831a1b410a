"""``kalshi-data status``: is my capture complete and current? One screen, or ``--json``.

Run on the deduplicator host. It reads the configured health endpoints (each gatherer, each
deduplicator instance) and production (the lease, the audit's windows and coverage, open gaps),
and prints one table. Exit code 0 when everything is healthy, 1 when something is degraded or
down (so it can serve as a check), 2 on bad configuration.

Healthy means: every gatherer answers ``/health`` with ``healthy``; one deduplicator leads, and
no instance reports ``unhealthy``; production answers; the newest audited window ended less than
``max_audit_lag_s`` ago, no window is pending past that lag, and no trade is missing after the
backfill; no open order-book gap is uncovered (every other gatherer in a gap on the same markets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from kalshi_data.config import Secret, load_config
from kalshi_data.errors import ConfigError, describe_error
from kalshi_data.jsonlog import redact

#: Open gaps (no recovered row) for which no other gatherer is gap-free on the same markets.
OPEN_UNCOVERED = """
WITH o AS (
    SELECT g.gatherer_id, g.markets, g.detected_at FROM gaps g
    WHERE g.state = 'open' AND NOT EXISTS (
        SELECT 1 FROM gaps r WHERE r.gap_id = g.gap_id AND r.state = 'recovered')
), peers AS (SELECT DISTINCT gatherer_id FROM sync_cursors)
SELECT o.gatherer_id, o.markets, o.detected_at FROM o
WHERE NOT EXISTS (
    SELECT 1 FROM peers p WHERE p.gatherer_id <> o.gatherer_id AND NOT EXISTS (
        SELECT 1 FROM o o2 WHERE o2.gatherer_id = p.gatherer_id AND o2.markets && o.markets))
ORDER BY o.detected_at
"""
LAST_WINDOW = """
SELECT window_start, window_end, exchange_trades, live_trades, backfilled, missing_after
FROM audit_windows WHERE status = 'done' ORDER BY window_end DESC LIMIT 1
"""
AUDIT_TOTALS = """
SELECT count(*) FILTER (WHERE status = 'pending'),
       min(window_start) FILTER (WHERE status = 'pending'),
       coalesce(sum(missing_after) FILTER (WHERE status = 'done'
                AND window_end > now() - make_interval(secs => $1)), 0)
FROM audit_windows
"""
LEASE = "SELECT epoch, holder, extract(epoch FROM now() - renewed_at) FROM dedup_lease"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A service's health endpoint."""

    id: str
    health_url: str


@dataclass(frozen=True, slots=True)
class StatusProduction:
    """Production, read-only (a ``kd_auditor`` or ``kd_analyst`` member)."""

    dsn: Secret
    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """What ``status`` checks (see examples/audit.yaml: the same file serves both)."""

    production: StatusProduction
    gatherers: tuple[Endpoint, ...] = ()
    deduplicators: tuple[Endpoint, ...] = ()
    #: the newest audited window may have ended at most this long ago
    max_audit_lag_s: float = 3 * 3600
    http_timeout_s: float = 3.0


def load(path: str | Path, *, env: Mapping[str, str] | None = None) -> StatusConfig:
    """The ``status:`` section of an audit config (with its ``production``), else the whole file
    as a StatusConfig. ``KALSHI_DATA_PRODUCTION__DSN`` still overrides the DSN."""
    import yaml  # noqa: PLC0415

    raw = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(raw, dict) and "status" in raw:
        section = dict(raw["status"] or {})
        section["production"] = raw.get("production")
        return load_config(StatusConfig, None, data=section, env=env)
    return load_config(StatusConfig, path, env=env)


@dataclass
class Status:
    """The whole answer."""

    healthy: bool = True
    problems: list[str] = field(default_factory=list)
    gatherers: dict[str, Any] = field(default_factory=dict)
    deduplicators: dict[str, Any] = field(default_factory=dict)
    production: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    open_uncovered_gaps: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        """Record a problem (the exit code becomes 1)."""
        self.healthy = False
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "gatherers": self.gatherers,
            "deduplicators": self.deduplicators,
            "production": self.production,
            "audit": self.audit,
            "open_uncovered_gaps": self.open_uncovered_gaps,
        }


def _health(url: str, timeout_s: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (configured URL)
            doc = json.loads(r.read())
    except Exception:
        return None
    return doc if isinstance(doc, dict) else None


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


async def _production(cfg: StatusConfig, st: Status, now_s: float) -> None:
    try:
        conn = await asyncpg.connect(
            cfg.production.dsn.reveal(),
            timeout=cfg.production.connect_timeout_s,
            server_settings={"application_name": "kalshi-status"},
        )
    except Exception as exc:
        st.production = {"reachable": False, "error": redact(type(exc).__name__)}
        st.fail("production unreachable")
        return
    try:
        st.production = {"reachable": True}
        lease = await conn.fetchrow(LEASE)
        if lease is not None:
            st.production["lease"] = {
                "epoch": int(lease[0]),
                "holder": lease[1],
                "renewed_s_ago": None if lease[2] is None else round(float(lease[2]), 1),
            }
        last = await conn.fetchrow(LAST_WINDOW)
        pending, oldest_pending, missing_after = await conn.fetchrow(
            AUDIT_TOTALS, cfg.max_audit_lag_s
        )
        audit: dict[str, Any] = {"pending_windows": int(pending), "missing_after": 0}
        lag = None
        if last is not None:
            lag = now_s - last[1].timestamp()
            audit["last_window"] = {
                "start": _iso(last[0]),
                "end": _iso(last[1]),
                "exchange_trades": int(last[2]),
                "live_trades": int(last[3]),
                "backfilled": int(last[4]),
                "missing_after": int(last[5]),
                "live_coverage": (round(int(last[3]) / int(last[2]), 6) if int(last[2]) else 1.0),
            }
        if oldest_pending is not None:
            lag = max(lag or 0.0, now_s - oldest_pending.timestamp())
        audit["lag_s"] = None if lag is None else round(lag, 1)
        audit["missing_after"] = int(missing_after)
        st.audit = audit
        if lag is None:
            st.fail("no audit window done yet")
        elif lag > cfg.max_audit_lag_s:
            st.fail(f"audit lags {lag:.0f} s (limit {cfg.max_audit_lag_s:.0f} s)")
        if int(missing_after):
            st.fail(f"{int(missing_after)} exchange trades missing after backfill")
        for g, markets, detected in await conn.fetch(OPEN_UNCOVERED):
            st.open_uncovered_gaps.append(
                {"gatherer": g, "markets": list(markets)[:20], "detected_at": _iso(detected)}
            )
        if st.open_uncovered_gaps:
            st.fail(f"{len(st.open_uncovered_gaps)} open order-book gaps no gatherer covers")
    finally:
        await conn.close()


def collect(cfg: StatusConfig, *, now: float | None = None) -> Status:
    """Read every endpoint and production; returns the verdict and the details."""
    now_s = time.time() if now is None else now
    st = Status()
    for g in cfg.gatherers:
        h = _health(g.health_url, cfg.http_timeout_s)
        if h is None:
            st.gatherers[g.id] = {"status": "down"}
            st.fail(f"gatherer {g.id} does not answer")
            continue
        comp = h.get("components", {})
        st.gatherers[g.id] = {
            "status": h.get("status"),
            "connections_up": comp.get("connections", {}).get("up"),
            "connections_total": comp.get("connections", {}).get("total"),
            "database_up": comp.get("database", {}).get("up"),
            "spool_bytes": comp.get("spool_bytes"),
            "last_message_age_s": comp.get("last_message_age_s"),
            "open_gaps": comp.get("open_gaps"),
        }
        if h.get("status") != "healthy":
            st.fail(f"gatherer {g.id} is {h.get('status')}")
    leaders = []
    for d in cfg.deduplicators:
        h = _health(d.health_url, cfg.http_timeout_s)
        if h is None:
            st.deduplicators[d.id] = {"status": "down"}
            st.fail(f"deduplicator {d.id} does not answer")
            continue
        lags = {gid: g.get("max_lag_seconds") for gid, g in (h.get("gatherers") or {}).items()}
        st.deduplicators[d.id] = {
            "status": h.get("status"),
            "role": h.get("role"),
            "epoch": h.get("epoch"),
            "production": h.get("production"),
            "lag_seconds": lags,
        }
        if h.get("role") == "leader":
            leaders.append(d.id)
            for gid, g in (h.get("gatherers") or {}).items():
                st.gatherers.setdefault(gid, {})["sync_lag_s"] = g.get("max_lag_seconds")
                st.gatherers[gid]["backlog_rows"] = g.get("backlog_rows")
        if h.get("status") != "healthy":
            st.fail(f"deduplicator {d.id} is {h.get('status')}")
    if cfg.deduplicators and len(leaders) != 1:
        st.fail(f"{len(leaders)} deduplicator leaders (want 1)")
    asyncio.run(_production(cfg, st, now_s))
    return st


def render(st: Status) -> str:
    """One screen of text."""
    from io import StringIO  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    buf = StringIO()
    con = Console(file=buf, width=110, force_terminal=False)
    verdict = "HEALTHY" if st.healthy else "NOT HEALTHY"
    con.print(f"kalshi-data status: {verdict}")
    t = Table(title="gatherers")
    for col in ("id", "status", "conns", "db", "spool B", "msg age s", "sync lag s", "open gaps"):
        t.add_column(col)
    for gid, g in sorted(st.gatherers.items()):
        t.add_row(
            gid,
            str(g.get("status", "?")),
            f"{g.get('connections_up', '-')}/{g.get('connections_total', '-')}",
            str(g.get("database_up", "-")),
            str(g.get("spool_bytes", "-")),
            str(g.get("last_message_age_s", "-")),
            str(g.get("sync_lag_s", "-")),
            str(g.get("open_gaps", "-")),
        )
    con.print(t)
    for did, d in sorted(st.deduplicators.items()):
        con.print(
            f"deduplicator {did}: {d.get('status')} role={d.get('role')} epoch={d.get('epoch')}"
        )
    lease = st.production.get("lease", {})
    con.print(
        f"production: {'reachable' if st.production.get('reachable') else 'UNREACHABLE'}"
        f"  lease holder={lease.get('holder')} epoch={lease.get('epoch')}"
    )
    last = st.audit.get("last_window")
    if last:
        con.print(
            f"audit: last window {last['start']} .. {last['end']}: {last['exchange_trades']} "
            f"exchange trades, {last['live_trades']} live, {last['backfilled']} backfilled, "
            f"{last['missing_after']} missing; lag {st.audit.get('lag_s')} s, "
            f"{st.audit.get('pending_windows')} pending"
        )
    else:
        con.print("audit: no window done yet")
    con.print(f"open uncovered order-book gaps: {len(st.open_uncovered_gaps)}")
    for p in st.problems:
        con.print(f"  - {p}")
    return buf.getvalue()


def main(argv: list[str]) -> int:
    """``kalshi-data status --config FILE [--json]``."""
    parser = argparse.ArgumentParser(prog="kalshi-data status", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--now", type=float, help="the clock, Unix seconds (tests)")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"kalshi-data status: {describe_error(exc)}", file=sys.stderr)
        return 2
    st = collect(cfg, now=args.now)
    if args.json:
        print(json.dumps(st.as_dict(), indent=2, default=str))
    else:
        print(render(st), end="")
    return 0 if st.healthy else 1
