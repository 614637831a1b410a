"""A whole local cluster as real processes: the harness of the demo, chaos, tests and benchmarks.

PostgreSQL clusters (production and one per gatherer, each migrated and with the project's
roles), the exchange simulator, gatherers and a deduplicator, each a child process with its own
config file and log under one work folder. The ``wait_*`` functions poll the services' health,
metrics and the simulator's admin API until a condition holds (never a fixed sleep), and say
what they waited for when it does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from kalshi_data.errors import KalshiDataError
from kalshi_data.migrate import migrate
from kalshi_data.tables import SYNCED_TABLES
from kalshi_data.testing.pgcluster import PgCluster, free_port
from kalshi_data.tools.users import create_user

#: The WebSocket channels every gatherer subscribes (its connections are up once all four are).
CHANNELS = frozenset({"orderbook_delta", "trade", "ticker", "market_lifecycle_v2"})
#: The databases :func:`setup_databases` creates in production and in each gatherer cluster.
PRODUCTION_DB = "kalshi"
GATHERER_DB = "kalshi_ts"
#: The tables a deduplicator syncs from every gatherer.
SYNCED = frozenset(t.name for t in SYNCED_TABLES)


class ClusterError(KalshiDataError, RuntimeError):
    """A process of the local cluster did not start, or a condition was not reached in time."""


@dataclass
class Service:
    """One child process: a simulator, gatherer or deduplicator."""

    name: str
    argv: list[str]
    log: Path
    health_url: str | None = None
    metrics_url: str | None = None
    #: Added to this process's environment (chaos's fake clock).
    env: dict[str, str] = field(default_factory=dict)
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
            start_new_session=True,  # Ctrl-C reaches the parent only; it stops children in order
            env={**os.environ, **self.env} if self.env else None,
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

    def health(self) -> dict[str, Any]:
        """The service's /health JSON ({} when it does not answer)."""
        try:
            return dict(json.loads(http_get(self.health_url) or "{}"))
        except ValueError:
            return {}

    def metrics(self) -> dict[str, float]:
        """The service's metrics (see :func:`metrics`)."""
        return metrics(self.metrics_url)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the log (for a failing test's output)."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class LocalCluster:
    """Everything started under ``workdir``, so that it can all be stopped."""

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

    def service(self, name: str) -> Service:
        """The (last started) service called ``name``."""
        for svc in reversed(self.services):
            if svc.name == name:
                return svc
        raise KeyError(name)

    def gatherer_services(self) -> dict[str, Service]:
        """The gatherers by id (``g1``, ``g2``...)."""
        return {s.name: s for s in self.services if s.name.startswith("g")}

    def stop(self, *, destroy: bool = True) -> dict[str, int | None]:
        """Stop every service (last started first), then the clusters; returns exit codes.
        The clusters' folders are removed unless ``destroy`` is false."""
        codes = {}
        for svc in reversed(self.services):
            codes[svc.name] = svc.stop()
        for cluster in self.clusters.values():
            with contextlib.suppress(Exception):
                cluster.stop()
        if destroy:
            for cluster in self.clusters.values():
                cluster.destroy()
        return codes


def python() -> str:
    """The interpreter the children run under (this one)."""
    return sys.executable


def setup_databases(
    cluster: LocalCluster,
    n_gatherers: int,
    prod_settings: dict[str, str] | None = None,
    *,
    timescaledb: bool = False,
) -> tuple[str, list[dict[str, str]]]:
    """Clusters, migrations and users; returns the dedup's production DSN file and, per
    gatherer, its id and writer/reader DSN files. With ``timescaledb``, the gatherer clusters
    preload TimescaleDB (production never does)."""
    names = ["production", *[f"g{i + 1}" for i in range(n_gatherers)]]
    for name in names:
        pg = PgCluster(cluster.workdir / "pg" / name)
        if name == "production":
            pg.init(prod_settings)
        else:
            pg.init(timescaledb=timescaledb)
        pg.start()
        cluster.clusters[name] = pg
    prod = cluster.clusters["production"]
    prod.create_database(PRODUCTION_DB)
    migrate(prod.dsn(PRODUCTION_DB), "production")
    dedup_pw = secrets.token_urlsafe(16)
    create_user(prod.dsn(PRODUCTION_DB), "dedup_writer", "kd_dedup", dedup_pw)
    prod_dsn = cluster.secret_file("production-dsn", prod.dsn(PRODUCTION_DB, "kd_dedup", dedup_pw))
    gatherers = []
    for name in names[1:]:
        c = cluster.clusters[name]
        c.create_database(GATHERER_DB)
        migrate(c.dsn(GATHERER_DB), "gatherer")
        wpw, rpw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        create_user(c.dsn(GATHERER_DB), "gatherer_writer", "kd_gatherer", wpw)
        create_user(c.dsn(GATHERER_DB), "dedup_reader", "kd_reader", rpw)
        writer = c.dsn(GATHERER_DB, "kd_gatherer", wpw)
        reader = c.dsn(GATHERER_DB, "kd_reader", rpw)
        gatherers.append(
            {
                "id": name,
                "writer_dsn": str(cluster.secret_file(f"{name}-writer-dsn", writer)),
                "reader_dsn": str(cluster.secret_file(f"{name}-reader-dsn", reader)),
            }
        )
    return str(prod_dsn), gatherers


def start_simulator(cluster: LocalCluster, *, seed: int, markets: int, rate: float) -> Service:
    """Start the simulator (truth file ``truth.jsonl``); its URLs go to ``cluster.sim_info``."""
    sim = Service(
        "simulator",
        [
            python(),
            "-m",
            "simulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--seed",
            str(seed),
            "--markets",
            str(markets),
            "--rate",
            str(rate),
            "--truth",
            str(cluster.workdir / "truth.jsonl"),
            "--workdir",
            str(cluster.workdir / "sim"),
        ],
        cluster.workdir / "logs" / "simulator.log",
    )
    sim.start(stdout_pipe=True)
    cluster.services.append(sim)
    assert sim.proc is not None
    assert sim.proc.stdout is not None
    line = sim.proc.stdout.readline()
    if not line:
        raise ClusterError(f"the simulator did not start: see {sim.log}")
    cluster.sim_info = json.loads(line)
    return sim


def gatherer_config(
    cluster: LocalCluster, gatherer_id: str, writer_dsn_file: str, port: int
) -> dict[str, Any]:
    """A gatherer's config against the cluster's simulator."""
    info = cluster.sim_info
    return {
        "gatherer_id": gatherer_id,
        "kalshi": {
            "rest_url": info["rest_url"],
            "ws_url": info["ws_url"],
            "key_id": info["key_id"],
            "private_key_file": info["private_key_file"],
        },
        # A short flush interval trades a few more, smaller COPYs for freshness.
        "database": {"dsn": f"file:{writer_dsn_file}", "flush_interval_s": 0.01},
        "spool_dir": str(cluster.workdir / "spool" / gatherer_id),
        "http": {"listen": f"127.0.0.1:{port}"},
        "snapshot_interval_s": 60,
        "log_level": "INFO",
    }


def start_service(
    cluster: LocalCluster,
    name: str,
    module: str,
    cfg: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
) -> Service:
    """Write ``cfg`` to ``<name>.yaml`` and start ``python -m <module> --config`` on it; its
    health and metrics are at ``cfg["http"]["listen"]``."""
    path = cluster.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    listen = cfg["http"]["listen"]
    svc = Service(
        name,
        [python(), "-m", module, "--config", str(path)],
        cluster.workdir / "logs" / f"{name}.log",
        health_url=f"http://{listen}/health",
        metrics_url=f"http://{listen}/metrics",
        env=dict(env or {}),
    )
    svc.start()
    cluster.services.append(svc)
    return svc


def start_gatherers(cluster: LocalCluster, gatherers: list[dict[str, str]]) -> list[Service]:
    """Start one gatherer per entry of :func:`setup_databases`'s list."""
    return [
        start_service(
            cluster,
            g["id"],
            "gatherer",
            gatherer_config(cluster, g["id"], g["writer_dsn"], free_port()),
        )
        for g in gatherers
    ]


def start_dedup(
    cluster: LocalCluster, prod_dsn: str, gatherers: list[dict[str, str]], *, name: str = "dedup-a"
) -> Service:
    """Start a deduplicator instance (service name ``deduplicator``) over every gatherer."""
    cfg = {
        "instance_id": name,
        "production": {"dsn": f"file:{prod_dsn}"},
        "gatherers": [{"id": g["id"], "dsn": f"file:{g['reader_dsn']}"} for g in gatherers],
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "poll_interval_s": 0.5,
    }
    return start_service(cluster, "deduplicator", "deduplicator", cfg)


# ------------------------------------------------------------------------------ HTTP probes
def http_get(url: str | None, timeout_s: float = 1.0) -> str | None:
    """The body at ``url``, or None when it does not answer."""
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (loopback only)
            return str(r.read().decode())
    except Exception:
        return None


def metrics(url: str | None) -> dict[str, float]:
    """Sum of each metric family's samples (labels folded), and each sample as
    ``name|{labels as JSON}``; {} when the endpoint does not answer."""
    text = http_get(url)
    out: dict[str, float] = {}
    if text is None:
        return out
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
            out[f"{s.name}|{json.dumps(s.labels, sort_keys=True)}"] = float(s.value)
    return out


def admin(cluster: LocalCluster, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the simulator's admin API: GET without ``body``, POST with it; the JSON answer."""
    url = f"{cluster.sim_info['admin_url']}/{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        url,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        return json.loads(r.read())


def sim_connections(cluster: LocalCluster) -> list[dict[str, Any]]:
    """The simulator's WebSocket connections (id, queued frames, subscriptions)."""
    return list(admin(cluster, "connections")["connections"])


# ------------------------------------------------------------------------------- conditions
def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.2) -> None:
    """Poll ``cond`` until it holds; :class:`ClusterError` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():
            return
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(step_s)


def subscribed(cluster: LocalCluster, conn_ids: set[int], markets: int) -> bool:
    """The connections ``conn_ids`` hold every channel, and order-book subscriptions for at
    least ``markets`` markets (a gatherer adds markets to its order-book batches over time)."""
    conns = [c for c in sim_connections(cluster) if c["id"] in conn_ids]
    channels = {s["channel"] for c in conns for s in c["sids"]}
    book = sum(
        s["markets"] or 0 for c in conns for s in c["sids"] if s["channel"] == "orderbook_delta"
    )
    return channels >= CHANNELS and book >= markets


def drained(cluster: LocalCluster) -> bool:
    """The deduplicator reports no backlog and under 2 s of lag from every gatherer."""
    gatherers = cluster.service("deduplicator").health().get("gatherers", {})
    return bool(gatherers) and all(
        g.get("backlog_rows", 1) == 0 and (g.get("max_lag_seconds") or 0) < 2.0
        for g in gatherers.values()
    )


def wait_drained(cluster: LocalCluster, timeout_s: float) -> bool:
    """Wait until :func:`drained`; False when it was not within ``timeout_s``."""
    try:
        wait_for(lambda: drained(cluster), timeout_s, "the deduplicator to drain", 0.5)
    except ClusterError:
        return False
    return True


def _gatherers_quiet(cluster: LocalCluster, previous: list[float | None]) -> bool:
    """Nothing queued in the simulator or a gatherer, and no gatherer received or wrote
    anything since the last call (``previous`` holds the last counters)."""
    if any(c["queued_frames"] for c in sim_connections(cluster)):
        return False
    counters: list[float | None] = []
    for svc in cluster.gatherer_services().values():
        m = svc.metrics()
        if not m or m.get("gatherer_queue_depth", 0.0) or m.get("gatherer_spool_bytes", 0.0):
            return False
        counters += [m.get("gatherer_messages_total"), m.get("gatherer_rows_written_total")]
    quiet = counters == previous
    previous[:] = counters
    return quiet


def _cursor_gaps(cluster: LocalCluster) -> list[str]:
    """The (gatherer, table) pairs whose newest committed row is beyond the deduplicator's
    cursor in production (read as the clusters' superuser); [] when it merged everything."""
    with psycopg.connect(cluster.clusters["production"].dsn(PRODUCTION_DB)) as conn:
        rows = conn.execute(
            "SELECT gatherer_id, table_name, last_xid::text::bigint, last_id FROM sync_cursors"
        ).fetchall()
    cursors = {(g, t): (int(x), int(i)) for g, t, x, i in rows}
    behind = []
    for gid, pg in cluster.clusters.items():
        if gid == "production":
            continue
        with psycopg.connect(pg.dsn(GATHERER_DB)) as conn:
            for table in sorted(SYNCED):
                newest = conn.execute(
                    sql.SQL(
                        "SELECT ingest_xid::text::bigint, ingest_id FROM {} "
                        "ORDER BY ingest_xid DESC, ingest_id DESC LIMIT 1"
                    ).format(sql.Identifier(table))
                ).fetchone()
                if newest is not None and cursors.get((gid, table), (0, 0)) < tuple(newest):
                    behind.append(f"{gid}.{table}")
    return behind


def wait_settled(cluster: LocalCluster, timeout_s: float) -> None:
    """With the simulator paused: wait until the gatherers have received and written every
    frame sent, then until the deduplicator's cursors in production reached the newest row of
    every gatherer table; and the gatherers wrote nothing meanwhile (else start over).
    For the databases of :func:`setup_databases`."""
    deadline = time.monotonic() + timeout_s
    counters: list[float | None] = []
    while True:
        counters[:] = [None]
        left = max(1.0, deadline - time.monotonic())
        wait_for(lambda: _gatherers_quiet(cluster, counters), left, "the gatherers to go quiet")
        left = max(1.0, deadline - time.monotonic())
        wait_for(lambda: not _cursor_gaps(cluster), left, "the deduplicator to merge it all")
        if _gatherers_quiet(cluster, counters):
            return  # nothing was written while the deduplicator caught up
        if time.monotonic() >= deadline:
            raise ClusterError(f"the gatherers kept writing for {timeout_s:g} s while paused")
