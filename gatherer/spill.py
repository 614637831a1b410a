"""Rows to the disk spool: appends, disk refusals and the back-pressure state (issue 14).

The spool's disk bound (``spool_max_bytes``) is soft: a row the writer accepted is never
dropped. Once the spool reaches the bound, or the disk refuses an append (any ``OSError``:
ENOSPC, EFBIG, EIO), the spool is *full*: :class:`Spill` says so loudly once per episode and
calls ``on_backpressure(True)`` (the gatherer then stops reading the exchange, so the loss is a
recorded connection gap, never a silent drop) and keeps going: rows still spool while the disk
takes them (the overshoot is what was in flight), rows the disk refused stay in the in-memory
queues and the append is retried every ``DISK_RETRY_S``. It is no longer full once the disk
takes appends again (or the database takes the rows) and the spool is below ``LOW_WATER`` of
the bound: ``on_backpressure(False)``.

:class:`Backpressure` is that decision alone (pure, clock passed in); :class:`Spill` is the
shell around the :class:`~gatherer.spool.Spool` and the queues.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gatherer.spool import Spool
from gatherer.writequeue import Batch, Row, TableQueues, chunked
from kalshi_data.errors import describe_error

log = logging.getLogger("gatherer.writer")

#: The spool may take rows again (back-pressure released) below this fraction of the bound.
LOW_WATER = 0.9
#: After the disk refused an append, the next attempt waits this long (rows stay in memory).
DISK_RETRY_S = 1.0


class RateLimitedLog:
    """At most one message per ``interval_s``; counts what it suppressed in between."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = self._clock()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += f" ({self._suppressed} similar messages suppressed)"
        self._last, self._suppressed = now, 0
        log.log(level, msg, *args)


class Backpressure:
    """Whether the spool is full, from its size and whether the disk refuses appends.

    Args:
        max_bytes: the bound (0: none, only a refusing disk makes it full).
        low_water: fraction of the bound below which a full spool is released.
    """

    def __init__(self, max_bytes: int, low_water: float = LOW_WATER) -> None:
        if max_bytes < 0:
            raise ValueError("spool_max_bytes must be >= 0 (0: no bound)")
        self.max_bytes = max_bytes
        self.low_bytes = int(max_bytes * low_water)
        self.full = False
        self.full_since: float | None = None
        self.episodes = 0

    def update(self, size: int, disk_error: str | None, now: float) -> bool | None:
        """The new state when it changed (True: became full, False: released), else None."""
        if not self.full:
            over = self.max_bytes > 0 and size >= self.max_bytes
            if not over and disk_error is None:
                return None
            self.full, self.full_since = True, now
            self.episodes += 1
            return True
        if disk_error is None and (self.max_bytes == 0 or size < self.low_bytes):
            self.full = False
            return False
        return None


