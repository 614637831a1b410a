"""The gatherer's writer: bounded queues -> binary COPY into the local database, or the disk spool.

Flow (DESIGN §4.4, bounded memory and no silent drops):

- :meth:`Writer.put` appends a row to its table's queue and never blocks. A queue at
  ``queue_rows`` is spilled whole to the spool, so memory stays bounded whatever the database does.
- One loop task takes up to ``batch_rows`` rows per table every ``flush_interval_s`` (sooner when
  a queue holds a full batch) and COPYs them, all tables in one transaction.
- A unique violation (23505) means some rows are already there (a reconnect repeated a state, a
  spool replay repeats a batch whose commit was not acknowledged): the batch is re-run through a
  TEMP staging table and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. Spool replays always
  take that path. No duplicate is ever stored.
- A retryable error (connection lost, shutdown, timeout) sends the batch to the spool and starts a
  background reconnect with the shared Full-Jitter backoff; while the database is down every batch
  goes to the spool. Once it is back, the spool is replayed oldest first, each segment deleted
  only after all its batches committed, then queued rows are written again.
- A permanent error (a CHECK violation, a value the encoder refuses) is narrowed down by bisecting
  the batch: good rows commit, each bad row becomes a ``dead_letters`` row (source ``writer``,
  reason SQLSTATE + constraint, raw = JSON of the row). A dead letter that itself cannot be stored
  is appended to ``<spool_dir>/rejected.jsonl`` and logged: never dropped, never a loop.

Shutdown (:meth:`Writer.stop`): drain the queues to the database within the timeout, else spool
them; fsync; close. A spool left behind is replayed by the next writer on the same directory.

The spool's disk bound (``spool_max_bytes``, issue 14) is soft: a row that :meth:`Writer.put`
accepted is never dropped. Once the spool reaches the bound, or the disk refuses an append (any
``OSError``: ENOSPC, EFBIG, EIO), the writer is *full*: it says so loudly once per episode, calls
``on_backpressure(True)`` (the gatherer then stops reading the exchange, so the loss is a recorded
connection gap, never a silent drop) and keeps going: rows still spool while the disk takes them
(the overshoot is what was in flight), rows the disk refused stay in the in-memory queues and the
append is retried every ``DISK_RETRY_S``. It is no longer full once the disk takes appends again
(or the database takes the rows) and the spool is below ``LOW_WATER`` of the bound:
``on_backpressure(False)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gatherer.metrics import GathererMetrics
from gatherer.pgcodec import (
    error_reason,
    insert_from_stage_sql,
    inserted_count,
    register_codecs,
    render_raw,
    stage_ddl,
    stage_name,
)
from gatherer.spool import DEFAULT_SEGMENT_BYTES, Damage, Spool, SpoolBatch
from kalshi_data.errors import TransientError, describe_error
from kalshi_data.pgcopy import copy_records
from kalshi_data.resilience import Backoff, ErrorClass, classify
from kalshi_data.tables import BY_NAME, DEAD_LETTERS

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
Batch = tuple[str, list[Row]]
UNIQUE_VIOLATION = "23505"
APPLICATION_NAME = "kalshi-data-gatherer-writer"
REJECTED_FILE = "rejected.jsonl"
#: The spool may take rows again (back-pressure released) below this fraction of the bound.
LOW_WATER = 0.9
#: After the disk refused an append, the next attempt waits this long (rows stay in memory).
DISK_RETRY_S = 1.0


def _now_us() -> int:
    return time.time_ns() // 1000


class _RateLimitedLog:
    """At most one message per ``interval_s``; counts what it suppressed in between."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += f" ({self._suppressed} similar messages suppressed)"
        self._last, self._suppressed = now, 0
        log.log(level, msg, *args)


