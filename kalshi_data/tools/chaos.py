"""``kalshi-data chaos``: the whole local cluster under a seeded schedule of mixed faults.

The cluster is the demo's (kalshi_data/tools/demo.py) with what failures need: production has a
synchronous streaming standby, two deduplicator instances (leader and standby) reach every
gatherer database and production through TCP fault proxies (kalshi_data/testing/faultproxy.py),
and the gatherer databases may be TimescaleDB (``--timescaledb``).

The schedule is drawn from ``--seed`` before anything starts (same seed, duration, rate and
faults per minute: the same schedule; its digest is printed). Faults overlap. One constraint
holds at every instant: at most ``gatherers - 1`` gatherers are *impaired* (unable to hear every
message: process killed or stopped, a WebSocket fault on one of its connections, or its spool
refused while its database is down), counting until it has recovered plus a margin. Database,
network, deduplicator and production faults do not impair hearing: the gatherer spools, the
deduplicator catches up, and the verdict proves it.

At the end every fault is healed, the cluster settles, the simulator stops, the deduplicator
drains, and production is compared with the simulator's truth file (kalshi_data/testing/truth.py):
trades by id (missing, invented, doubled), deltas as a multiset, states by content, lifecycle
events by content; gap rows are reported covered (production holds their markets' rows for the
window) or uncovered. It prints fault counts per kind, recovery times (p50/max) and peak RSS per
process, and exits 1 on any loss or duplicate (printing the command that replays the schedule).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from kalshi_data.errors import describe_error
from kalshi_data.migrate import migrate
from kalshi_data.tables import BY_NAME
from kalshi_data.testing.cluster import (
    LocalCluster,
    Service,
    gatherer_config,
    http_get,
    metrics,
    start_service,
    start_simulator,
)
from kalshi_data.testing.faultproxy import ProxyThread
from kalshi_data.testing.pgcluster import PgCluster, free_port
from kalshi_data.testing.truth import TableDiff, Truth, database_identities, diff, load_truth
from kalshi_data.tools.users import create_user

console = Console(stderr=True)

#: Fault kinds, with (impairs hearing, exclusive resources joined by "+", duration range s).
KINDS: dict[str, tuple[bool, str, tuple[float, float]]] = {
    "gatherer_kill9": (True, "proc:{g}", (2, 8)),
    "gatherer_sigstop": (True, "proc:{g}", (2, 8)),
    "gatherer_db_kill9": (False, "pg:{g}", (3, 15)),
    "gatherer_db_sigstop": (False, "pg:{g}", (2, 10)),
    "dedup_leader_kill9": (False, "dedup", (2, 10)),
    "dedup_standby_kill9": (False, "dedup", (2, 10)),
    "dedup_leader_sigstop": (False, "dedup", (2, 10)),
    "production_failover": (False, "prod", (15, 30)),
    "partition_dedup_gatherer_db": (False, "proxy:{g}", (3, 20)),
    "partition_dedup_production": (False, "proxy:prod", (3, 15)),
    "proxy_latency": (False, "proxy:{g}", (5, 20)),
    "proxy_reset": (False, "proxy:{g}", (0.5, 1)),
    "sim_drop": (True, "sim:{g}", (0.5, 1)),
    "sim_skip_seq": (True, "sim:{g}", (0.5, 1)),
    "sim_duplicate": (True, "sim:{g}", (0.5, 1)),
    "sim_malformed": (True, "sim:{g}", (0.5, 1)),
    "sim_error_25": (True, "sim:{g}", (0.5, 1)),
    "sim_error_10": (True, "sim:{g}", (0.5, 1)),
    "sim_error_18": (True, "sim:{g}", (0.5, 1)),
    "sim_error_27": (True, "sim:{g}", (0.5, 1)),
    "sim_pings_stopped": (True, "sim:{g}", (5, 15)),
    "sim_slow_consumer": (True, "sim:{g}", (3, 10)),
    "rest_429_burst": (False, "rest", (0.5, 1)),
    "rest_5xx_burst": (False, "rest", (0.5, 1)),
    # Opt-in (--clock-steps), so that adding it left the schedules of recorded seeds unchanged.
    "gatherer_clock_step": (True, "clock:{g}", (5, 30)),
    # Opt-in (--spool-disk-full, root): the gatherer's DB down while its spool's disk is full.
    # It stops reading (impairs hearing) and needs the gatherer's DB and its process untouched
    # by other faults meanwhile (a restarted gatherer waits for its DB, spooling nothing).
    "gatherer_spool_disk_full": (True, "pg:{g}+proc:{g}", (8, 20)),
}
#: Kinds only a flag adds (left out of the default draw, so recorded seeds keep their plans).
OPT_IN_KINDS = ("gatherer_clock_step", "gatherer_spool_disk_full")
#: Kinds drawn by default (every kind but the opt-in ones).
DEFAULT_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k not in OPT_IN_KINDS)
#: Size of the tmpfs each gatherer's spool lives on under --spool-disk-full.
SPOOL_TMPFS_BYTES = 32 * 1024 * 1024
#: Free space the disk-full fault leaves on that tmpfs (so the first appends fail at once).
SPOOL_DISK_SLACK_BYTES = 64 * 1024
#: libfaketime (Debian package ``faketime``): steps one process's wall clock, nobody else's.
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
#: Seconds an impairing fault still counts after it ended (restart, reconnect, resubscribe).
RECOVERY_MARGIN_S = {"gatherer_kill9": 20.0, "gatherer_sigstop": 15.0}
DEFAULT_MARGIN_S = 12.0
#: Production failovers at least this far apart (the old primary is rebuilt as a standby).
FAILOVER_SPACING_S = 60.0


@dataclass(frozen=True)
class Fault:
    """One scheduled fault."""

    at_s: float
    kind: str
    target: str
    duration_s: float
    param: int


def make_schedule(
    seed: int,
    duration_s: float,
    faults_per_minute: float,
    gatherers: list[str],
    kinds: list[str],
    *,
    quiet_tail_s: float = 20.0,
) -> list[Fault]:
    """The seeded fault plan: Poisson arrivals, random kinds and targets, under the constraint."""
    rng = random.Random(seed)
    out: list[Fault] = []
    busy: dict[str, float] = {}  # resource -> busy until
    impaired: list[tuple[float, float, str]] = []  # (start, end, gatherer)
    last_failover = -FAILOVER_SPACING_S
    t = 10.0
    end = max(0.0, duration_s - quiet_tail_s)
    rate_per_s = faults_per_minute / 60.0
    while rate_per_s > 0:
        t += rng.expovariate(rate_per_s)
        if t >= end:
            break
        for _attempt in range(10):
            kind = rng.choice(kinds)
            _impairs, resource, (lo, hi) = KINDS[kind]
            dur = round(rng.uniform(lo, hi), 2)
            if t + dur >= end:
                continue
            targets = list(gatherers) if "{g}" in resource else ["-"]
            rng.shuffle(targets)
            if kind == "production_failover" and t - last_failover < FAILOVER_SPACING_S:
                continue
            chosen = _first_free_target(kind, t, dur, targets, gatherers, busy, impaired)
            if chosen is None:
                continue
            if kind == "production_failover":
                last_failover = t
            out.append(Fault(round(t, 2), kind, chosen, dur, rng.randrange(1, 1_000_000)))
            break
    return out


def _first_free_target(
    kind: str,
    t: float,
    dur: float,
    targets: list[str],
    gatherers: list[str],
    busy: dict[str, float],
    impaired: list[tuple[float, float, str]],
) -> str | None:
    """The first of ``targets`` whose resources are free at ``t`` and whose impairment (if the
    kind impairs hearing) leaves another gatherer hearing; it is booked in ``busy``/``impaired``."""
    impairs, resource, _ = KINDS[kind]
    for g in targets:
        parts = resource.format(g=g).split("+")
        if any(busy.get(res, 0.0) > t for res in parts):
            continue
        if impairs:
            stop = t + dur + RECOVERY_MARGIN_S.get(kind, DEFAULT_MARGIN_S)
            others = {x for s, e, x in impaired if s < stop and e > t and x != g}
            if len(others) + 1 >= len(gatherers):
                continue
            impaired.append((t, stop, g))
        for res in parts:
            busy[res] = t + dur + (5.0 if kind != "production_failover" else 30.0)
        return g
    return None


def schedule_digest(plan: list[Fault]) -> str:
    """A short digest of a plan (printed so that two runs can be seen to share one)."""
    text = json.dumps([asdict(f) for f in plan], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ processes
def _pids_of_cluster(cluster: PgCluster) -> list[int]:
    pid = cluster.pid
    if pid is None:
        return []
    from kalshi_data.testing.pgcluster import _children  # noqa: PLC0415

    return [pid, *_children(pid)]


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _socket_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets a process holds (maps WS connections to gatherers)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 (loopback admin API)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
            return dict(json.loads(r.read()))
    except Exception as exc:
        return {"ok": False, "error": str(exc)}


def _pctl(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {max(values):.2f} (n={len(values)})"


@dataclass
class Chaos:
    """The running cluster and what the run measured."""

    demo: LocalCluster
    args: argparse.Namespace
    gatherer_ids: list[str] = field(default_factory=list)
    gatherers: dict[str, Service] = field(default_factory=dict)
    dedups: dict[str, Service] = field(default_factory=dict)
    sim: Service | None = None
    prod_primary: PgCluster | None = None
    prod_standby: PgCluster | None = None
    proxies: dict[str, ProxyThread] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    held: set[str] = field(default_factory=set)  # services deliberately down or stopped
    unexpected_exits: Counter[str] = field(default_factory=Counter)
    done: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    recovery: dict[str, list[float]] = field(default_factory=dict)
    peak_rss_kib: dict[str, int] = field(default_factory=dict)
    peak_spool: dict[str, float] = field(default_factory=dict)
    #: tmpfs mounts made for --spool-disk-full (unmounted by stop_all).
    mounts: list[Path] = field(default_factory=list)
    failovers: int = 0
    stopping: bool = False
    active: int = 0
    errors: list[str] = field(default_factory=list)
    #: Resources (``pg:g1``, ``prod``, ...) held by a running fault. The schedule keeps faults
    #: on a resource apart in plan time, but one that runs late (a slow restart on a loaded
    #: machine) may still hold it when the next is due: that next one is skipped, not delayed
    #: (delayed, it would run outside the window the hearing constraint was checked for).
    busy_resources: set[str] = field(default_factory=set)

    # -------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Clusters, migrations, users, proxies; then simulator, gatherers, two deduplicators."""
        a = self.args
        console.print("[bold]starting PostgreSQL[/]: production + synchronous standby, gatherers")
        prod_dsn = self._setup_production()
        sources = [self._setup_gatherer_db(f"g{i + 1}") for i in range(a.gatherers)]
        if a.timescaledb:
            rows = self.demo.clusters["g1"].execute(
                "SELECT count(*) FROM timescaledb_information.hypertables", "kalshi_ts"
            )
            console.print(f"TimescaleDB gatherers: {rows[0][0]} hypertables in g1")
        self.sim = start_simulator(self.demo, seed=a.seed, markets=a.markets, rate=a.rate)
        if "gatherer_spool_disk_full" in _kinds(a):
            for src in sources:
                self._mount_spool(src["id"])
        for s in sources:
            self._start_gatherer(s["id"], s["writer"])
        for name in ("dedup-a", "dedup-b"):
            self._start_dedup(name, prod_dsn, sources)
            time.sleep(1.0)  # dedup-a normally wins the first lease

    def _setup_production(self) -> Path:
        """Production with a synchronous standby, migrated, behind a proxy; its DSN file."""
        wd = self.demo.workdir
        prod = PgCluster(wd / "pg" / "production").init().start()
        self.demo.clusters["production"] = prod
        prod.create_database("kalshi")
        migrate(prod.dsn("kalshi"), "production")
        pw = os.urandom(12).hex()
        create_user(prod.dsn("kalshi"), "dedup_writer", "kd_dedup", pw)
        self.prod_primary = prod
        self.prod_standby = prod.create_standby(wd / "pg" / "production-sb1", name="prodsb1")
        self.proxies["prod"] = ProxyThread("127.0.0.1", prod.port)
        return self.demo.secret_file(
            "production-dsn",
            f"postgresql://kd_dedup:{pw}@127.0.0.1:{self.proxies['prod'].port}/kalshi",
        )

    def _setup_gatherer_db(self, gid: str) -> dict[str, str]:
        """Gatherer ``gid``'s database, migrated, with a proxy in front of its reader."""
        wd = self.demo.workdir
        settings = {"shared_preload_libraries": "'timescaledb'"} if self.args.timescaledb else None
        self.gatherer_ids.append(gid)
        c = PgCluster(wd / "pg" / gid).init(settings).start()
        self.demo.clusters[gid] = c
        c.create_database("kalshi_ts")
        migrate(c.dsn("kalshi_ts"), "gatherer")
        wpw, rpw = os.urandom(12).hex(), os.urandom(12).hex()
        create_user(c.dsn("kalshi_ts"), "gatherer_writer", "kd_gatherer", wpw)
        create_user(c.dsn("kalshi_ts"), "dedup_reader", "kd_reader", rpw)
        proxy = ProxyThread("127.0.0.1", c.port)
        self.proxies[gid] = proxy
        writer = self.demo.secret_file(f"{gid}-writer", c.dsn("kalshi_ts", "kd_gatherer", wpw))
        reader = self.demo.secret_file(
            f"{gid}-reader", f"postgresql://kd_reader:{rpw}@127.0.0.1:{proxy.port}/kalshi_ts"
        )
        return {"id": gid, "writer": str(writer), "reader": str(reader)}

    def _spool_dir(self, gid: str) -> Path:
        return self.demo.workdir / "spool" / gid

    def _mount_spool(self, gid: str) -> None:
        """Gatherer ``gid``'s spool on its own tmpfs, so that filling it fills only its disk."""
        spool = self._spool_dir(gid)
        spool.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SPOOL_TMPFS_BYTES},mode=0700", "tmpfs", spool],
            check=True,
            capture_output=True,
        )
        self.mounts.append(spool)

    def _start_gatherer(self, gid: str, writer_dsn_file: str) -> None:
        """Gatherer ``gid``; under a fake clock when the schedule steps clocks."""
        cfg = gatherer_config(self.demo, gid, writer_dsn_file, free_port())
        cfg["database"]["flush_interval_s"] = 0.02
        env = {}
        if "gatherer_clock_step" in _kinds(self.args):
            clock = self.demo.workdir / "clock" / gid
            clock.parent.mkdir(exist_ok=True)
            clock.write_text("+0\n")
            env = {
                "LD_PRELOAD": str(FAKETIME_LIB),
                "FAKETIME_TIMESTAMP_FILE": str(clock),
                "FAKETIME_CACHE_DURATION": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            }
        self.gatherers[gid] = start_service(self.demo, gid, "gatherer", cfg, env=env)

    def _start_dedup(self, name: str, prod_dsn: Path, sources: list[dict[str, str]]) -> None:
        cfg = {
            "instance_id": name,
            "production": {"dsn": f"file:{prod_dsn}", "statement_timeout_s": 30},
            "gatherers": [{"id": s["id"], "dsn": f"file:{s['reader']}"} for s in sources],
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "poll_interval_s": 0.5,
        }
        self.dedups[name] = start_service(self.demo, name, "deduplicator", cfg)

    # -------------------------------------------------------------------- helpers
    def health(self, svc: Service) -> dict[str, Any]:
        """A service's /health JSON ({} when it does not answer)."""
        try:
            return dict(json.loads(http_get(svc.health_url, 1.0) or "{}"))
        except ValueError:
            return {}

    def leader(self) -> Service | None:
        """The deduplicator instance whose health says leader."""
        for svc in self.dedups.values():
            if svc.name not in self.held and self.health(svc).get("role") == "leader":
                return svc
        return None

    def wait(self, cond: Callable[[], bool], timeout_s: float, step: float = 0.1) -> float | None:
        """Seconds until ``cond`` held, or None after ``timeout_s``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if cond():
                return time.monotonic() - t0
            time.sleep(step)
        return None

    def note(self, kind: str, seconds: float | None) -> None:
        """Record one recovery time (a timeout is recorded as an error)."""
        with self.lock:
            if seconds is None:
                self.errors.append(f"{kind}: no recovery within the deadline")
            else:
                self.recovery.setdefault(kind, []).append(seconds)

    def gatherer_conns(self, gid: str) -> list[dict[str, Any]]:
        """The simulator's connections that belong to gatherer ``gid``."""
        svc = self.gatherers[gid]
        if svc.proc is None or svc.proc.poll() is not None:
            return []
        ports = _socket_ports(svc.proc.pid)
        raw = http_get(f"{self.demo.sim_info['admin_url']}/connections", 2.0)
        conns = json.loads(raw or '{"connections": []}')["connections"]
        out = []
        for c in conns:
            remote = str(c.get("remote") or "")
            with contextlib.suppress(ValueError):
                if int(remote.rsplit(":", 1)[-1].strip("]")) in ports:
                    out.append(c)
        return out

    def rows_written(self) -> dict[str, float]:
        """dedup_rows_written_total of each running deduplicator."""
        return {
            n: metrics(s.metrics_url).get("dedup_rows_written_total", -1.0)
            for n, s in self.dedups.items()
        }

    def wait_writes_resume(self, timeout_s: float) -> float | None:
        """Seconds until some deduplicator's written-rows counter moves."""
        before = self.rows_written()

        def moved() -> bool:
            now = self.rows_written()
            return any(v > max(before.get(k, 0.0), 0.0) for k, v in now.items())

        return self.wait(moved, timeout_s, 0.1)

    # -------------------------------------------------------------------- faults
    def run_fault(self, f: Fault) -> None:
        """Inject, hold, heal and measure one fault (its own thread)."""
        with self.lock:
            self.active += 1
        rng = random.Random(f.param)
        resources = set(KINDS[f.kind][1].format(g=f.target).split("+"))
        with self.lock:
            free = not (resources & self.busy_resources)
            if free:
                self.busy_resources |= resources
        try:
            if not free:
                with self.lock:
                    self.skipped[f.kind] += 1
                    self.errors.append(f"{f.kind} on {f.target}: skipped, a late fault holds it")
                return
            handler = getattr(self, f"_f_{f.kind}")
            ok = handler(f, rng)
            with self.lock:
                (self.done if ok is not False else self.skipped)[f.kind] += 1
        except Exception as exc:
            with self.lock:
                self.errors.append(f"{f.kind} on {f.target}: {type(exc).__name__}: {exc}")
                self.skipped[f.kind] += 1
        finally:
            with self.lock:
                self.active -= 1
                if free:
                    self.busy_resources -= resources

    def _kill(self, svc: Service) -> None:
        with self.lock:
            self.held.add(svc.name)
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGCONT)
            svc.proc.kill()
            svc.proc.wait(10)

    def _restart(self, svc: Service) -> None:
        svc.start()
        with self.lock:
            self.held.discard(svc.name)

    def _stop_cont(self, pids: list[int], seconds: float) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        time.sleep(seconds)
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)

    def _gatherer_back(self, gid: str, timeout_s: float = 60) -> float | None:
        svc = self.gatherers[gid]

        def up() -> bool:
            m = metrics(svc.metrics_url)
            return m.get("gatherer_ws_connections_up", 0) > 0 and m.get(
                "gatherer_ws_connections_up", 0
            ) >= m.get("gatherer_ws_connections_configured", 1)

        return self.wait(up, timeout_s, 0.2)

    def _f_gatherer_kill9(self, f: Fault, _rng: random.Random) -> bool:
        svc = self.gatherers[f.target]
        self._kill(svc)
        time.sleep(f.duration_s)
        self._restart(svc)
        self.note("gatherer restart to subscribed", self._gatherer_back(f.target))
        return True

    def _f_gatherer_sigstop(self, f: Fault, _rng: random.Random) -> bool:
        svc = self.gatherers[f.target]
        if svc.proc is None or svc.proc.poll() is not None:
            return False
        with self.lock:
            self.held.add(svc.name)
        self._stop_cont([svc.proc.pid], f.duration_s)
        with self.lock:
            self.held.discard(svc.name)
        return True

    def _spool_drained(self, gid: str) -> bool:
        m = metrics(self.gatherers[gid].metrics_url)
        return m.get("gatherer_database_up", m.get("gatherer_db_up", 1)) >= 1 and (
            m.get("gatherer_spool_bytes", 1) == 0
        )

    def _f_gatherer_db_kill9(self, f: Fault, _rng: random.Random) -> bool:
        c = self.demo.clusters[f.target]
        c.kill9()
        time.sleep(f.duration_s)
        c.start()
        self.note(
            "gatherer spool drained after its DB returned",
            self.wait(lambda: self._spool_drained(f.target), 120, 0.2),
        )
        return True

    def _f_gatherer_db_sigstop(self, f: Fault, _rng: random.Random) -> bool:
        self._stop_cont(_pids_of_cluster(self.demo.clusters[f.target]), f.duration_s)
        return True

    def _f_gatherer_spool_disk_full(self, f: Fault, _rng: random.Random) -> bool:
        """The gatherer's database down while its spool's disk is full: the gatherer must say
        so (health ``spool_full``), stop reading (a recorded gap the others cover), keep the
        rows it accepted, and read again once its database drained the spool."""
        gid = f.target
        svc = self.gatherers[gid]
        if svc.proc is None or svc.proc.poll() is not None:
            return False
        spool = self._spool_dir(gid)
        ballast = spool / "ballast.fill"
        c = self.demo.clusters[gid]
        try:
            _fill(ballast, shutil.disk_usage(spool).free - SPOOL_DISK_SLACK_BYTES)
            c.kill9()
            full = self.wait(
                lambda: bool(self.health(svc).get("components", {}).get("spool_full")),
                f.duration_s + 30,
                0.2,
            )
            if full is None:
                with self.lock:
                    self.errors.append(f"{gid}: a full spool disk never showed as spool_full")
            time.sleep(f.duration_s)
        finally:
            ballast.unlink(missing_ok=True)
            c.start()
        self.note(
            "gatherer spool drained after its disk filled",
            self.wait(lambda: self._spool_drained(gid), 120, 0.2),
        )
        self.note("gatherer reading again after its spool disk filled", self._gatherer_back(gid))
        return True

    def _dedup_kill(self, svc: Service, f: Fault, *, was_leader: bool) -> None:
        self._kill(svc)
        if was_leader:
            other = next(s for s in self.dedups.values() if s is not svc)
            self.note(
                "standby takeover after leader kill -9",
                self.wait(lambda: self.health(other).get("role") == "leader", 60, 0.1),
            )
        remaining = f.duration_s
        time.sleep(max(0.0, remaining))
        self._restart(svc)

    def _f_dedup_leader_kill9(self, f: Fault, _rng: random.Random) -> bool:
        svc = self.leader()
        if svc is None:
            return False
        self._dedup_kill(svc, f, was_leader=True)
        return True

    def _f_dedup_standby_kill9(self, f: Fault, _rng: random.Random) -> bool:
        lead = self.leader()
        svc = next((s for s in self.dedups.values() if s is not lead), None)
        if svc is None or svc.name in self.held:
            return False
        self._dedup_kill(svc, f, was_leader=False)
        return True

    def _f_dedup_leader_sigstop(self, f: Fault, _rng: random.Random) -> bool:
        svc = self.leader()
        if svc is None or svc.proc is None:
            return False
        with self.lock:
            self.held.add(svc.name)
        self._stop_cont([svc.proc.pid], f.duration_s)
        with self.lock:
            self.held.discard(svc.name)
        return True

    def _f_production_failover(self, f: Fault, _rng: random.Random) -> bool:
        old, new = self.prod_primary, self.prod_standby
        if old is None or new is None:
            return False
        old.kill9()
        new.promote()
        self.proxies["prod"].retarget("127.0.0.1", new.port)
        with self.lock:
            self.prod_primary, self.prod_standby = new, None
            self.failovers += 1
            self.demo.clusters["production"] = new
        self.note("dedup resumes writing after promotion", self.wait_writes_resume(120))
        time.sleep(f.duration_s)
        n = self.failovers + 1
        base = self.demo.workdir / "pg" / f"production-sb{n}"
        rebuilt = new.create_standby(base, name=f"prodsb{n}")  # pg_basebackup from the new one
        old.destroy()
        with self.lock:
            self.prod_standby = rebuilt
        return True

    def _partition(self, proxy: ProxyThread, f: Fault, label: str) -> None:
        proxy.set_mode("blackhole")
        time.sleep(f.duration_s)
        proxy.set_mode("pass")
        self.note(label, self.wait_writes_resume(120))

    def _f_partition_dedup_gatherer_db(self, f: Fault, _rng: random.Random) -> bool:
        self._partition(self.proxies[f.target], f, "dedup writes after a gatherer-DB partition")
        return True

    def _f_partition_dedup_production(self, f: Fault, _rng: random.Random) -> bool:
        self._partition(self.proxies["prod"], f, "dedup writes after a production partition")
        return True

    def _f_proxy_latency(self, f: Fault, rng: random.Random) -> bool:
        proxy = self.proxies[f.target]
        proxy.set_mode("latency", rng.choice([0.05, 0.1, 0.3]))
        time.sleep(f.duration_s)
        proxy.set_mode("pass")
        return True

    def _f_proxy_reset(self, f: Fault, _rng: random.Random) -> bool:
        proxy = self.proxies[f.target]
        proxy.set_mode("reset")
        time.sleep(f.duration_s)
        proxy.set_mode("pass")
        return True

    def _sim_conn(self, gid: str, rng: random.Random) -> dict[str, Any] | None:
        conns = [c for c in self.gatherer_conns(gid) if c.get("sids")]
        return rng.choice(conns) if conns else None

    def _admin(self, path: str, body: dict[str, Any]) -> bool:
        return bool(_post(f"{self.demo.sim_info['admin_url']}/{path}", body).get("ok"))

    def _f_sim_drop(self, f: Fault, rng: random.Random) -> bool:
        conn = self._sim_conn(f.target, rng)
        if conn is None:
            return False
        before = {c["id"] for c in self.gatherer_conns(f.target)}
        if not self._admin("drop", {"conn": conn["id"], "mode": rng.choice(["abort", "close"])}):
            return False

        def reconnected() -> bool:
            now = [c for c in self.gatherer_conns(f.target) if c["id"] not in before]
            return any(c.get("sids") for c in now)

        self.note("gatherer reconnect after a dropped connection", self.wait(reconnected, 60, 0.1))
        return True

    def _sid(
        self, gid: str, rng: random.Random, channel: str | None = None
    ) -> tuple[int, int] | None:
        """(connection id, sid) of one of ``gid``'s subscriptions (on ``channel`` if given)."""
        pairs = [
            (int(c["id"]), int(s["sid"]))
            for c in self.gatherer_conns(gid)
            for s in c.get("sids") or []
            if channel is None or s["channel"] == channel
        ]
        return rng.choice(pairs) if pairs else None

    def _f_sim_skip_seq(self, f: Fault, rng: random.Random) -> bool:
        cs = self._sid(f.target, rng, rng.choice(["orderbook_delta", "trade"]))
        return cs is not None and self._admin(
            "skip_seq", {"conn": cs[0], "sid": cs[1], "n": rng.randint(1, 20)}
        )

    def _f_sim_duplicate(self, f: Fault, rng: random.Random) -> bool:
        cs = self._sid(f.target, rng, rng.choice(["orderbook_delta", "trade"]))
        return cs is not None and self._admin(
            "duplicate", {"conn": cs[0], "sid": cs[1], "n": rng.randint(1, 20)}
        )

    def _f_sim_malformed(self, f: Fault, rng: random.Random) -> bool:
        cs = self._sid(f.target, rng, "orderbook_delta")
        kind = rng.choice(["invalid_json", "missing_field", "bad_price", "unknown_type"])
        return cs is not None and self._admin(
            "malformed", {"conn": cs[0], "sid": cs[1], "kind": kind}
        )

    def _sub_error(self, f: Fault, rng: random.Random, code: int) -> bool:
        cs = self._sid(f.target, rng)
        return cs is not None and self._admin(
            "sub_error", {"conn": cs[0], "sid": cs[1], "code": code}
        )

    def _f_sim_error_25(self, f: Fault, rng: random.Random) -> bool:
        return self._sub_error(f, rng, 25)

    def _f_sim_error_10(self, f: Fault, rng: random.Random) -> bool:
        return self._sub_error(f, rng, 10)

    def _command_error(self, f: Fault, rng: random.Random, code: int) -> bool:
        """Arm the refusal of one gatherer connection's next 1-3 commands (an ``add_markets``
        for a market just created, a resubscribe) with ``code``: the client must send again."""
        conn = self._sim_conn(f.target, rng)
        return conn is not None and self._admin(
            "command_error", {"conn": conn["id"], "code": code, "n": rng.randint(1, 3)}
        )

    def _f_sim_error_18(self, f: Fault, rng: random.Random) -> bool:
        return self._command_error(f, rng, 18)

    def _f_sim_error_27(self, f: Fault, rng: random.Random) -> bool:
        return self._command_error(f, rng, 27)

    def _f_sim_pings_stopped(self, f: Fault, rng: random.Random) -> bool:
        conn = self._sim_conn(f.target, rng)
        if conn is None:
            return False
        ok = self._admin("pings", {"conn": conn["id"], "enabled": False})
        time.sleep(f.duration_s)
        self._admin("pings", {"conn": conn["id"], "enabled": True})  # gone if it reconnected
        return ok

    def _f_sim_slow_consumer(self, f: Fault, rng: random.Random) -> bool:
        conn = self._sim_conn(f.target, rng)
        if conn is None:
            return False
        ok = self._admin("slow", {"conn": conn["id"], "delay_ms": rng.choice([1, 5, 20])})
        time.sleep(f.duration_s)
        self._admin("slow", {"conn": conn["id"], "delay_ms": 0})
        return ok

    def _f_gatherer_clock_step(self, f: Fault, rng: random.Random) -> bool:
        """Step one gatherer's wall clock (libfaketime offset file), then step it back."""
        clock = self.demo.workdir / "clock" / f.target
        step = rng.choice([-60, -20, -5, 5, 20, 60])  # beyond 30 s the signed upgrade is refused
        clock.write_text(f"{step:+d}\n")
        time.sleep(f.duration_s)
        clock.write_text("+0\n")
        self.note("gatherer subscribed after a clock step", self._gatherer_back(f.target))
        return True

    def _f_rest_429_burst(self, _f: Fault, rng: random.Random) -> bool:
        return self._admin("rest_faults", {"status": 429, "count": rng.randint(3, 30)})

    def _f_rest_5xx_burst(self, _f: Fault, rng: random.Random) -> bool:
        status = rng.choice([500, 502, 503, 504])
        return self._admin("rest_faults", {"status": status, "count": rng.randint(3, 30)})

    # -------------------------------------------------------------------- supervision
    def supervise(self) -> None:
        """Restart a process that died without being killed by a fault; sample RSS and spool."""
        for svc in [*self.gatherers.values(), *self.dedups.values()]:
            with self.lock:
                held = svc.name in self.held
            if svc.proc is None:
                continue
            if not held and svc.proc.poll() is not None:
                with self.lock:
                    self.unexpected_exits[svc.name] += 1
                    self.errors.append(
                        f"{svc.name} exited by itself with {svc.proc.returncode}; restarted"
                    )
                svc.start()
            if svc.proc.poll() is None:
                rss = _rss_kib(svc.proc.pid)
                self.peak_rss_kib[svc.name] = max(self.peak_rss_kib.get(svc.name, 0), rss)
        if self.sim is not None and self.sim.proc is not None:
            rss = _rss_kib(self.sim.proc.pid)
            self.peak_rss_kib["simulator"] = max(self.peak_rss_kib.get("simulator", 0), rss)
        for gid in self.gatherer_ids:
            c = self.demo.clusters[gid]
            rss = sum(_rss_kib(p) for p in _pids_of_cluster(c))
            key = f"postgres {gid}"
            self.peak_rss_kib[key] = max(self.peak_rss_kib.get(key, 0), rss)

    def sample_spool(self) -> dict[str, float]:
        """Spool bytes per gatherer now (and their peaks)."""
        out = {}
        for gid, svc in self.gatherers.items():
            v = metrics(svc.metrics_url).get("gatherer_spool_bytes", 0.0)
            out[gid] = v
            self.peak_spool[gid] = max(self.peak_spool.get(gid, 0.0), v)
        return out

    def heal_all(self) -> None:
        """Every proxy to pass, every process continued and running."""
        for proxy in self.proxies.values():
            proxy.set_mode("pass")
        for svc in [*self.gatherers.values(), *self.dedups.values()]:
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGCONT)
        for c in self.demo.clusters.values():
            for p in _pids_of_cluster(c):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)

    def wait_drained(self, timeout_s: float) -> bool:
        """True once the leader reports no backlog and low lag for every gatherer."""

        def drained() -> bool:
            lead = self.leader()
            if lead is None:
                return False
            gs = self.health(lead).get("gatherers", {})
            return bool(gs) and all(
                g.get("backlog_rows", 1) == 0 and (g.get("max_lag_seconds") or 0) < 2.0
                for g in gs.values()
            )

        return self.wait(drained, timeout_s, 0.5) is not None

    def stop_all(self) -> None:
        """Stop every process and proxy; destroy clusters unless KALSHI_DATA_DEMO_KEEP=1."""
        self.heal_all()
        for svc in reversed(self.demo.services):
            with contextlib.suppress(Exception):
                svc.stop()
        for proxy in self.proxies.values():
            proxy.close()
        for c in [*self.demo.clusters.values(), self.prod_standby]:
            if c is not None:
                with contextlib.suppress(Exception):
                    c.stop()
        for spool in self.mounts:
            subprocess.run(["umount", "-l", spool], check=False, capture_output=True)
        if os.environ.get("KALSHI_DATA_DEMO_KEEP") != "1":
            for c in [*self.demo.clusters.values(), self.prod_standby]:
                if c is not None:
                    c.destroy()


