"""One gatherer's sync loop: poll below the horizon, merge batch after batch, never skip.

Each gatherer has its own loop, its own connections (gatherer and production), its own circuit
breaker and backoff: an unreachable gatherer is skipped while the others continue, and is caught
up at full speed when it returns (batches back to back until nothing is pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from deduplicator import sink, source
from deduplicator.config import DedupConfig, GathererSource
from deduplicator.errors import CursorMoved, FatalError, NotLeader, SourceError
from deduplicator.lease import LeaseState
from deduplicator.metrics import DedupMetrics
from deduplicator.seen import SeenIdentities
from kalshi_data.copypipe import CopyPipe
from kalshi_data.errors import describe_error
from kalshi_data.jsonlog import correlation
from kalshi_data.resilience import (
    BreakerState,
    CircuitBreaker,
    ErrorClass,
    RetryPolicy,
    Supervisor,
    classify,
)
from kalshi_data.tables import SYNCED_TABLES, TableSpec

log = logging.getLogger("deduplicator.sync")
_T = TypeVar("_T")

#: Table kinds whose rows are immutable once merged (``ON CONFLICT DO NOTHING``): only these
#: use the seen-identity filter. Metadata is upserted when newer; logs never repeat.
SEEN_KINDS = frozenset({"event", "state"})
#: How long, and how many times, a loop waits for another loop's overlapping merge.
CLAIM_WAIT_S = 30.0
CLAIM_WAITS = 3

#: First backoff ceiling of a sync loop, seconds (the cap is ``backoff_cap_s``).
SYNC_BACKOFF_BASE_S = 0.1

#: How often the gatherer cluster's identity is checked again while connected (a restore that
#: rewinds xids without a reconnect is caught within this).
IDENTITY_CHECK_S = 10.0

#: A merged batch: its bounds, the merge's result, and the time it was known complete at.
_Merged = tuple[source.BatchBounds, sink.MergeResult, float]

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


@dataclass(frozen=True, slots=True)
class ReadAhead:
    """A table's next batch, read while this loop waited for another loop's merge."""

    bounds: source.BatchBounds
    keys: source.BatchKeys
    taken_at: float


class GathererSync:
    """The loop that moves one gatherer's rows into production."""

    def __init__(
        self,
        cfg: DedupConfig,
        src: GathererSource,
        lease: LeaseState,
        metrics: DedupMetrics,
        wake: asyncio.Event | None = None,
        seen: SeenIdentities | None = None,
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
        self.wake = wake or asyncio.Event()
        self.seen = seen if seen is not None else SeenIdentities(cfg.seen_cache_rows)
        self._gconn: asyncpg.Connection | None = None
        self._pconn: asyncpg.Connection | None = None
        self._positions: dict[str, tuple[int, int]] | None = None
        self._checked_at = 0.0
        self._ahead: dict[str, ReadAhead] = {}
        #: Tables named by NOTIFY since the last round; tables that may still hold rows (a full
        #: batch, or notified but their rows not yet below the horizon); last full round.
        self._notified: set[str] = set()
        self._pending: set[str] = set()
        self._full_round_at = 0.0

    # ------------------------------------------------------------------ connections
    def _on_notify(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        # The payload is the table that committed rows (kd_notify_ingest).
        self._notified.add(str(payload))
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
            # Production may have changed while we were away (failover, restore): forget what
            # this process believed it had committed there.
            self.seen.clear()
            self._pconn = await sink.connect(
                self.cfg.production.dsn.reveal(),
                timeout_s=self.cfg.production.connect_timeout_s,
                statement_timeout_s=self.cfg.production.statement_timeout_s,
                instance=self.cfg.instance_id,
            )
        return self._pconn

    async def close(self) -> None:
        """Close both connections (abort in-flight work; the transaction rolls back)."""
        self._drop()

    def _drop(self) -> None:
        for conn in (self._gconn, self._pconn):
            if conn is not None and not conn.is_closed():
                conn.terminate()
        self._gconn = self._pconn = None
        self._positions = None
        self._ahead.clear()
        self._full_round_at = 0.0  # reconnected: look at every table first

    # ------------------------------------------------------------------ loop
    async def run(self, stop: asyncio.Event) -> None:
        """Sync until ``stop`` is set or leadership is lost; permanent errors raise FatalError.

        Rounds run under one :class:`Supervisor`: a failed round is classified, counted against
        the gatherer's breaker when the gatherer failed, and retried after a Full-Jitter delay
        (or once the breaker allows a probe); a permanent error closes both connections and
        ends the loop with a FatalError.
        """
        sup = Supervisor(
            f"sync of {self.src.id}",
            policy=RetryPolicy(SYNC_BACKOFF_BASE_S, self.cfg.backoff_cap_s),
            breaker=self.breaker,
            stop=stop,
            classify_fn=self._verdict,
            breaker_fault=lambda exc: isinstance(exc, SourceError),
            on_failure=self._on_failure,
            on_giveup=self._on_giveup,
            on_success=self._publish_breaker,
        )
        while not stop.is_set() and self.lease.leader:
            try:
                progressed = await sup.run(self._attempt)
            except Exception as exc:  # only permanent errors: _on_giveup closed the connections
                raise self._fatal_error(exc) from exc
            if progressed is None:
                return
            if not progressed:
                await wait_events([stop, self.wake], self.cfg.poll_interval_s, first=True)

    async def _attempt(self) -> bool | None:
        """One round: True when it merged anything (or must reload its cursors: go again at
        once), False when there was nothing to merge, None when this instance no longer leads."""
        if not self.lease.leader:
            return None
        # Cleared *before* the round: a notification that arrives while the round runs (after
        # its table was read) wakes the next round instead of being lost until the poll interval.
        self.wake.clear()
        try:
            with correlation():
                return await self._round()
        except NotLeader:
            log.warning("lost the lease while writing; stepping down")
            return None
        except CursorMoved as exc:
            log.warning("cursor moved under this instance: %s; reloading", exc)
            self._positions = None
            return True

    def _blame(self, exc: BaseException) -> tuple[str, BaseException]:
        """Which side failed (``gatherer`` or ``production``) and the driver error itself."""
        if isinstance(exc, SourceError):
            return "gatherer", exc.__cause__ or exc
        return "production", exc

    def _verdict(self, exc: BaseException) -> ErrorClass:
        where, cause = self._blame(exc)
        return lost_connection_verdict(cause, self._gconn if where == "gatherer" else self._pconn)

    def _on_failure(self, exc: BaseException, _verdict: ErrorClass, _delay: float) -> None:
        where, cause = self._blame(exc)
        self.status.last_error = f"{where}: {type(cause).__name__}"
        if where == "gatherer":
            self.status.up = False
            self.metrics.gatherer_up.labels(self.src.id).set(0)
            self._publish_breaker()
        else:
            self.metrics.production_errors.labels(type(cause).__name__).inc()
        log.warning(
            "sync of %s failed (%s: %s); retrying with backoff",
            self.src.id,
            where,
            type(cause).__name__,
        )
        self._drop()

    def _on_giveup(self, exc: BaseException, _verdict: ErrorClass) -> None:
        where, cause = self._blame(exc)
        self.status.last_error = f"{where}: {type(cause).__name__}"
        self._drop()

    def _fatal_error(self, exc: BaseException) -> FatalError:
        where, cause = self._blame(exc)
        which = self.src.id if where == "gatherer" else "production"
        return FatalError(f"permanent error from {where} ({which}): {describe_error(cause)}")

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
                self.seen.clear()
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
        for spec in self._tables_to_visit(now):
            if not self.lease.leader:
                raise NotLeader("stepped down")
            progressed |= await self._sync_table(gconn, pconn, spec, positions, horizon, now)
        return progressed

    async def _sync_table(
        self,
        gconn: asyncpg.Connection,
        pconn: asyncpg.Connection,
        spec: TableSpec,
        positions: dict[str, tuple[int, int]],
        horizon: int,
        now: float,
    ) -> bool:
        """Merge at most one batch of ``spec`` and book its progress; True when one merged."""
        progress = self.status.tables[spec.name]
        cursor = positions[spec.name]
        progress.cursor = cursor
        started = time.monotonic()
        merged = await self._next_merge(gconn, pconn, spec, cursor, horizon, now)
        if merged is None:
            progress.fresh_until = now
            progress.backlog = 0
            return False  # (stays pending if it was notified: see _tables_to_visit)
        bounds, result, table_now = merged
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        self.metrics.record_merge(self.src.id, spec.name, result.rows, result.inserted)
        progress.cursor = bounds.end
        positions[spec.name] = bounds.end
        if bounds.rows < self.cfg.batch_rows and result.newest_received_at is not None:
            # The batch took everything pending below the horizon at `table_now`.
            progress.fresh_until = table_now
        elif result.newest_received_at is not None:
            progress.fresh_until = result.newest_received_at
        full = bounds.rows >= self.cfg.batch_rows
        progress.backlog = await source.backlog(gconn, spec, bounds.end[1]) if full else 0
        if full:
            self._pending.add(spec.name)
        else:
            self._pending.discard(spec.name)
        return True

    async def _next_merge(
        self,
        gconn: asyncpg.Connection,
        pconn: asyncpg.Connection,
        spec: TableSpec,
        cursor: tuple[int, int],
        horizon: int,
        now: float,
    ) -> _Merged | None:
        """Merge the next batch of ``spec`` (None when nothing is pending): whole for metadata
        and logs, through the seen-identity filter for immutable tables."""
        if spec.kind not in SEEN_KINDS or self.seen.max_rows <= 0:
            bounds = await self._next_batch(gconn, spec, cursor, horizon)
            if bounds is None:
                return None
            return bounds, await self._merge(gconn, pconn, spec, bounds, None, None), now
        ahead = self._ahead.pop(spec.name, None)
        if ahead is not None and ahead.bounds.start == cursor:
            # Read while waiting for another loop's merge (below an earlier horizon: still a
            # closed, stable range).
            keyed: tuple[source.BatchBounds, source.BatchKeys] | None = (ahead.bounds, ahead.keys)
            table_now = ahead.taken_at
        else:
            keyed, table_now = await self._keyed_batch(gconn, spec, cursor, horizon), now
        if keyed is None:
            return None
        result = await self._merge_filtered(gconn, pconn, spec, *keyed, horizon)
        return keyed[0], result, table_now

    def _tables_to_visit(self, now: float) -> list[TableSpec]:
        """Every table on a full round (the first, then every ``poll_interval_s``, and when a
        notification names no known table); otherwise only the tables notified since the last
        round and those still pending. A notified table stays pending until a batch of it is
        merged (its rows may not be below the horizon yet) or the next full round.

        Tables left out have had no commit since they were last read (NOTIFY is sent at every
        commit that inserts rows), so they are as fresh as this round.
        """
        notified, self._notified = self._notified, set()
        mono = time.monotonic()
        names = {spec.name for spec in SYNCED_TABLES}
        if mono - self._full_round_at >= self.cfg.poll_interval_s or not notified <= names:
            self._full_round_at = mono
            self._pending.clear()
            return list(SYNCED_TABLES)
        self._pending |= notified
        visit = [spec for spec in SYNCED_TABLES if spec.name in self._pending]
        for spec in SYNCED_TABLES:
            if spec.name not in self._pending:
                self.status.tables[spec.name].fresh_until = now
                self.status.tables[spec.name].backlog = 0
        return visit

    async def _merge(
        self,
        gconn: asyncpg.Connection,
        pconn: asyncpg.Connection,
        spec: TableSpec,
        bounds: source.BatchBounds,
        only_ids: list[int] | None,
        newest: float | None,
        *,
        stage: bool = True,
        direct: bool = False,
    ) -> sink.MergeResult:
        """One merge transaction, staging the batch (or only ``only_ids``, or nothing)."""

        def open_pipe(with_gatherer: bool) -> CopyPipe:
            gid = self.src.id if with_gatherer else None
            return source.copy_pipe(gconn, spec, bounds, only_ids, gid)

        try:
            return await sink.merge_batch(
                pconn,
                self.lease,
                self.src.id,
                spec,
                bounds,
                open_pipe if stage else None,
                newest=newest,
                direct=direct,
            )
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            # Was it the gatherer side of the pipe? Then count it against the gatherer.
            if stage and pipe_failed_on_source(exc, gconn):
                raise SourceError(self.src.id, f"copy of {spec.name} failed") from exc
            raise

    async def _next_batch(
        self,
        gconn: asyncpg.Connection,
        spec: TableSpec,
        cursor: tuple[int, int],
        horizon: int,
    ) -> source.BatchBounds | None:
        return await self._from_source(
            spec, source.next_batch(gconn, spec, cursor, horizon, **self._limits())
        )

    async def _keyed_batch(
        self,
        gconn: asyncpg.Connection,
        spec: TableSpec,
        cursor: tuple[int, int],
        horizon: int,
    ) -> tuple[source.BatchBounds, source.BatchKeys] | None:
        return await self._from_source(
            spec, source.keyed_batch(gconn, spec, cursor, horizon, **self._limits())
        )

    def _limits(self) -> dict[str, int]:
        return {"max_rows": self.cfg.batch_rows, "max_bytes": self.cfg.batch_bytes}

    async def _from_source(self, spec: TableSpec, call: Awaitable[_T]) -> _T:
        """Await a batch query; its failure counts against the gatherer."""
        try:
            return await call
        except Exception as exc:
            raise SourceError(self.src.id, f"batch query on {spec.name} failed") from exc

    async def _read_ahead(
        self, gconn: asyncpg.Connection, spec: TableSpec, after: source.BatchBounds, horizon: int
    ) -> None:
        """The batch after ``after`` with its keys, kept for the next round."""
        taken_at = time.time()
        nxt = await self._keyed_batch(gconn, spec, after.end, horizon)
        if nxt is not None:
            self._ahead[spec.name] = ReadAhead(nxt[0], nxt[1], taken_at)

    async def _merge_filtered(
        self,
        gconn: asyncpg.Connection,
        pconn: asyncpg.Connection,
        spec: TableSpec,
        bounds: source.BatchBounds,
        batch: source.BatchKeys,
        horizon: int,
    ) -> sink.MergeResult:
        """Merge staging only the rows whose identity this process has not committed yet."""
        found = self.seen.filter(spec.name, batch.keys)
        waited = 0
        while found.wait_for and waited < CLAIM_WAITS:
            # Another loop is staging some of these keys right now: let it finish, then look
            # again (after CLAIM_WAITS waits, stage anyway: the merge is idempotent). Meanwhile
            # the idle gatherer connection reads the next batch's bounds and digests, so this
            # loop can claim that batch the moment it is through this one.
            waited += 1
            ahead = None
            if spec.name not in self._ahead and bounds.rows >= self.cfg.batch_rows:
                ahead = asyncio.create_task(self._read_ahead(gconn, spec, bounds, horizon))
            try:
                await wait_events([c.done for c in found.wait_for], CLAIM_WAIT_S)
                if ahead is not None:
                    await ahead  # the connection must be free again before the merge uses it
            finally:
                # Never leave a sub-task behind (cancelled, or the read-ahead failed): the
                # read-ahead would go on using the gatherer connection, and a failed task that
                # nobody awaits is "Task exception was never retrieved".
                if ahead is not None and not ahead.done():
                    ahead.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await ahead
            found = self.seen.filter(spec.name, batch.keys, wait=waited < CLAIM_WAITS)
        missing = found.missing
        staged = [batch.keys[i] for i in missing]
        claim = self.seen.claim(spec.name, staged) if missing else None
        try:
            if len(missing) == len(batch.ids):
                only: list[int] | None = None
            else:
                only = [batch.ids[i] for i in missing]
            result = await self._merge(
                gconn,
                pconn,
                spec,
                bounds,
                only,
                batch.newest_received_at,
                stage=bool(missing),
                direct=self.seen.direct_allowed(spec.name),
            )
            if result.conflicted:
                self.seen.direct_conflicted(spec.name)
                self.metrics.direct_conflicts.labels(self.src.id, spec.name).inc()
            suspect = batch.suspect_ids
            self.seen.add(
                spec.name,
                [d for i, d in zip(missing, staged, strict=True) if batch.ids[i] not in suspect],
            )
        finally:
            if claim is not None:
                self.seen.release(claim)
        self.metrics.seen_skipped.labels(self.src.id, spec.name).inc(len(batch.ids) - len(missing))
        self.metrics.seen_cache_rows.set(len(self.seen))
        return result

    def publish_lag(self, now: float) -> None:
        """Refresh lag and backlog gauges (called periodically: lag grows while a gatherer is
        down, because nothing refreshes ``fresh_until`` then)."""
        for name, progress in self.status.tables.items():
            if progress.fresh_until is not None:
                self.metrics.sync_lag.labels(self.src.id, name).set(
                    max(0.0, now - progress.fresh_until)
                )
            self.metrics.backlog.labels(self.src.id, name).set(progress.backlog)


def lost_connection_verdict(exc: BaseException, conn: asyncpg.Connection | None) -> ErrorClass:
    """:func:`classify`, except that an error raised on a connection that has since been lost is
    retryable: the loss is the fault, whatever the driver made of it (under uvloop a COPY into a
    connection the server dropped fails with a ``RuntimeError`` about the closed transport).
    Permanent errors at connect time (authentication, missing database) have no connection yet
    and stay permanent; so does bad SQL, which leaves the connection open."""
    kind = classify(exc)
    if kind is ErrorClass.PERMANENT and conn is not None and conn.is_closed():
        return ErrorClass.RETRYABLE
    return kind


def pipe_failed_on_source(exc: BaseException, gconn: asyncpg.Connection) -> bool:
    """True when the gatherer connection is the one that broke."""
    return gconn.is_closed() and not isinstance(exc, asyncpg.PostgresError)


async def wait_events(
    events: Iterable[asyncio.Event], timeout_s: float, *, first: bool = False
) -> None:
    """Wait until every event (or, with ``first``, any one) is set, at most ``timeout_s``.

    The waiter tasks are cancelled on the way out, however it ends (timeout, cancellation):
    none is left pending on an event that may never be set.
    """
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    if not waiters:
        return
    try:
        await asyncio.wait(
            waiters,
            timeout=timeout_s,
            return_when=asyncio.FIRST_COMPLETED if first else asyncio.ALL_COMPLETED,
        )
    finally:
        for w in waiters:
            w.cancel()
