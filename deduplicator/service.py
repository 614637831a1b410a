"""The deduplicator process: lease loop, one sync loop per gatherer while leader, health, metrics.

Shutdown order (SIGTERM/SIGINT): stop the sync loops (an in-flight batch rolls back: harmless,
the cursor did not move), release the lease so the standby takes over at once, stop the HTTP
server, exit 0. A permanent error (authentication, missing database or table) logs one clear
line and exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import asyncpg

from deduplicator import lease as lease_mod
from deduplicator import sink, upkeep
from deduplicator.config import DedupConfig
from deduplicator.errors import FatalError
from deduplicator.lease import LeaseState
from deduplicator.metrics import DedupMetrics
from deduplicator.seen import SeenIdentities
from deduplicator.sync import GathererSync, lost_connection_verdict
from kalshi_data.errors import describe_error
from kalshi_data.httpserver import HealthServer
from kalshi_data.resilience import ErrorClass, RetryPolicy, Supervisor
from kalshi_data.tables import SYNCED_TABLES

log = logging.getLogger("deduplicator")

UNCOVERED_GAPS = """
WITH w AS (
    SELECT o.gatherer_id, o.markets, o.detected_at AS t0, coalesce(r.recovered_at, now()) AS t1
    FROM gaps o LEFT JOIN gaps r ON r.gap_id = o.gap_id AND r.state = 'recovered'
    WHERE o.state = 'open' AND o.detected_at > now() - interval '1 day'
), peers AS (SELECT DISTINCT gatherer_id FROM sync_cursors)
SELECT w.gatherer_id, count(*) FROM w
WHERE NOT EXISTS (
    SELECT 1 FROM peers p WHERE p.gatherer_id <> w.gatherer_id AND NOT EXISTS (
        SELECT 1 FROM w w2 WHERE w2.gatherer_id = p.gatherer_id
        AND w2.markets && w.markets AND w2.t0 < w.t1 AND w2.t1 > w.t0))