def _fill(path: Path, nbytes: int) -> None:
    """Write ``nbytes`` (a ballast file) so that the disk under ``path`` is nearly full."""
    chunk = b"\0" * (1024 * 1024)
    left = max(0, nbytes)
    with path.open("wb") as fh:
        while left > 0:
            n = fh.write(chunk[: min(left, len(chunk))])
            left -= n


# --------------------------------------------------------------------------------- verdict
@dataclass
class Verdict:
    """Production against the truth."""

    rows: list[
        tuple[str, int, int, int, int, int]
    ]  # table, truth, prod, missing, invented, doubled
    gaps_total: int
    gaps_uncovered: list[str]
    events: int

    @property
    def exact(self) -> bool:
        """No loss, nothing invented or doubled."""
        return all(m == 0 and i == 0 and d == 0 for _, _, _, m, i, d in self.rows)


def verdict(
    prod_dsn: str, truth_path: Path, since_us: int, until_us: int, skip_lines: int
) -> Verdict:
    """Compare production with the truth file over [since_us, until_us].

    Time-series tables are windowed by exchange time on both sides. Lifecycle events carry no
    time in their identity: the truth's are those after the first ``skip_lines`` lines (the
    count when the window opened), and a production row is invented only when it is in no
    line of the whole truth file.
    """
    truth: Truth = load_truth(
        truth_path, since_us=since_us, until_us=until_us, skip_lines=skip_lines
    )
    whole = load_truth(truth_path)
    found = database_identities(prod_dsn, since_us=since_us, until_us=until_us)
    report = diff(truth, found)
    rows = []
    for name, table_diff in report.items():
        d = table_diff
        spec = BY_NAME[name]
        want = truth.tables[name]
        if not spec.partitioned:  # windowed by line, not time: compare with the whole file
            have = Counter(set(found[name]))
            every = Counter(set(whole.tables[name]))
            d = TableDiff(
                expected=len(set(want)),
                found=sum(have.values()),
                missing=Counter(set(want)) - have,
                extra=have - every,
            )
            report[name] = d
        invented = sum(n for ident, n in d.extra.items() if ident not in want)
        doubled = sum(n for ident, n in d.extra.items() if ident in want)
        rows.append((name, d.expected, d.found, sum(d.missing.values()), invented, doubled))
    events = sum(sum(c.values()) for c in truth.tables.values())
    missing_markets: dict[str, list[int]] = {}
    for d in report.values():
        for ident in d.missing:
            for v in ident:
                if isinstance(v, str) and v.isupper():
                    missing_markets.setdefault(v, [])
    gaps_total = 0
    uncovered: list[str] = []
    with psycopg.connect(prod_dsn) as conn:
        for markets, detected in conn.execute(
            "SELECT markets, detected_at FROM gaps WHERE detected_at >= to_timestamp(%s / 1e6)",
            [since_us],
        ).fetchall():
            gaps_total += 1
            hit = [m for m in (markets or []) if m in missing_markets]
            if hit or (not markets and missing_markets):
                uncovered.append(f"{detected}: {hit or 'all markets'}")
    return Verdict(rows, gaps_total, uncovered, events)