class Spill:
    """Appends batches and queues to the spool; tracks disk refusals and back-pressure.

    Args:
        spool: the open spool.
        queues: the writer's queues (refused rows go back to their front).
        state: the back-pressure decision (holds the spool's soft bound).
        metrics: ``(spool_bytes, spool_full, spool_full_episodes)`` labelled children.
        on_reject: called with ``(table, row, reason)`` for a row the spool cannot encode.
        on_backpressure: called with True when the spool becomes full, False once released.
    """

    def __init__(
        self,
        spool: Spool,
        queues: TableQueues,
        *,
        state: Backpressure,
        metrics: tuple[Any, Any, Any],
        on_reject: Callable[[str, Row, str], None],
        on_backpressure: Callable[[bool], None] | None = None,
    ) -> None:
        self.spool = spool
        self.queues = queues
        self.state = state
        self._m_bytes, self._m_full, self._m_episodes = metrics
        self._on_reject = on_reject
        self.on_backpressure = on_backpressure
        self.disk_error: str | None = None
        self._disk_retry_at = 0.0
        self._log_spill = RateLimitedLog(10.0)
        self._m_full.set(0)
        self.sync_gauge()

    @property
    def directory(self) -> Path:
        """The spool directory."""
        return self.spool.directory

    def sync_gauge(self) -> None:
        """Set the spool-bytes gauge to the spool's size."""
        self._m_bytes.set(self.spool.bytes)

    def refresh(self) -> None:
        """After the spool shrank or grew elsewhere (replay, a loop step): gauge and bound."""
        self.sync_gauge()
        self.check_bound()

    def retry_now(self) -> None:
        """Let the next append try the disk whatever the retry pacing says."""
        self._disk_retry_at = 0.0

    def append(self, table: str, rows: Sequence[Row]) -> bool:
        """One spool append; False when the disk refused (the caller keeps the rows)."""
        if self.disk_error is not None and time.monotonic() < self._disk_retry_at:
            return False
        try:
            self.spool.append(
                table, rows, on_reject=lambda row, why: self._on_reject(table, row, why)
            )
        except OSError as exc:
            self._disk_refused(exc)
            return False
        self.disk_ok()
        self.check_bound()
        return True

    def batches(self, batches: Sequence[Batch]) -> None:
        """Spool batches; whatever the disk refuses goes back to the front of the queues."""
        refused: list[tuple[str, Sequence[Row]]] = []
        for table, rows in batches:
            for chunk in chunked(rows, self.queues.batch_rows):
                if refused or not self.append(table, chunk):
                    refused.append((table, chunk))
        self.queues.push_front(refused)
        self.sync_gauge()

    def all_queues(self) -> None:
        """Spool every queue (as far as the disk takes them)."""
        for table in self.queues.tables():
            self.queue(table)

    def overflow(self, table: str) -> None:
        """Spill a queue that reached its bound (rate-limited warning)."""
        n = self.queues.depth(table)
        self.queue(table)
        self._log_spill(
            logging.WARNING,
            "writer queue for %s reached %d rows: spilling to spool %s",
            table,
            n,
            self.directory,
        )

    def queue(self, table: str) -> None:
        """Spool one queue, oldest first, in batches; stops where the disk refuses."""
        q = self.queues[table]
        while q:
            n = min(len(q), self.queues.batch_rows)
            if not self.append(table, list(itertools.islice(q, n))):
                break  # the disk refused: the rows stay queued, retried later
            for _ in range(n):
                q.popleft()
        self.sync_gauge()

    def _disk_refused(self, exc: OSError) -> None:
        self._disk_retry_at = time.monotonic() + DISK_RETRY_S
        first = self.disk_error is None
        self.disk_error = describe_error(exc)
        if first:
            log.error(
                "spool %s refused an append (%s): rows stay in memory, retried every %.0f s; "
                "the gatherer stops reading the exchange until the spool takes rows again",
                self.directory,
                self.disk_error,
                DISK_RETRY_S,
            )
        self.check_bound()

    def disk_ok(self) -> None:
        """The disk (or the database) took rows: a disk-error episode is over."""
        if self.disk_error is None:
            return
        log.warning(
            "spool %s takes rows again (the failure was %s)", self.directory, self.disk_error
        )
        self.disk_error = None
        self.check_bound()

    def check_bound(self) -> None:
        """Enter or leave the full state (back-pressure) from the spool size and disk state."""
        size = self.spool.bytes
        now = time.monotonic()
        changed = self.state.update(size, self.disk_error, now)
        if changed is None:
            return
        if changed:
            self._m_full.set(1)
            self._m_episodes.inc()
            reason = (
                f"the disk refused an append ({self.disk_error})"
                if self.disk_error is not None
                else f"{size} bytes reached the bound of {self.state.max_bytes} (spool_max_bytes)"
            )
            log.error(
                "spool %s is full: %s; signalling back-pressure (the gatherer stops reading the "
                "exchange, rows already accepted are kept)",
                self.directory,
                reason,
            )
        else:
            self._m_full.set(0)
            log.warning(
                "spool %s below its low-water mark (%d bytes) after %.1f s full: releasing "
                "back-pressure",
                self.directory,
                size,
                now - (self.state.full_since or now),
            )
        callback = self.on_backpressure
        if callback is not None:
            try:
                callback(changed)
            except Exception:  # the writer must go on whatever the listener does
                log.exception("back-pressure listener failed")