class Writer:
    """Writes every row into the local PostgreSQL exactly once, via the spool when it is down.

    Args:
        dsn: the local database (a ``kd_gatherer_writer`` member is enough).
        spool_dir: where spool segments live (created when missing).
        metrics: the gatherer's metric families.
        batch_rows: at most this many rows per table per transaction.
        flush_interval_s: the longest a queued row waits before a write is attempted.
        queue_rows: per-table queue bound; a full queue is spilled to the spool.
        connect_timeout_s: per connection attempt.
        write_timeout_s: a transaction taking longer is abandoned (connection closed, batch
            spooled): a hung server must not stall the loop.
        backoff_base_s, backoff_cap_s: reconnect backoff (Full Jitter).
        spool_segment_bytes: spool segment size.
        spool_max_bytes: the spool's disk bound (0: no bound, only the disk's own size); a soft
            bound that signals back-pressure, see the module docstring.
        on_backpressure: called with True when the spool becomes full (bound reached or disk
            refusing) and with False once it is below the low-water mark and writable again.
    """

    def __init__(
        self,
        dsn: str,
        spool_dir: Path,
        *,
        metrics: GathererMetrics,
        batch_rows: int = 5000,
        flush_interval_s: float = 0.05,
        queue_rows: int = 100_000,
        connect_timeout_s: float = 5.0,
        write_timeout_s: float = 60.0,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        spool_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        spool_max_bytes: int = 0,
        on_backpressure: Callable[[bool], None] | None = None,
    ) -> None:
        if batch_rows <= 0 or queue_rows < batch_rows:
            raise ValueError("writer needs 0 < batch_rows <= queue_rows")
        if flush_interval_s <= 0 or connect_timeout_s <= 0 or write_timeout_s <= 0:
            raise ValueError("writer intervals and timeouts must be > 0")
        if spool_max_bytes < 0:
            raise ValueError("spool_max_bytes must be >= 0 (0: no bound)")
        self._dsn = dsn
        self._spool_dir = Path(spool_dir)
        self._spool = Spool(self._spool_dir, segment_bytes=spool_segment_bytes)
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._queue_rows = queue_rows
        self._connect_timeout_s = connect_timeout_s
        self._write_timeout_s = write_timeout_s
        self._backoff = Backoff(backoff_base_s, backoff_cap_s)
        self._spool_max = spool_max_bytes
        self._spool_low = int(spool_max_bytes * LOW_WATER)
        self.on_backpressure = on_backpressure
        self._full = False
        self._full_since: float | None = None
        self._disk_error: str | None = None
        self._disk_retry_at = 0.0
        self.full_episodes = 0
        #: Rows neither the database nor the disk took by the end of :meth:`stop` (logged).
        self.lost_at_stop = 0

        self._bind_metrics(metrics)

        # Insertion order follows SYNCED_TABLES, which ends with dead_letters: rows dead-lettered
        # while the other queues are spooled are still spooled in the same pass.
        self._queues: dict[str, deque[Row]] = {t: deque() for t in BY_NAME}
        self._ncols = {t: len(spec.columns) for t, spec in BY_NAME.items()}
        self._conn: Any = None
        self._staged: set[str] = set()
        self._inflight: list[Batch] = []
        self._wake = asyncio.Event()
        self._tick = asyncio.Event()
        self._started = False
        self._stopping = False
        self._stopped = False
        self._run_task: asyncio.Task[None] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._replay_resume: tuple[Path, int] | None = None
        self._replayed = [0, 0]  # batches, rows since the spool was last empty
        self._log_spill = _RateLimitedLog(10.0)
        self._log_dead = _RateLimitedLog(1.0)
        self._m_spool.set(self._spool.bytes)
        self._m_db_up.set(0)

    # ------------------------------------------------------------------ public API
    def _bind_metrics(self, metrics: GathererMetrics) -> None:
        """This gatherer's labelled children of every writer metric, set to their start values."""
        g = metrics.gatherer_id
        self._m_rows = {t: metrics.rows_written.labels(g, t) for t in BY_NAME}
        self._m_queue = {t: metrics.queue_depth.labels(g, t) for t in BY_NAME}
        self._m_write_s = metrics.write_seconds.labels(g)
        self._m_spool = metrics.spool_bytes.labels(g)
        self._m_db_up = metrics.db_up.labels(g)
        self._m_dead = metrics.dead_letters.labels(g, "writer")
        self._m_spool_full = metrics.spool_full.labels(g)
        self._m_spool_episodes = metrics.spool_full_episodes.labels(g)
        metrics.spool_max_bytes.labels(g).set(self._spool_max)
        self._m_spool_full.set(0)

    @property
    def db_up(self) -> bool:
        """True while the writer holds a working connection to the local database."""
        return self._conn is not None

    @property
    def spool_bytes(self) -> int:
        """Bytes waiting in the disk spool."""
        return self._spool.bytes

    @property
    def spool_max_bytes(self) -> int:
        """The spool's disk bound (0: none)."""
        return self._spool_max

    @property
    def spool_full(self) -> bool:
        """True while back-pressure is signalled (bound reached or the disk refusing appends)."""
        return self._full

    @property
    def disk_error(self) -> str | None:
        """The last spool append failure of the current disk-error episode, else None."""
        return self._disk_error

    def queue_depth(self, table: str) -> int:
        """Rows of ``table`` waiting in memory."""
        return len(self._queues[table])

    async def start(self) -> None:
        """Connect and start the loop (which replays any spool first).

        A database that is down is retried in the background while rows are spooled; a
        permanent refusal (wrong password, missing database) raises here: retrying hides it.
        """
        if self._started:
            raise RuntimeError("Writer.start() called twice")
        self._started = True
        if self._spool.has_data():
            log.info(
                "spool %s holds %d bytes from an earlier run: replaying it first",
                self._spool_dir,
                self._spool.bytes,
            )
        try:
            conn = await self._connect()
        except Exception as exc:
            if classify(exc) is ErrorClass.PERMANENT:
                raise
            self._mark_down(exc)
        else:
            self._set_up(conn)
        self._run_task = asyncio.create_task(self._run(), name="gatherer-writer")

    def put(self, table: str, row: Row) -> None:
        """Queue one row (``tables.py`` column order). Never blocks, never drops.

        A row of an unknown table or with the wrong number of values is dead-lettered.
        """
        q = self._queues.get(table)
        if q is None or len(row) != self._ncols[table]:
            self._bad_shape(table, row)
            return
        if self._stopped:
            self._disk_retry_at = 0.0
            self._spool_batches([(table, [row])])
            if q:
                q.clear()
                self.lost_at_stop += 1
                log.critical(
                    "a %s row arrived after stop and the spool %s refused it (%s): it is lost",
                    table,
                    self._spool_dir,
                    self._disk_error,
                )
                return
            self._spool.sync()
            return
        q.append(row)
        n = len(q)
        if n >= self._batch_rows:
            if n >= self._queue_rows:
                self._spill(table)
            self._wake.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the database is up, the queues are empty and the spool is replayed."""
        deadline = time.monotonic() + timeout_s
        while not self._idle():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._tick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._tick.wait()
        return True

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Drain the queues to the database within ``timeout_s``, else spool them; fsync; close."""
        if self._stopped:
            return
        self._stopping = True
        self._wake.set()
        task = self._run_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                log.warning("writer could not drain within %.1f s: spooling the rest", timeout_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._connect_task is not None:
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        self._stopped = True
        before = self._spool.bytes
        leftover, self._inflight = self._inflight, []
        self._disk_retry_at = 0.0  # one more try whatever the retry pacing says
        self._spool_batches(leftover)
        self._spool_queues()
        self._spool.close()
        self._m_spool.set(self._spool.bytes)
        await self._close_conn()
        lost = sum(len(q) for q in self._queues.values())
        if lost:
            self.lost_at_stop += lost
            for q in self._queues.values():
                q.clear()
            log.critical(
                "writer stopped with %d rows that neither the database nor the spool %s took "
                "(%s): they are lost",
                lost,
                self._spool_dir,
                self._disk_error,
            )
        if self._spool.bytes:
            log.info(
                "writer stopped: %d bytes spooled now, %d bytes waiting in %s for the next start",
                self._spool.bytes - before,
                self._spool.bytes,
                self._spool_dir,
            )
        else:
            log.info("writer stopped: every row committed")

    # ------------------------------------------------------------------ connection
    async def _connect(self) -> Any:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout_s,
            server_settings={"application_name": APPLICATION_NAME},
        )
        try:
            await register_codecs(conn)
        except BaseException:
            conn.terminate()
            raise
        self._staged = set()
        return conn

    def _set_up(self, conn: Any) -> None:
        self._conn = conn
        self._m_db_up.set(1)
        self._backoff.reset()
        if self._down_since is not None:
            log.info(
                "local database back up after %.1f s; replaying %d bytes of spool",
                time.monotonic() - self._down_since,
                self._spool.bytes,
            )
            self._down_since = None
        self._wake.set()

    def _mark_down(self, exc: BaseException) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self._m_db_up.set(0)
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "local database down (%s), spooling to %s", describe_error(exc), self._spool_dir
            )
        if not self._stopping and (self._connect_task is None or self._connect_task.done()):
            self._connect_task = asyncio.create_task(
                self._reconnect(), name="gatherer-writer-reconnect"
            )

    async def _reconnect(self) -> None:
        """Retry the database with the shared backoff until it answers (forever: rows spool)."""
        logged_permanent = False
        while True:
            await asyncio.sleep(self._backoff.next_delay())
            try:
                conn = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if classify(exc) is ErrorClass.PERMANENT and not logged_permanent:
                    # Mid-run, a permanent refusal still must not lose rows: keep spooling,
                    # keep trying, and say so loudly (gatherer_db_up stays 0 and alerts).
                    log.error(  # noqa: TRY400 (a refusal, not a bug: no traceback)
                        "local database refuses connections: %s; retrying", describe_error(exc)
                    )
                    logged_permanent = True
                continue
            self._set_up(conn)
            return

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            async with asyncio.timeout(2.0):
                await conn.close()
        except Exception:  # closing a broken connection: terminating is the answer
            conn.terminate()

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        while True:
            if not self._stopping and not self._ready():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval_s):
                        await self._wake.wait()
            self._wake.clear()
            try:
                done = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug, not a database fault: keep the rows (spool) and the loop alive.
                log.exception("writer step failed; its rows go to the spool")
                leftover, self._inflight = self._inflight, []
                self._spool_batches(leftover)
                self._mark_down(exc)
                done = False
            finally:
                for t, q in self._queues.items():
                    self._m_queue[t].set(len(q))
                self._m_spool.set(self._spool.bytes)
                self._check_bound()
                self._tick.set()
            if done:
                return

    def _ready(self) -> bool:
        if self._conn is None and self._disk_error is not None:
            return False  # the disk refused: retried at the flush pace, not in a spin
        if self._conn is not None and self._spool.has_data():
            return True
        return any(len(q) >= self._batch_rows for q in self._queues.values())

    def _idle(self) -> bool:
        return (
            self._conn is not None
            and not self._inflight
            and not self._spool.has_data()
            and not any(self._queues.values())
        )

    async def _step(self) -> bool:
        """One round of work; True when the loop should end (stopping and nothing left)."""
        if self._conn is None:
            if self._stopping:
                return True
            if any(self._queues.values()):
                self._spool_queues()
                await self._spool.sync_async()
            return False
        if self._stopping:
            # Drain what is in memory; a spool left behind is replayed by the next start.
            if not any(self._queues.values()):
                return True
            await self._write_queues()
            return False
        if self._spool.has_data():
            await self._replay()
            return False
        if any(self._queues.values()):
            await self._write_queues()
        return False

    def _take_batches(self) -> list[Batch]:
        batches: list[Batch] = []
        for t, q in self._queues.items():
            if not q:
                continue
            if len(q) <= self._batch_rows:
                rows = list(q)
                q.clear()
            else:
                rows = [q.popleft() for _ in range(self._batch_rows)]
            batches.append((t, rows))
        return batches

    async def _write_queues(self) -> None:
        batches = self._take_batches()
        self._inflight = batches
        try:
            await self._commit(batches, staged=False)
        except asyncio.CancelledError:
            raise  # stop() spools self._inflight
        except Exception as exc:
            if classify(exc) is ErrorClass.RETRYABLE:
                self._inflight = []
                self._spool_batches(batches)
                self._mark_down(exc)
                await self._spool.sync_async()
                return
            log.warning("a batch was refused (%s): isolating the bad rows", error_reason(exc))
            await self._isolate(batches, staged=False, spool_on_retryable=True)
        else:
            self._disk_ok()  # the database took them: memory no longer waits for the disk
        self._inflight = []

    # ------------------------------------------------------------------ database writes
    async def _commit(self, batches: Sequence[Batch], *, staged: bool) -> None:
        """One transaction for ``batches``; a unique violation re-runs it through staging."""
        conn = self._conn
        if conn is None:
            raise TransientError("local database connection is down")
        started = time.perf_counter()
        # A watchdog rather than a cancel: cancelling inside a transaction would still wait for
        # the rollback on a hung socket; terminating the connection fails every pending call.
        watchdog = asyncio.get_running_loop().call_later(self._write_timeout_s, self._abort, conn)
        counts: dict[str, int] = {}
        try:
            if staged:
                await self._ensure_stage(conn, [t for t, _ in batches])
            async with conn.transaction():
                for table, rows in batches:
                    spec = BY_NAME[table]
                    if staged:
                        await copy_records(conn, stage_name(spec), rows, spec.column_names)
                        status = await conn.execute(insert_from_stage_sql(spec))
                        counts[table] = inserted_count(status)
                    else:
                        await copy_records(conn, table, rows, spec.column_names)
                        counts[table] = len(rows)
        except Exception as exc:
            if staged or getattr(exc, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            duplicate = True
        else:
            duplicate = False
        finally:
            watchdog.cancel()
        if duplicate:
            await self._commit(batches, staged=True)
            return
        self._m_write_s.observe(time.perf_counter() - started)
        for table, n in counts.items():
            self._m_rows[table].inc(n)

    def _abort(self, conn: Any) -> None:
        log.warning(
            "a write took longer than %.1f s: closing the connection", self._write_timeout_s
        )
        conn.terminate()

    async def _ensure_stage(self, conn: Any, tables: Sequence[str]) -> None:
        for table in tables:
            if table not in self._staged:
                await conn.execute(stage_ddl(BY_NAME[table]))
                self._staged.add(table)

    async def _isolate(
        self, batches: Sequence[Batch], *, staged: bool, spool_on_retryable: bool
    ) -> bool:
        """Commit the good rows of refused batches, dead-letter the bad ones (bisection).

        Returns False when the database failed on the way (the rest is spooled when asked:
        live batches; a replayed batch is still in the spool).
        """
        for i, (table, rows) in enumerate(batches):
            pending = [rows]
            while pending:
                chunk = pending.pop()
                try:
                    await self._commit([(table, chunk)], staged=staged)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if classify(exc) is ErrorClass.RETRYABLE:
                        if spool_on_retryable:
                            rest = [(table, c) for c in [chunk, *reversed(pending)]]
                            self._spool_batches([*rest, *batches[i + 1 :]])
                            self._inflight = []
                        self._mark_down(exc)
                        return False
                    if len(chunk) == 1:
                        self._dead_letter(table, chunk[0], error_reason(exc))
                        continue
                    mid = len(chunk) // 2
                    pending.append(chunk[mid:])
                    pending.append(chunk[:mid])
        return True

    # ------------------------------------------------------------------ spool replay
    async def _replay(self) -> None:
        """Replay closed segments oldest first; delete each once all its batches committed."""
        self._spool.seal()
        for segment in self._spool.closed_segments():
            replayed = await self._replay_segment(segment)
            if replayed is None:
                return
            if replayed:
                kept = self._spool.quarantine(segment)
                log.error(
                    "spool segment had corrupt bytes: replayed what was intact, kept %s", kept
                )
            else:
                self._spool.remove(segment)
            self._m_spool.set(self._spool.bytes)
            self._check_bound()
        if not self._spool.has_data() and self._replayed[0]:
            log.info(
                "replayed %d batches (%d rows) from spool", self._replayed[0], self._replayed[1]
            )
            self._replayed = [0, 0]

    async def _replay_segment(self, segment: Path) -> bool | None:
        """Commit a segment's batches: None if the database failed, else whether it was corrupt."""
        resume = 0
        corrupt = False
        if self._replay_resume is not None and self._replay_resume[0] == segment:
            resume = self._replay_resume[1]
        chunk: list[SpoolBatch] = []
        n = 0
        with contextlib.closing(self._spool.read(segment)) as items:
            for item in items:
                if isinstance(item, Damage):
                    corrupt = corrupt or item.kind == "corrupt"
                    continue
                if item.end <= resume:
                    continue
                chunk.append(item)
                n += len(item.rows)
                if n >= self._batch_rows:
                    if not await self._replay_chunk(segment, chunk):
                        return None
                    chunk, n = [], 0
        if chunk and not await self._replay_chunk(segment, chunk):
            return None
        self._replay_resume = None
        return corrupt

    async def _replay_chunk(self, segment: Path, chunk: list[SpoolBatch]) -> bool:
        merged: dict[str, list[Row]] = {}
        for batch in chunk:
            if batch.table not in BY_NAME:
                for row in batch.rows:
                    self._dead_letter(batch.table, row, "writer: spooled row of an unknown table")
                continue
            merged.setdefault(batch.table, []).extend(batch.rows)
        batches = list(merged.items())
        try:
            if batches:
                await self._commit(batches, staged=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if classify(exc) is ErrorClass.RETRYABLE:
                self._mark_down(exc)
                return False
            log.warning("a spooled batch was refused (%s): isolating", error_reason(exc))
            if not await self._isolate(batches, staged=True, spool_on_retryable=False):
                return False
        self._replay_resume = (segment, chunk[-1].end)
        self._replayed[0] += len(chunk)
        self._replayed[1] += sum(len(b.rows) for b in chunk)
        return True

    # ------------------------------------------------------------------ spooling, dead letters
    def _append(self, table: str, rows: Sequence[Row]) -> bool:
        """One spool append; False when the disk refused (the caller keeps the rows)."""
        if self._disk_error is not None and time.monotonic() < self._disk_retry_at:
            return False
        try:
            self._spool.append(table, rows, on_reject=self._rejector(table))
        except OSError as exc:
            self._disk_refused(exc)
            return False
        self._disk_ok()
        self._check_bound()
        return True

    def _disk_refused(self, exc: OSError) -> None:
        self._disk_retry_at = time.monotonic() + DISK_RETRY_S
        first = self._disk_error is None
        self._disk_error = describe_error(exc)
        if first:
            log.error(
                "spool %s refused an append (%s): rows stay in memory, retried every %.0f s; "
                "the gatherer stops reading the exchange until the spool takes rows again",
                self._spool_dir,
                self._disk_error,
                DISK_RETRY_S,
            )
        self._check_bound()

    def _disk_ok(self) -> None:
        if self._disk_error is None:
            return
        log.warning(
            "spool %s takes rows again (the failure was %s)", self._spool_dir, self._disk_error
        )
        self._disk_error = None
        self._check_bound()

    def _check_bound(self) -> None:
        """Enter or leave the full state (back-pressure) from the spool size and disk state."""
        size = self._spool.bytes
        over = self._spool_max > 0 and size >= self._spool_max
        if not self._full:
            if not over and self._disk_error is None:
                return
            self._full, self._full_since = True, time.monotonic()
            self.full_episodes += 1
            self._m_spool_full.set(1)
            self._m_spool_episodes.inc()
            reason = (
                f"the disk refused an append ({self._disk_error})"
                if self._disk_error is not None
                else f"{size} bytes reached the bound of {self._spool_max} (spool_max_bytes)"
            )
            log.error(
                "spool %s is full: %s; signalling back-pressure (the gatherer stops reading the "
                "exchange, rows already accepted are kept)",
                self._spool_dir,
                reason,
            )
        elif self._disk_error is None and (self._spool_max == 0 or size < self._spool_low):
            self._full = False
            since = self._full_since or time.monotonic()
            self._m_spool_full.set(0)
            log.warning(
                "spool %s below its low-water mark (%d bytes) after %.1f s full: releasing "
                "back-pressure",
                self._spool_dir,
                size,
                time.monotonic() - since,
            )
        else:
            return
        callback = self.on_backpressure
        if callback is not None:
            try:
                callback(self._full)
            except Exception:  # the writer must go on whatever the listener does
                log.exception("back-pressure listener failed")

    def _spool_batches(self, batches: Sequence[Batch]) -> None:
        """Spool batches; whatever the disk refuses goes back to the front of the queues."""
        refused: list[tuple[str, Sequence[Row]]] = []
        for table, rows in batches:
            for i in range(0, len(rows), self._batch_rows):
                chunk = rows[i : i + self._batch_rows]
                if refused or not self._append(table, chunk):
                    refused.append((table, chunk))
        for table, back in reversed(refused):
            self._queues[table].extendleft(reversed(back))
        self._m_spool.set(self._spool.bytes)

    def _spool_queues(self) -> None:
        for table in self._queues:
            self._spool_queue(table)

    def _spill(self, table: str) -> None:
        q = self._queues[table]
        n = len(q)
        self._spool_queue(table)
        self._log_spill(
            logging.WARNING,
            "writer queue for %s reached %d rows: spilling to spool %s",
            table,
            n,
            self._spool_dir,
        )

    def _spool_queue(self, table: str) -> None:
        q = self._queues[table]
        while q:
            n = min(len(q), self._batch_rows)
            if not self._append(table, list(itertools.islice(q, n))):
                break  # the disk refused: the rows stay queued, retried later
            for _ in range(n):
                q.popleft()
        self._m_spool.set(self._spool.bytes)

    def _rejector(self, table: str) -> Any:
        def reject(row: Row, reason: str) -> None:
            self._dead_letter(table, row, reason)

        return reject

    def _bad_shape(self, table: str, row: Row) -> None:
        if table not in BY_NAME:
            reason = f"writer: unknown table {table[:64]!r}"
        else:
            reason = f"writer: {len(row)} values for {self._ncols[table]} columns"
        self._dead_letter(table, tuple(row), reason)

    def _dead_letter(self, table: str, row: Row, reason: str) -> None:
        self._m_dead.inc()
        self._log_dead(
            logging.WARNING, "row of %s refused (%s): stored in dead_letters", table, reason
        )
        if table == DEAD_LETTERS.name:
            self._reject_to_file(table, row, reason)
            return
        dl = (uuid.uuid4(), "writer", reason, render_raw(table, row), _now_us())
        if self._stopped:
            self._spool_batches([(DEAD_LETTERS.name, [dl])])
        else:
            self._queues[DEAD_LETTERS.name].append(dl)

    def _reject_to_file(self, table: str, row: Row, reason: str) -> None:
        """Last resort for a dead letter the database refuses: a line in rejected.jsonl."""
        path = self._spool_dir / REJECTED_FILE
        line = orjson.dumps(
            {"table": table, "reason": reason, "raw": render_raw(table, row).decode()}
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        log.error("a dead letter could not be stored (%s): appended to %s", reason, path)