def _print_verdict(v: Verdict) -> None:
    table = Table(title="production vs the simulator's truth")
    for col in ("table", "truth", "production", "missing", "invented", "doubled", "exact"):
        table.add_column(col, justify="right" if col != "table" else "left")
    for name, want, have, m, i, d in v.rows:
        ok = "yes" if m == 0 and i == 0 and d == 0 else "NO"
        table.add_row(name, f"{want:,}", f"{have:,}", str(m), str(i), str(d), ok)
    console.print(table)
    console.print(
        f"gap rows: {v.gaps_total}, covered {v.gaps_total - len(v.gaps_uncovered)}, "
        f"uncovered {len(v.gaps_uncovered)}"
    )
    for g in v.gaps_uncovered[:20]:
        console.print(f"  uncovered gap {g}")


def _replay_command(a: argparse.Namespace) -> str:
    cmd = (
        f"kalshi-data chaos --seed {a.seed} --duration {a.duration:g} --rate {a.rate:g} "
        f"--faults-per-minute {a.faults_per_minute:g} --markets {a.markets}"
    )
    if a.kinds:
        cmd += f" --kinds {a.kinds}"
    if a.timescaledb:
        cmd += " --timescaledb"
    if a.db_outage:
        cmd += f" --db-outage {a.db_outage:g}"
    if a.clock_steps:
        cmd += " --clock-steps"
    if a.spool_disk_full:
        cmd += " --spool-disk-full"
    return cmd


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="kalshi-data chaos", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=300, help="seconds of faults and traffic")
    p.add_argument("--rate", type=float, default=1000, help="simulator messages/s")
    p.add_argument("--faults-per-minute", type=float, default=6)
    p.add_argument("--markets", type=int, default=200)
    p.add_argument("--gatherers", type=int, default=3)
    p.add_argument("--kinds", default="", help="comma-separated fault kinds (default: all)")
    p.add_argument("--timescaledb", action="store_true", help="TimescaleDB gatherer databases")
    p.add_argument("--workdir", default=".chaos")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before comparing")
    p.add_argument(
        "--db-outage",
        type=float,
        default=0,
        metavar="S",
        help="also kill g1's database 10 s in, for S seconds (RSS and spool while it is down)",
    )
    p.add_argument(
        "--clock-steps",
        action="store_true",
        help="also step one gatherer's wall clock at a time (libfaketime, that process only)",
    )
    p.add_argument(
        "--spool-disk-full",
        action="store_true",
        help="also fill one gatherer's spool disk while its database is down (root: each"
        " gatherer's spool is then its own small tmpfs)",
    )
    p.add_argument("--print-schedule", action="store_true", help="print the plan and exit")
    p.add_argument("--json", type=Path, default=None, help="write the run's figures here")
    return p


