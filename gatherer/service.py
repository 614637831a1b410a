"""The gatherer process: wires registry, connections, snapshot poller and writer together.

Start order: start-up checks on the local database (TimescaleDB preload, DESIGN §3a; daily
partitions), writer (spools while the database is down), health server, connections (firehose
first), registry (initial REST load, retried until it works), snapshot poller, upkeep loops.

Shutdown order (SIGTERM, STYLE habit 4): stop reading every WebSocket, stop REST producers, drain
the writer to the database (or the spool) within ``stop_timeout_s``, close the health server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from gatherer.config import GathererConfig
from gatherer.connections import ConnectionManager
from gatherer.ingest import Ingest
from gatherer.metrics import GathererMetrics
from gatherer.registry import Registry
from gatherer.snapshots import SnapshotPoller
from gatherer.writer import Writer
from kalshi_data.dbcheck import check_timescale_preload
from kalshi_data.errors import PermanentError
from kalshi_data.httpserver import HealthServer
from kalshi_data.kalshi.rest import KalshiRest
from kalshi_data.kalshi.signer import Signer
from kalshi_data.resilience import ErrorClass, RetryPolicy, Supervisor, TokenBucket
from kalshi_data.tables import SYNCED_TABLES

log = logging.getLogger(__name__)

#: REST cost per request in tokens (Kalshi's default; the bucket is sized in requests/s).
REQUEST_COST = 10.0


async def prepare_database(dsn: str, connect_timeout_s: float) -> int:
    """Start-up checks on the local database; returns partitions created.

    Raises:
        PermanentError: timescaledb installed but not preloaded (DESIGN §3a), or a permanent
            database error (wrong password, missing database or schema).
    """
    conn = await asyncpg.connect(dsn, timeout=connect_timeout_s)
    try:
        await check_timescale_preload(conn, "gatherer")
        created = await conn.fetchval("SELECT kd_ensure_partitions()")
    finally:
        await conn.close()
    return int(created or 0)


class GathererService:
    """One gatherer: ``await run(stop)`` until ``stop`` is set; returns the exit code."""

    def __init__(self, cfg: GathererConfig, *, metrics: GathererMetrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or GathererMetrics(cfg.gatherer_id)
        self.writer: Writer | None = None
        self.ingest: Ingest | None = None
        self.manager: ConnectionManager | None = None
        self.registry: Registry | None = None
        self.poller: SnapshotPoller | None = None
        self.health_server: HealthServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started_mono = time.monotonic()
        self._gaps_reported = 0
        self._subunit_reported = 0
        self.rows_put: dict[str, int] = {}

    # -- start-up ---------------------------------------------------------------------------
    async def _wait_for_database(self, stop: asyncio.Event) -> bool:
        """Run the start-up checks, retrying passing faults until they pass or stop is set."""
        db = self.cfg.database

        def on_failure(exc: BaseException, _verdict: ErrorClass, delay: float) -> None:
            log.warning(
                "local database not reachable at start (%s); retrying in %.1fs",
                type(exc).__name__,
                delay,
            )

        sup = Supervisor(
            "local database check",
            policy=RetryPolicy(self.cfg.backoff_base_s, self.cfg.backoff_cap_s),
            stop=stop,
            on_failure=on_failure,
        )
        try:
            created = await sup.run(lambda: prepare_database(db.dsn.reveal(), db.connect_timeout_s))
        except PermanentError:
            raise
        except Exception as exc:  # the supervisor re-raises only permanent errors
            raise PermanentError(
                f"local database refused the gatherer: {type(exc).__name__}"
                f" {getattr(exc, 'sqlstate', '')}"
            ) from exc
        if created is None:  # stop was set first
            return False
        log.info("local database checked (%d partitions created)", created)
        return True

    def _spawn(self, name: str, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(name, coro), name=name))

    async def _supervise(self, name: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s died", name)
            raise

    # -- the run ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set, then shut down in order; returns the exit code."""
        cfg = self.cfg
        signer = Signer.from_pem_file(cfg.kalshi.key_id, cfg.kalshi.private_key_file)
        if not await self._wait_for_database(stop):
            return 0
        m = self.metrics
        m.ws_configured.labels(cfg.gatherer_id).set(cfg.connections)
        writer = Writer(
            cfg.database.dsn.reveal(),
            cfg.spool_dir,
            metrics=m,
            batch_rows=cfg.database.batch_rows,
            flush_interval_s=cfg.database.flush_interval_s,
            queue_rows=cfg.database.queue_rows,
            connect_timeout_s=cfg.database.connect_timeout_s,
            spool_max_bytes=cfg.spool_max_bytes,
        )
        self.writer = writer
        await writer.start()
        put = writer.put
        ingest = Ingest(put)
        self.ingest = ingest
        manager = ConnectionManager(cfg, signer, ingest, m)
        self.manager = manager
        # Back-pressure (issue 14): a full spool stops reading the exchange, a drained one
        # resumes it; a spool left full by an earlier run starts the connections paused.
        writer.on_backpressure = lambda full: manager.set_reading(not full)
        manager.set_reading(not writer.spool_full)
        bucket = TokenBucket(
            cfg.kalshi.rest_rate_per_s * REQUEST_COST, cfg.kalshi.rest_burst * REQUEST_COST
        )

        def on_rest_retry(attempt: int, exc: BaseException, delay: float) -> None:
            m.rest_errors.labels(cfg.gatherer_id, "retry").inc()
            log.info("REST retry %d after %s (in %.2fs)", attempt, type(exc).__name__, delay)

        rest = KalshiRest(
            cfg.kalshi.rest_url,
            signer=signer,
            bucket=bucket,
            policy=RetryPolicy(base_s=cfg.backoff_base_s, cap_s=cfg.backoff_cap_s, max_attempts=8),
            timeout_s=cfg.kalshi.rest_timeout_s,
            request_cost=REQUEST_COST,
            on_retry=on_rest_retry,
        )
        registry = Registry(
            rest,
            put,
            ingest,
            m,
            open_markets=manager.add_markets,
            close_markets=manager.remove_markets,
            statuses=cfg.market_statuses,
            mve_markets=cfg.mve_markets,
        )
        self.registry = registry
        ingest.on_lifecycle = registry.on_lifecycle
        health = HealthServer(
            cfg.http.listen, health=self.health, ready=self.ready, registry=m.registry
        )
        self.health_server = health
        await health.start()
        log.info(
            "gatherer %s serving health on %s:%d",
            cfg.gatherer_id,
            health.host,
            health.port,
            extra={"http_port": health.port},
        )
        manager.start()
        self._spawn(
            "registry",
            registry.run(
                cfg.reconcile_interval_s, RetryPolicy(cfg.backoff_base_s, cfg.backoff_cap_s)
            ),
        )
        if cfg.snapshot_interval_s > 0:
            poller = SnapshotPoller(
                rest,
                put,
                ingest,
                lambda: sorted(registry.markets),
                m,
                interval_s=cfg.snapshot_interval_s,
                batch=cfg.snapshot_batch,
            )
            self.poller = poller
            self._spawn("snapshots", self._after_load(poller.run))
        self._spawn("partitions", self._partitions_loop())
        self._spawn("metrics", self._metrics_loop())
        code = 0
        stop_task = asyncio.create_task(stop.wait(), name="stop-wait")
        try:
            watched = {stop_task, *self._tasks, *manager.tasks}
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop_task and not t.cancelled() and t.exception() is not None:
                    log.error("stopping: task %s failed", t.get_name())
                    code = 1
        finally:
            stop_task.cancel()
            code = await self._shutdown(rest) or code
        return code

    async def _after_load(self, fn: Callable[[], Awaitable[None]]) -> None:
        registry = self.registry
        assert registry is not None
        await registry.loaded_event.wait()
        await fn()

    async def _shutdown(self, rest: KalshiRest) -> int:
        log.info("stopping: closing WebSockets (no more reads)")
        if self.manager is not None:
            await self.manager.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await rest.close()
        ingest = self.ingest
        if ingest is not None:
            self.rows_put = dict(ingest.rows)
        code = 0
        if self.writer is not None:
            log.info("stopping: draining the writer (up to %.0fs)", self.cfg.stop_timeout_s)
            try:
                await self.writer.stop(self.cfg.stop_timeout_s)
            except Exception:
                log.exception("writer stop failed")
                code = 1
            if self.writer.lost_at_stop:
                code = 1  # logged by the writer: neither the database nor the disk took them
        if self.health_server is not None:
            await self.health_server.stop()
        log.info(
            "gatherer stopped; rows received per table: %s",
            self.rows_put,
            extra={"rows_received": self.rows_put},
        )
        return code

    # -- upkeep -----------------------------------------------------------------------------
    async def _partitions_loop(self) -> None:
        db = self.cfg.database
        while True:
            await asyncio.sleep(db.partitions_interval_s)
            try:
                created = await prepare_database(db.dsn.reveal(), db.connect_timeout_s)
                if created:
                    log.info("created %d daily partitions", created)
            except asyncio.CancelledError:
                raise
            except PermanentError:
                log.exception("local database check failed: refusing to keep writing")
                raise
            except Exception as exc:
                log.warning("partition upkeep failed (%s); next try later", type(exc).__name__)

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.update_metrics()

    def update_metrics(self) -> None:
        """Publish the components' counters to the Prometheus families."""
        m = self.metrics
        gid = self.cfg.gatherer_id
        ingest, manager, writer = self.ingest, self.manager, self.writer
        if ingest is not None:
            messages, dead = ingest.take_counts()
            for channel, n in messages.items():
                m.messages.labels(gid, channel).inc(n)
            for source, n in dead.items():
                m.dead_letters.labels(gid, source).inc(n)
            if ingest.subunit_prices > self._subunit_reported:
                m.subunit_prices.labels(gid).inc(ingest.subunit_prices - self._subunit_reported)
                self._subunit_reported = ingest.subunit_prices
            if ingest.gaps_opened > self._gaps_reported:
                m.gaps.labels(gid).inc(ingest.gaps_opened - self._gaps_reported)
                self._gaps_reported = ingest.gaps_opened
            age = self.last_message_age()
            if age is not None:
                m.last_message_age.labels(gid).set(age)
        if manager is not None:
            m.ws_up.labels(gid).set(manager.up)
        if writer is not None:
            m.db_up.labels(gid).set(1 if writer.db_up else 0)
            m.spool_bytes.labels(gid).set(writer.spool_bytes)
            m.spool_full.labels(gid).set(1 if writer.spool_full else 0)
            for spec in SYNCED_TABLES:
                m.queue_depth.labels(gid, spec.name).set(writer.queue_depth(spec.name))
        status = self._status()
        m.health_status.labels(gid).set({"healthy": 2, "degraded": 1}.get(status, 0))

    # -- health -----------------------------------------------------------------------------
    def last_message_age(self) -> float | None:
        """Seconds since the last data frame (None before the first)."""
        ingest = self.ingest
        if ingest is None or ingest.last_data_mono == 0.0:
            return None
        return time.monotonic() - ingest.last_data_mono

    def _status(self) -> str:
        manager, writer = self.manager, self.writer
        if manager is None or writer is None:
            return "unhealthy"
        if writer.spool_full:
            return "degraded"  # reading paused on purpose until the spool drains
        if manager.up == 0:
            return "unhealthy"
        age = self.last_message_age()
        if (
            manager.up < len(manager.connections)
            or not writer.db_up
            or (age is not None and age > self.cfg.stale_after_s)
            or (self.registry is not None and not self.registry.loaded)
        ):
            return "degraded"
        return "healthy"

    async def health(self) -> dict[str, Any]:
        """``/health``: status and components (no secrets, no hosts)."""
        manager, writer, ingest, registry = self.manager, self.writer, self.ingest, self.registry
        age = self.last_message_age()
        return {
            "status": self._status(),
            "gatherer": self.cfg.gatherer_id,
            "components": {
                "database": {"up": bool(writer is not None and writer.db_up)},
                "connections": {
                    "up": manager.up if manager is not None else 0,
                    "total": self.cfg.connections,
                },
                "markets": len(registry.markets) if registry is not None else 0,
                "registry_loaded": bool(registry is not None and registry.loaded),
                "spool_bytes": writer.spool_bytes if writer is not None else 0,
                "spool_max_bytes": self.cfg.spool_max_bytes,
                "spool_full": bool(writer is not None and writer.spool_full),
                "spool_disk_error": writer.disk_error if writer is not None else None,
                "last_message_age_s": None if age is None else round(age, 3),
                "open_gaps": len(ingest.gaps.pending_gaps()) if ingest is not None else 0,
                "suspect_markets": ingest.gaps.suspect_count if ingest is not None else 0,
            },
        }

    async def ready(self) -> bool:
        """``/ready``: writer started, registry loaded, at least one connection up."""
        return bool(
            self.writer is not None
            and self.manager is not None
            and self.manager.up > 0
            and self.registry is not None
            and self.registry.loaded
        )
