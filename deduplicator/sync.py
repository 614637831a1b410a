"""One gatherer's sync loop: poll below the horizon, merge batch after batch, never skip.

Each gatherer has its own loop, its own connections (gatherer and production), its own circuit
breaker and backoff: an unreachable gatherer is skipped while the others continue, and is caught
up at full speed when it returns (batches back to back until nothing is pending).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from deduplicator import sink, source
from deduplicator.config import DedupConfig, GathererSource
from deduplicator.errors import CursorMoved, FatalError, NotLeader, SourceError
from deduplicator.lease import LeaseState
from deduplicator.metrics import DedupMetrics
from kalshi_data.jsonlog import correlation
from kalshi_data.resilience import Backoff, BreakerState, CircuitBreaker, ErrorClass, classify
from kalshi_data.tables import SYNCED_TABLES

log = logging.getLogger("deduplicator.sync")

#: How often the gatherer cluster's identity is checked again while connected (a restore that
#: rewinds xids without a reconnect is caught within this).
IDENTITY_CHECK_S = 10.0

_BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass
class TableProgress:
    """Freshness bookkeeping for one (gatherer, table)."""

    cursor: tuple[int, int] = (0, 0)
    #: wall time up to which this table is known complete: the time we last found nothing
    #: pending, or the received_at of the newest row merged while a backlog remained.
    fresh_until: float | None = None
    backlog: int = 0


@dataclass
class GathererStatus:
    """What /health reports for one gatherer (no DSNs, no error texts: they may hold secrets)."""

    up: bool = False
    last_error: str | None = None
    tables: dict[str, TableProgress] = field(default_factory=dict)
    system_identifier: str | None = None


class GathererSync:
    """The loop that moves one gatherer's rows into production."""

    def __init__(
        self,
        cfg: DedupConfig,
        src: GathererSource,
        lease: LeaseState,
        metrics: DedupMetrics,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.src = src
        self.lease = lease
        self.metrics = metrics
        self.status = GathererStatus(tables={t.name: TableProgress() for t in SYNCED_TABLES})
        self.breaker = CircuitBreaker(
            f"gatherer-{src.id}",
            failure_threshold=cfg.breaker_failures,
            reset_timeout_s=cfg.breaker_reset_s,
        )
        self.backoff = Backoff(0.1, cfg.backoff_cap_s)
        self.wake = wake or asyncio.Event()
        self._gconn: asyncpg.Connection | None = None
        self._pconn: asyncpg.Connection | None = None
        self._positions: dict[str, tuple[int, int]] | None = None
        self._checked_at = 0.0

    # ------------------------------------------------------------------ connections
    def _on_notify(self, *_args: object) -> None:
        self.wake.set()

    async def _gatherer(self) -> asyncpg.Connection:
        if self._gconn is None or self._gconn.is_closed():
            try:
                conn = await source.connect(
                    self.src.dsn.reveal(),
                    timeout_s=self.src.connect_timeout_s,
                    gatherer=self.src.id,
                )
                await conn.add_listener("kd_ingest", self._on_notify)
            except Exception as exc:
                raise SourceError(self.src.id, "connect failed") from exc
            self._gconn = conn
        return self._gconn

    async def _production(self) -> asyncpg.Connection:
        if self._pconn is None or self._pconn.is_closed():
            self._pconn = await sink.connect(
                self.cfg.production.dsn.reveal(),
                timeout_s=self.cfg.production.connect_timeout_s,
                statement_timeout_s=self.cfg.production.statement_timeout_s,
                instance=self.cfg.instance_id,
            )
        return self._pconn

    async def close(self) -> None:
        """Close both connections (abort in-flight work; the transaction rolls back)."""
        for conn in (self._gconn, self._pconn):
            if conn is not None and not conn.is_closed():
                conn.terminate()
        self._gconn = self._pconn = None
        self._positions = None

    # ------------------------------------------------------------------ loop
    async def run(self, stop: asyncio.Event) -> None:
        """Sync until ``stop`` is set or leadership is lost; permanent errors raise FatalError."""
        while not stop.is_set() and self.lease.leader:
            if not self.breaker.allow():
                self._publish_breaker()
                await _wait(stop, self.breaker.seconds_until_probe())
                continue
            try:
                with correlation():
                    progressed = await self._round()
            except NotLeader:
                log.warning("lost the lease while writing; stepping down")
                return
            except CursorMoved as exc:
                log.warning("cursor moved under this instance: %s; reloading", exc)
                self._positions = None
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(exc)
                await _wait(stop, self.backoff.next_delay())
                continue
            self.breaker.record_success()
            self.backoff.reset()
            self._publish_breaker()
            if not progressed:
                self.wake.clear()
                await _wait_event(stop, self.wake, self.cfg.poll_interval_s)

    async def _failed(self, exc: BaseException) -> None:
        cause = exc.__cause__ if isinstance(exc, SourceError) and exc.__cause__ else exc
        kind = classify(cause)
        where = "gatherer" if isinstance(exc, SourceError) else "production"
        self.status.last_error = f"{where}: {type(cause).__name__}"
        if kind is ErrorClass.PERMANENT:
            await self.close()
            which = self.src.id if where == "gatherer" else "production"
            raise FatalError(
                f"permanent error from {where} ({which}): "
                f"{type(cause).__name__}: {_safe_message(cause)}"
            ) from exc
        if where == "gatherer":
            self.status.up = False
            self.metrics.gatherer_up.labels(self.src.id).set(0)
            self.breaker.record_failure()
            self._publish_breaker()
        else:
            self.metrics.production_errors.labels(type(cause).__name__).inc()
        log.warning(
            "sync of %s failed (%s: %s); retrying with backoff",
            self.src.id,
            where,
            type(cause).__name__,
        )
        await self.close()

    def _publish_breaker(self) -> None:
        self.metrics.breaker_state.labels(f"gatherer-{self.src.id}").set(
            _BREAKER_VALUE[self.breaker.state]
        )

    async def _check_cursors(
        self, gconn: asyncpg.Connection, pconn: asyncpg.Connection
    ) -> dict[str, tuple[int, int]]:
        """Check the gatherer cluster's identity against the stored cursors (pin, or reset for a
        rescan) and return every table's cursor position."""
        try:
            ident = await source.identity(gconn)
        except Exception as exc:
            raise SourceError(self.src.id, "identity query failed") from exc
        self.status.up = True
        self.status.system_identifier = ident.system_identifier
        self.metrics.gatherer_up.labels(self.src.id).set(1)
        cursors = await sink.load_cursors(pconn, self.src.id)
        changed = False
        for name, stored in cursors.items():
            if stored.system_identifier is None:
                await sink.pin_or_reset(
                    pconn, self.src.id, name, system_identifier=ident.system_identifier, reset=False
                )
            elif (
                stored.system_identifier != ident.system_identifier
                or stored.position[0] > ident.next_xid
            ):
                # A rebuilt cluster (new identifier) or a restored one (xids rewound): the stored
                # position means nothing there. Rescan from the start; merges are idempotent.
                log.warning(
                    "gatherer %s table %s: cluster identity changed or xids rewound; rescanning",
                    self.src.id,
                    name,
                )
                await sink.pin_or_reset(
                    pconn, self.src.id, name, system_identifier=ident.system_identifier, reset=True
                )
                self.metrics.cursor_rescans.labels(self.src.id, name).inc()
                changed = True
        if changed:
            cursors = await sink.load_cursors(pconn, self.src.id)
        self._checked_at = time.monotonic()
        return {name: c.position for name, c in cursors.items()}

    async def _round(self) -> bool:
        """Merge at most one batch per table; True when anything was merged.

        Cursor positions are cached between rounds (the CAS in every merge still checks them
        against production); they are reloaded, and the cluster identity checked again, after a
        reconnect, a failed CAS, and every ``IDENTITY_CHECK_S`` seconds.
        """
        gconn = await self._gatherer()
        pconn = await self._production()
        if self._positions is None or time.monotonic() - self._checked_at > IDENTITY_CHECK_S:
            self._positions = await self._check_cursors(gconn, pconn)
        positions = self._positions
        try:
            horizon = await source.horizon(gconn)
        except Exception as exc:
            raise SourceError(self.src.id, "horizon query failed") from exc
        progressed = False
        now = time.time()
        for spec in SYNCED_TABLES:
            if not self.lease.leader:
                raise NotLeader("stepped down")
            progress = self.status.tables[spec.name]
            cursor = positions[spec.name]
            progress.cursor = cursor
            try:
                bounds = await source.next_batch(
                    gconn,
                    spec,
                    cursor,
                    horizon,
                    max_rows=self.cfg.batch_rows,
                    max_bytes=self.cfg.batch_bytes,
                )
            except Exception as exc:
                raise SourceError(self.src.id, f"batch query on {spec.name} failed") from exc
            if bounds is None:
                progress.fresh_until = now
                progress.backlog = 0
                continue
            started = time.monotonic()
            pipe = source.copy_pipe(gconn, spec, bounds)
            try:
                result = await sink.merge_batch(pconn, self.lease, self.src.id, spec, bounds, pipe)
            except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
                # Was it the gatherer side of the pipe? Then count it against the gatherer.
                if pipe_failed_on_source(exc, gconn):
                    raise SourceError(self.src.id, f"copy of {spec.name} failed") from exc
                raise
            finally:
                await pipe.close()
            self.metrics.batch_seconds.observe(time.monotonic() - started)
            self.metrics.record_merge(self.src.id, spec.name, result.rows, result.inserted)
            progress.cursor = bounds.end
            positions[spec.name] = bounds.end
            progressed = True
            if bounds.rows < self.cfg.batch_rows and result.newest_received_at is not None:
                # The batch took everything pending below the horizon at `now`.
                progress.fresh_until = now
            elif result.newest_received_at is not None:
                progress.fresh_until = result.newest_received_at
            full = bounds.rows >= self.cfg.batch_rows
            progress.backlog = await source.backlog(gconn, spec, bounds.end[1]) if full else 0
        return progressed

    def publish_lag(self, now: float) -> None:
        """Refresh lag and backlog gauges (called periodically: lag grows while a gatherer is
        down, because nothing refreshes ``fresh_until`` then)."""
        for name, progress in self.status.tables.items():
            if progress.fresh_until is not None:
                self.metrics.sync_lag.labels(self.src.id, name).set(
                    max(0.0, now - progress.fresh_until)
                )
            self.metrics.backlog.labels(self.src.id, name).set(progress.backlog)


def pipe_failed_on_source(exc: BaseException, gconn: asyncpg.Connection) -> bool:
    """True when the gatherer connection is the one that broke."""
    return gconn.is_closed() and not isinstance(exc, asyncpg.PostgresError)


def _safe_message(exc: BaseException) -> str:
    """An error message without anything that looks like a DSN or password."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if "://" not in text and "password=" not in text else "(redacted)"


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return


async def _wait_event(stop: asyncio.Event, event: asyncio.Event, seconds: float) -> None:
    waiters = {
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(event.wait()),
    }
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