def _kinds(a: argparse.Namespace) -> list[str]:
    wanted = a.kinds.split(",") if a.kinds else DEFAULT_KINDS
    kinds = [k.strip() for k in wanted if k.strip()]
    if a.clock_steps and "gatherer_clock_step" not in kinds:
        kinds.append("gatherer_clock_step")
    if a.spool_disk_full and "gatherer_spool_disk_full" not in kinds:
        kinds.append("gatherer_spool_disk_full")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"kalshi-data chaos: error: unknown fault kinds {unknown}")
    if "gatherer_clock_step" in kinds and not FAKETIME_LIB.exists():
        raise SystemExit(
            f"kalshi-data chaos: error: clock steps need libfaketime ({FAKETIME_LIB}): "
            "apt-get install faketime"
        )
    if "gatherer_spool_disk_full" in kinds and os.geteuid() != 0:
        raise SystemExit(
            "kalshi-data chaos: error: spool disk-full faults need root (each gatherer's spool"
            " is mounted as its own tmpfs)"
        )
    return kinds


def _iter_due(plan: list[Fault], started: float) -> Iterator[Fault]:
    for f in plan:
        delay = started + f.at_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield f


def _plan(a: argparse.Namespace) -> list[Fault]:
    """The seeded schedule, with ``--db-outage``'s kill of g1's database 10 s in."""
    gids = [f"g{i + 1}" for i in range(a.gatherers)]
    plan = make_schedule(a.seed, a.duration, a.faults_per_minute, gids, _kinds(a))
    if a.db_outage:
        plan = [Fault(10.0, "gatherer_db_kill9", "g1", a.db_outage, 1), *plan]
        plan = [
            f for f in plan if f.target != "g1" or f.kind != "gatherer_db_kill9" or f.param == 1
        ]
    return plan


