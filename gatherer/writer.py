"""The gatherer's writer: bounded queues -> binary COPY into the local database, or the disk spool.

Flow (DESIGN §4.4, bounded memory and no silent drops):

- :meth:`Writer.put` appends a row to its table's queue and never blocks. A queue at
  ``queue_rows`` is spilled whole to the spool, so memory stays bounded whatever the database does.
- One loop task takes up to ``batch_rows`` rows per table every ``flush_interval_s`` (sooner when
  a queue holds a full batch) and COPYs them, all tables in one transaction.
- A unique violation (23505) means some rows are already there (a reconnect repeated a state, a
  spool replay repeats a batch whose commit was not acknowledged): the batch is re-run through a
  TEMP staging table and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. Spool replays always
  take that path. No duplicate is ever stored (:mod:`gatherer.dbwrite`).
- A retryable error (connection lost, shutdown, timeout) sends the batch to the spool and starts a
  background reconnect with the shared Full-Jitter backoff; while the database is down every batch
  goes to the spool. Once it is back, the spool is replayed oldest first, each segment deleted
  only after all its batches committed, then queued rows are written again.
- A permanent error (a CHECK violation, a value the encoder refuses) is narrowed down by bisecting
  the batch: good rows commit, each bad row becomes a ``dead_letters`` row.

Shutdown (:meth:`Writer.stop`): drain the queues to the database within the timeout, else spool
them; fsync; close. A spool left behind is replayed by the next writer on the same directory.

The :class:`Writer` coordinates; each job is a part of its own, with its pure logic testable
without a database (tests/unit/gatherer/test_writer_parts.py):

- :mod:`gatherer.writequeue`: the per-table queues and the batching decisions;
- :mod:`gatherer.dbwrite`: one transaction of batches (direct COPY, or staged on a conflict);
- :mod:`gatherer.spill`: appends to the spool, disk refusals and the back-pressure state of the
  spool's soft disk bound (``spool_max_bytes``, issue 14);
- :mod:`gatherer.replay`: spool replay, segment by segment, resuming after a failure;
- :mod:`gatherer.isolation`: bisection of a refused batch and the dead letters;
- :mod:`kalshi_data.pgcopy`: the COPY itself, guarded against asyncpg's lost futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from gatherer.dbwrite import BatchCommitter
from gatherer.isolation import DeadLetters, isolate
from gatherer.metrics import GathererMetrics
from gatherer.pgcodec import error_reason, register_codecs
from gatherer.replay import Replayer, merge_chunk
from gatherer.spill import Backpressure, Spill
from gatherer.spool import DEFAULT_SEGMENT_BYTES, Spool, SpoolBatch
from gatherer.writequeue import Batch, Put, Row, TableQueues, shape_error
from kalshi_data.errors import TransientError, describe_error
from kalshi_data.resilience import ErrorClass, RetryPolicy, Supervisor, classify
from kalshi_data.tables import BY_NAME, DEAD_LETTERS

log = logging.getLogger(__name__)

APPLICATION_NAME = "kalshi-data-gatherer-writer"


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
            bound that signals back-pressure, see :mod:`gatherer.spill`.
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
        self._queues = TableQueues(
            {t: len(spec.columns) for t, spec in BY_NAME.items()},
            batch_rows=batch_rows,
            queue_rows=queue_rows,
        )
        if flush_interval_s <= 0 or connect_timeout_s <= 0 or write_timeout_s <= 0:
            raise ValueError("writer intervals and timeouts must be > 0")
        backpressure = Backpressure(spool_max_bytes)
        self._dsn = dsn
        self._spool_dir = Path(spool_dir)
        self._flush_interval_s = flush_interval_s
        self._connect_timeout_s = connect_timeout_s
        # Reconnects retry forever, permanent refusals included: mid-run, a wrong password or a
        # dropped database must not lose rows, so the writer keeps spooling and trying, and says
        # so loudly once (gatherer_db_up stays 0 and alerts).
        self._reconnector = Supervisor(
            "gatherer-writer-reconnect",
            policy=RetryPolicy(base_s=backoff_base_s, cap_s=backoff_cap_s),
            classify_fn=lambda _exc: ErrorClass.RETRYABLE,
            on_failure=self._reconnect_failed,
        )
        self._refusal_logged = False
        #: Rows neither the database nor the disk took by the end of :meth:`stop` (logged).
        self.lost_at_stop = 0

        g = metrics.gatherer_id
        self._m_queue = {t: metrics.queue_depth.labels(g, t) for t in BY_NAME}
        self._db = BatchCommitter(
            write_timeout_s=write_timeout_s,
            m_write_s=metrics.write_seconds.labels(g),
            m_rows={t: metrics.rows_written.labels(g, t) for t in BY_NAME},
        )
        self._m_db_up = metrics.db_up.labels(g)
        self._m_db_up.set(0)
        metrics.spool_max_bytes.labels(g).set(spool_max_bytes)

        self._dead = DeadLetters(
            self._spool_dir, metrics.dead_letters.labels(g, "writer"), self._store_dead_letter
        )
        self._spool = Spool(self._spool_dir, segment_bytes=spool_segment_bytes)
        self._spill = Spill(
            self._spool,
            self._queues,
            state=backpressure,
            metrics=(
                metrics.spool_bytes.labels(g),
                metrics.spool_full.labels(g),
                metrics.spool_full_episodes.labels(g),
            ),
            on_reject=self._dead,
            on_backpressure=on_backpressure,
        )
        self._replayer = Replayer(
            self._spool,
            batch_rows=batch_rows,
            commit=self._replay_chunk,
            after_segment=self._spill.refresh,
        )

        self._conn: Any = None
        self._inflight: list[Batch] = []
        self._wake = asyncio.Event()
        self._tick = asyncio.Event()
        self._started = False
        self._stopping = False
        self._stopped = False
        self._run_task: asyncio.Task[None] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._down_since: float | None = None

    # ------------------------------------------------------------------ public API
    @property
    def on_backpressure(self) -> Callable[[bool], None] | None:
        """The back-pressure listener (settable)."""
        return self._spill.on_backpressure

    @on_backpressure.setter
    def on_backpressure(self, callback: Callable[[bool], None] | None) -> None:
        self._spill.on_backpressure = callback

    @property
    def full_episodes(self) -> int:
        """How many times the spool became full."""
        return self._spill.state.episodes

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
        return self._spill.state.max_bytes

    @property
    def spool_full(self) -> bool:
        """True while back-pressure is signalled (bound reached or the disk refusing appends)."""
        return self._spill.state.full

    @property
    def disk_error(self) -> str | None:
        """The last spool append failure of the current disk-error episode, else None."""
        return self._spill.disk_error

    def queue_depth(self, table: str) -> int:
        """Rows of ``table`` waiting in memory."""
        return self._queues.depth(table)

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
        if self._stopped:
            reason = shape_error(self._queues.ncols, table, row)
            if reason is not None:
                self._dead(table, tuple(row), reason)
            else:
                self._put_after_stop(table, row)
            return
        action = self._queues.put(table, row)
        if action is Put.QUEUED:
            return
        if action is Put.BAD:
            self._dead(table, tuple(row), shape_error(self._queues.ncols, table, row) or "writer")
            return
        if action is Put.SPILL:
            self._spill.overflow(table)
        self._wake.set()

    def _put_after_stop(self, table: str, row: Row) -> None:
        self._spill.retry_now()
        self._spill.batches([(table, [row])])
        if self._queues.depth(table):
            self._queues[table].clear()
            self.lost_at_stop += 1
            log.critical(
                "a %s row arrived after stop and the spool %s refused it (%s): it is lost",
                table,
                self._spool_dir,
                self._spill.disk_error,
            )
            return
        self._spool.sync()

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
        await self._finish_tasks(timeout_s)
        self._stopped = True
        before = self._spool.bytes
        leftover, self._inflight = self._inflight, []
        self._spill.retry_now()  # one more try whatever the retry pacing says
        self._spill.batches(leftover)
        self._spill.all_queues()
        self._spool.close()
        self._spill.sync_gauge()
        await self._close_conn()
        lost = self._queues.clear()
        if lost:
            self.lost_at_stop += lost
            log.critical(
                "writer stopped with %d rows that neither the database nor the spool %s took "
                "(%s): they are lost",
                lost,
                self._spool_dir,
                self._spill.disk_error,
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

    async def _finish_tasks(self, timeout_s: float) -> None:
        """Let the loop drain within ``timeout_s`` (else cancel it); cancel a reconnect."""
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
        self._db.new_connection()
        return conn

    def _set_up(self, conn: Any) -> None:
        self._conn = conn
        self._m_db_up.set(1)
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
        """Retry the database through the shared supervisor until it answers (rows spool)."""
        self._refusal_logged = False
        # The database has just failed: the first attempt waits a backoff step as well.
        await self._reconnector.sleep(self._reconnector.backoff.next_delay())
        conn = await self._reconnector.run(self._connect)
        if conn is not None:  # None only once a stop event is set (the writer cancels instead)
            self._set_up(conn)

    def _reconnect_failed(self, exc: BaseException, _verdict: ErrorClass, _delay: float) -> None:
        if self._refusal_logged or classify(exc) is not ErrorClass.PERMANENT:
            return
        self._refusal_logged = True
        log.error("local database refuses connections: %s; retrying", describe_error(exc))

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
                self._spill.batches(leftover)
                self._mark_down(exc)
                done = False
            finally:
                for t in self._queues.tables():
                    self._m_queue[t].set(self._queues.depth(t))
                self._spill.refresh()
                self._tick.set()
            if done:
                return

    def _ready(self) -> bool:
        if self._conn is None and self._spill.disk_error is not None:
            return False  # the disk refused: retried at the flush pace, not in a spin
        if self._conn is not None and self._spool.has_data():
            return True
        return self._queues.ready()

    def _idle(self) -> bool:
        return (
            self._conn is not None
            and not self._inflight
            and not self._spool.has_data()
            and not self._queues.has_rows()
        )

    async def _step(self) -> bool:
        """One round of work; True when the loop should end (stopping and nothing left)."""
        if self._conn is None:
            if not self._stopping and self._queues.has_rows():
                self._spill.all_queues()
                await self._spool.sync_async()
            return self._stopping
        if self._stopping:
            # Drain what is in memory; a spool left behind is replayed by the next start.
            if not self._queues.has_rows():
                return True
            await self._write_queues()
        elif self._spool.has_data():
            await self._replayer.replay()
        elif self._queues.has_rows():
            await self._write_queues()
        return False

    async def _write_queues(self) -> None:
        batches = self._queues.take_batches()
        self._inflight = batches
        try:
            await self._commit(batches, staged=False)
        except asyncio.CancelledError:
            raise  # stop() spools self._inflight
        except Exception as exc:
            if classify(exc) is ErrorClass.RETRYABLE:
                self._inflight = []
                self._spill.batches(batches)
                self._mark_down(exc)
                await self._spool.sync_async()
                return
            log.warning("a batch was refused (%s): isolating the bad rows", error_reason(exc))
            if not await self._isolate(batches, staged=False, spool_rest=True):
                return
        else:
            self._spill.disk_ok()  # the database took them: memory no longer waits for the disk
        self._inflight = []

    # ------------------------------------------------------------------ database writes
    async def _commit(self, batches: Sequence[Batch], *, staged: bool) -> None:
        conn = self._conn
        if conn is None:
            raise TransientError("local database connection is down")
        await self._db.commit(conn, batches, staged=staged)

    async def _isolate(self, batches: Sequence[Batch], *, staged: bool, spool_rest: bool) -> bool:
        """Commit the good rows of refused batches, dead-letter the bad ones (bisection).

        Returns False when the database failed on the way (the rest is spooled when
        ``spool_rest``: live batches; a replayed batch is still in the spool).
        """

        async def commit(table: str, rows: list[Row]) -> None:
            await self._commit([(table, rows)], staged=staged)

        outcome = await isolate(batches, commit, self._dead)
        if outcome.failed is None:
            return True
        if spool_rest:
            self._spill.batches(outcome.rest)
            self._inflight = []
        self._mark_down(outcome.failed)
        return False

    # ------------------------------------------------------------------ spool replay
    async def _replay_chunk(self, chunk: list[SpoolBatch]) -> bool:
        """Commit one replayed chunk (staged); False when the database failed on the way."""
        batches, unknown = merge_chunk(chunk, BY_NAME)
        for batch in unknown:
            for row in batch.rows:
                self._dead(batch.table, row, "writer: spooled row of an unknown table")
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
            return await self._isolate(batches, staged=True, spool_rest=False)
        return True

    # ------------------------------------------------------------------ dead letters
    def _store_dead_letter(self, row: Row) -> None:
        if self._stopped:
            self._spill.batches([(DEAD_LETTERS.name, [row])])
        else:
            self._queues[DEAD_LETTERS.name].append(row)