GROUP BY w.gatherer_id
"""
"""Gaps no other gatherer covers: every peer had an overlapping gap on the same markets."""

#: First backoff ceiling of the lease loop, seconds (the cap is ``backoff_cap_s``).
LEASE_BACKOFF_BASE_S = 0.2


class Deduplicator:
    """Wires the lease, the sync loops and the HTTP endpoints together."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        self.metrics = DedupMetrics(cfg.instance_id)
        self.metrics.preinit([g.id for g in cfg.gatherers], [t.name for t in SYNCED_TABLES])
        self.lease = LeaseState(cfg.instance_id)
        self.stop = asyncio.Event()
        # One filter for all loops: a row merged from one gatherer is skipped by the others.
        self.seen = SeenIdentities(cfg.seen_cache_rows)
        self.syncs = [
            GathererSync(cfg, g, self.lease, self.metrics, seen=self.seen) for g in cfg.gatherers
        ]
        self._sync_tasks: list[asyncio.Task[None]] = []
        self._fatal: FatalError | None = None
        self._production_ok = False
        self._lease_conn: asyncpg.Connection | None = None
        self._lost_lease_conn: asyncpg.Connection | None = None
        self._last_renew = 0.0
        self.http = HealthServer(
            cfg.http.listen, health=self.health, ready=self.ready, registry=self.metrics.registry
        )

    # ------------------------------------------------------------------ health
    async def health(self) -> dict[str, Any]:
        """Liveness and components; booleans, lags and positions only (no DSNs, no errors)."""
        gatherers: dict[str, Any] = {}
        up = 0
        now = time.time()
        for s in self.syncs:
            up += int(s.status.up)
            lags = {
                name: round(max(0.0, now - p.fresh_until), 3)
                for name, p in s.status.tables.items()
                if p.fresh_until is not None
            }
            gatherers[s.src.id] = {
                "status": "connected" if s.status.up else "down",
                "breaker": s.breaker.state.value,
                "lag_seconds": lags,
                "max_lag_seconds": max(lags.values(), default=None),
                "backlog_rows": sum(p.backlog for p in s.status.tables.values()),
                "last_error": s.status.last_error,
            }
        if not self._production_ok or (self.lease.leader and up == 0):
            status = "unhealthy"
        elif self.lease.leader and up < len(self.syncs):
            status = "degraded"
        else:
            status = "healthy"
        return {
            "status": status,
            "instance_id": self.cfg.instance_id,
            "role": "leader" if self.lease.leader else "standby",
            "epoch": self.lease.epoch if self.lease.leader else None,
            "production": "connected" if self._production_ok else "down",
            "gatherers": gatherers,
        }

    async def ready(self) -> bool:
        """Ready once production answers (leader or standby)."""
        return self._production_ok

    # ------------------------------------------------------------------ lease
    async def _lease_loop(self) -> None:
        sup = Supervisor(
            "production lease",
            policy=RetryPolicy(LEASE_BACKOFF_BASE_S, self.cfg.backoff_cap_s),
            stop=self.stop,
            classify_fn=self._lease_verdict,
            on_failure=self._lease_failed,
        )
        try:
            while not self.stop.is_set():
                await sup.run(self._lease_round)
        except Exception as exc:  # the supervisor re-raises only permanent errors
            self._fatal = FatalError(f"permanent error from production: {describe_error(exc)}")
            self.stop.set()
            return
        self._publish_leader()

    async def _lease_round(self) -> None:
        """Acquire or renew the lease once, then wait for the next turn; a failure drops the
        lease connection (and the leadership, once it can no longer be proven) and re-raises."""
        try:
            if self._lease_conn is None or self._lease_conn.is_closed():
                self._lease_conn = await self._connect("lease")
            self._production_ok = True
            if self.lease.leader:
                await self._renew(self._lease_conn)
            else:
                await self._acquire(self._lease_conn)
        except Exception:
            self._production_ok = False
            self._lost_lease_conn = self._lease_conn
            if self._lease_conn is not None:
                self._lease_conn.terminate()
                self._lease_conn = None
            if self.lease.leader and time.monotonic() - self._last_renew > self.cfg.lease_ttl_s:
                # We can no longer prove we lead; fencing would reject our writes anyway.
                log.warning("lease not renewed for %.0f s: stepping down", self.cfg.lease_ttl_s)
                await self._step_down()
            raise

    async def _acquire(self, conn: asyncpg.Connection) -> None:
        if await lease_mod.try_acquire(conn, self.lease, self.cfg.lease_ttl_s):
            self._last_renew = time.monotonic()
            log.info("acquired the lease (epoch %d): leading", self.lease.epoch)
            self._become_leader()
        else:
            await self._sleep(self.cfg.lease_poll_s)

    async def _renew(self, conn: asyncpg.Connection) -> None:
        if await lease_mod.renew(conn, self.lease):
            self._last_renew = time.monotonic()
        else:
            log.warning("lease taken by another instance: standing by")
            await self._step_down()
        await self._sleep(self.cfg.lease_ttl_s / 3)

    def _lease_verdict(self, exc: BaseException) -> ErrorClass:
        # The connection the error came from was terminated in _lease_round before this runs,
        # so an error on an established lease connection is always retried and only a failed
        # connect (no connection yet) can be permanent: the behaviour since issue 16.
        return lost_connection_verdict(exc, self._lost_lease_conn)

    def _lease_failed(self, exc: BaseException, _verdict: ErrorClass, _delay: float) -> None:
        self.metrics.production_errors.labels(type(exc).__name__).inc()
        log.warning("production unreachable (%s); retrying", type(exc).__name__)

    def _publish_leader(self) -> None:
        self.metrics.is_leader.labels(self.cfg.instance_id).set(int(self.lease.leader))
        self.metrics.leader_epoch.set(self.lease.epoch if self.lease.leader else 0)

    def _become_leader(self) -> None:
        self._publish_leader()
        self.seen.clear()  # another instance may have written while we were standby
        self._sync_tasks = [
            asyncio.create_task(self._run_sync(s), name=f"sync-{s.src.id}") for s in self.syncs
        ]
        self._sync_tasks.append(  # partition upkeep, on its own connection (deduplicator/upkeep.py)
            asyncio.create_task(
                upkeep.run_periodic(self.cfg.production.dsn.reveal(), self.metrics, self.stop),
                name="upkeep",
            )
        )

    async def _run_sync(self, s: GathererSync) -> None:
        try:
            await s.run(self.stop)
        except FatalError as exc:
            self._fatal = exc
            self.stop.set()
        finally:
            await s.close()

    async def _step_down(self) -> None:
        self.lease.leader = False
        self._publish_leader()
        tasks, self._sync_tasks = self._sync_tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    # ------------------------------------------------------------------ periodic
    async def _periodic(self) -> None:
        """Lag gauges every second; uncovered gaps every 10 s while leading, on a connection of
        its own (it once borrowed the lease connection, and two tasks on one asyncpg connection
        is what broke after a production crash: issue 16)."""
        tick = 0
        conn: asyncpg.Connection | None = None
        try:
            while not self.stop.is_set():
                now = time.time()
                for s in self.syncs:
                    s.publish_lag(now)
                if self.lease.leader and tick % 10 == 0:
                    try:
                        if conn is None or conn.is_closed():
                            conn = await self._connect("monitor")
                        rows = await conn.fetch(UNCOVERED_GAPS)
                        counts = {r[0]: int(r[1]) for r in rows}
                        for s in self.syncs:
                            gauge = self.metrics.uncovered_gaps.labels(s.src.id)
                            gauge.set(counts.get(s.src.id, 0))
                    except Exception:  # a gauge: production trouble is reported by the others
                        if conn is not None:
                            conn.terminate()
                        conn = None
                tick += 1
                await self._sleep(1.0)
        finally:
            if conn is not None:
                conn.terminate()

    async def _connect(self, role: str) -> asyncpg.Connection:
        """A production connection for one owner (``role`` names it in pg_stat_activity)."""
        return await sink.connect(
            self.cfg.production.dsn.reveal(),
            timeout_s=self.cfg.production.connect_timeout_s,
            statement_timeout_s=self.cfg.production.statement_timeout_s,
            instance=f"{self.cfg.instance_id}-{role}",
        )

    # ------------------------------------------------------------------ main
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT or a permanent error; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        await self.http.start()
        log.info(
            "deduplicator %s started: %d gatherers, health on %s",
            self.cfg.instance_id,
            len(self.syncs),
            self.cfg.http.listen,
        )
        background = [
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._periodic(), name="periodic"),
        ]
        try:
            await self.stop.wait()
        finally:
            was_leader = self.lease.leader
            await self._step_down()
            # The lease loop owns the lease connection: end it (it stops by itself once `stop`
            # is set, unless stuck connecting) before this task uses that connection.
            await asyncio.wait(background, timeout=2.0)
            for t in background:
                t.cancel()
            for t in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if was_leader and self._lease_conn is not None and not self._lease_conn.is_closed():
                with contextlib.suppress(Exception):
                    self.lease.leader = True  # release needs our epoch
                    await lease_mod.release(self._lease_conn, self.lease)
            self.lease.leader = False
            if self._lease_conn is not None:
                with contextlib.suppress(Exception):
                    await self._lease_conn.close(timeout=5)
            await self.http.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._fatal is not None:
            log.error("stopping: %s", self._fatal)
            return 1
        log.info("deduplicator %s stopped cleanly", self.cfg.instance_id)
        return 0