def _progress_line(chaos: Chaos, elapsed: float) -> str:
    spool = chaos.sample_spool()
    lead = chaos.leader()
    spooled = ", ".join(f"{k} {v:,.0f}" for k, v in spool.items())
    return (
        f"[{elapsed:6.0f} s] faults done {sum(chaos.done.values())}"
        f" active {chaos.active} skipped {sum(chaos.skipped.values())} | leader "
        f"{lead.name if lead else '-'} | spool B {spooled} | failovers "
        f"{chaos.failovers} | unexpected exits {sum(chaos.unexpected_exits.values())}"
    )


def _run_schedule(chaos: Chaos, plan: list[Fault]) -> list[threading.Thread]:
    """Inject the faults on time (one thread each) while supervising, until ``--duration`` or
    a signal; returns the fault threads."""
    threads: list[threading.Thread] = []
    started = time.monotonic()

    def scheduler() -> None:
        for f in _iter_due(plan, started):
            if chaos.stopping:
                return
            t = threading.Thread(target=chaos.run_fault, args=(f,), daemon=True)
            t.start()
            threads.append(t)

    threading.Thread(target=scheduler, daemon=True).start()
    last_view = 0.0
    while not chaos.stopping and time.monotonic() - started < chaos.args.duration:
        chaos.supervise()
        if time.monotonic() - last_view >= 10:
            last_view = time.monotonic()
            console.print(_progress_line(chaos, last_view - started), soft_wrap=True)
        time.sleep(1.0)
    chaos.stopping = True
    return threads


def _settle(chaos: Chaos, threads: list[threading.Thread]) -> int:
    """Heal everything, let the cluster recover, stop the simulator and drain; returns the
    end of the comparison window (µs)."""
    console.print("healing every fault and letting the cluster settle …")
    for t in threads:
        t.join(180)
    chaos.heal_all()
    for _ in range(20):
        chaos.supervise()
        time.sleep(1.0)
    until_us = int(time.time() * 1e6)
    assert chaos.sim is not None
    chaos.sim.stop()
    console.print(f"deduplicator drained: {chaos.wait_drained(300)}")
    return until_us


def _figures(chaos: Chaos, digest: str, v: Verdict) -> dict[str, Any]:
    """The run's figures (``--json``)."""
    a = chaos.args
    return {
        "seed": a.seed,
        "schedule": digest,
        "duration_s": a.duration,
        "rate": a.rate,
        "timescaledb": a.timescaledb,
        "events_compared": v.events,
        "faults": dict(chaos.done),
        "faults_total": sum(chaos.done.values()),
        "kinds": len(chaos.done),
        "skipped": dict(chaos.skipped),
        "recovery_s": {
            k: {"p50": statistics.median(x), "max": max(x), "n": len(x)}
            for k, x in chaos.recovery.items()
        },
        "peak_rss_mib": {k: round(x / 1024, 1) for k, x in chaos.peak_rss_kib.items()},
        "peak_spool_bytes": chaos.peak_spool,
        "unexpected_exits": dict(chaos.unexpected_exits),
        "verdict": [list(r) for r in v.rows],
        "gaps": {"total": v.gaps_total, "uncovered": len(v.gaps_uncovered)},
        "exact": v.exact,
    }


def _run(chaos: Chaos, plan: list[Fault], digest: str) -> dict[str, Any]:
    """Set up, warm up, run the schedule, settle and judge; the figures."""
    chaos.setup()
    time.sleep(chaos.args.warmup)  # every gatherer subscribes; the comparison window opens after
    flushed = _post(f"{chaos.demo.sim_info['admin_url']}/truth_flush", {})
    skip_lines = int(flushed.get("truth_lines", 0))
    # Lines already flushed carry exchange times before this; later ones after it, or
    # before it by less than a second and then outside the window on both sides.
    since_us = int((time.time() + 1.0) * 1e6)
    admin_url = chaos.demo.sim_info["admin_url"]
    console.print(f"cluster up; logs in {chaos.demo.workdir / 'logs'}; sim admin {admin_url}")
    threads = _run_schedule(chaos, plan)
    until_us = _settle(chaos, threads)
    assert chaos.prod_primary is not None
    truth_path = chaos.demo.workdir / "truth.jsonl"
    v = verdict(chaos.prod_primary.dsn("kalshi"), truth_path, since_us, until_us, skip_lines)
    _print_verdict(v)
    return _figures(chaos, digest, v)


def main(argv: list[str]) -> int:
    """Run the chaos schedule; exit 0 when production equals the truth, 1 otherwise."""
    a = build_parser().parse_args(argv)
    plan = _plan(a)
    digest = schedule_digest(plan)
    console.print(
        f"schedule {digest}: {len(plan)} faults of {len({f.kind for f in plan})} kinds over "
        f"{a.duration:g} s (seed {a.seed})"
    )
    if a.print_schedule:
        for f in plan:
            print(json.dumps(asdict(f)))
        return 0
    workdir = Path(a.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "logs").mkdir(parents=True)
    chaos = Chaos(LocalCluster(workdir), a)
    interrupted = False

    def _interrupt(_sig: int, _frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        chaos.stopping = True

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    figures: dict[str, Any] = {}
    try:
        figures = _run(chaos, plan, digest)
    except Exception as exc:  # the run itself broke: still report what the faults recorded
        where = traceback.extract_tb(exc.__traceback__)[-1]
        chaos.errors.insert(
            0,
            f"the run ended early at {Path(where.filename).name}:{where.lineno}:"
            f" {describe_error(exc)}",
        )
    finally:
        chaos.stopping = True
        chaos.stop_all()
    ok = bool(figures.get("exact")) and not interrupted
    _report(chaos, figures)
    if a.json is not None and figures:
        a.json.write_text(json.dumps(figures, indent=2, default=str))
    if not ok:
        console.print(f"[red]FAILED[/]: replay the schedule with: {_replay_command(a)}")
    return 0 if ok else 1


def _report(chaos: Chaos, figures: dict[str, Any]) -> None:
    table = Table(title="faults")
    for col in ("kind", "injected", "skipped (no target)"):
        table.add_column(col)
    for kind in KINDS:
        if chaos.done[kind] or chaos.skipped[kind]:
            table.add_row(kind, str(chaos.done[kind]), str(chaos.skipped[kind]))
    console.print(table)
    rec = Table(title="recovery times, s (p50 / max)")
    rec.add_column("what")
    rec.add_column("p50 / max")
    for kind, values in sorted(chaos.recovery.items()):
        rec.add_row(kind, _pctl(values))
    console.print(rec)
    rss = Table(title="peak RSS, MiB")
    rss.add_column("process")
    rss.add_column("MiB", justify="right")
    for name, kib in sorted(chaos.peak_rss_kib.items()):
        rss.add_row(name, f"{kib / 1024:.0f}")
    console.print(rss)
    console.print(f"peak spool bytes: {chaos.peak_spool}")
    if chaos.unexpected_exits:
        console.print(f"[yellow]unexpected exits (restarted): {dict(chaos.unexpected_exits)}")
    for e in chaos.errors[:30]:
        console.print(f"  note: {e}")
    if figures:
        console.print(json.dumps({k: figures[k] for k in ("faults_total", "kinds", "exact")}))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
