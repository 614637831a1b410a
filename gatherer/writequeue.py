"""The writer's in-memory queues and its batching decisions (pure: no I/O, no clock).

One FIFO per table (``tables.py`` order, which ends with ``dead_letters``: rows dead-lettered
while the other queues are spooled are still spooled in the same pass). :meth:`TableQueues.put`
says what the caller must do (nothing, wake the loop for a full batch, or spill the queue to
the spool because it reached its bound); :meth:`TableQueues.take_batches` cuts the next
transaction's batches, and :meth:`TableQueues.push_front` puts rows the disk refused back
where they were.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Row = tuple[Any, ...]
Batch = tuple[str, list[Row]]


class Put(enum.Enum):
    """What :meth:`TableQueues.put` asks of the caller."""

    QUEUED = "queued"  #: nothing: the row waits for the next flush
    BATCH = "batch"  #: a full batch is waiting: wake the loop
    SPILL = "spill"  #: the queue reached its bound: spill it to the spool, then wake the loop
    BAD = "bad"  #: unknown table or wrong width: not queued (dead-letter it, :func:`shape_error`)


def shape_error(ncols: Mapping[str, int], table: str, row: Row) -> str | None:
    """Why ``row`` cannot be queued for ``table`` (a ``dead_letters.reason``), or None."""
    want = ncols.get(table)
    if want is None:
        return f"writer: unknown table {table[:64]!r}"
    if len(row) != want:
        return f"writer: {len(row)} values for {want} columns"
    return None


def chunked(rows: Sequence[Row], size: int) -> Iterator[Sequence[Row]]:
    """``rows`` in consecutive slices of at most ``size`` rows."""
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


class TableQueues:
    """Per-table row queues bounded at ``queue_rows``, cut into batches of ``batch_rows``.

    Args:
        ncols: every table's column count, in queue order.
        batch_rows: at most this many rows per table per batch.
        queue_rows: a queue holding this many rows must be spilled.
    """

    def __init__(self, ncols: Mapping[str, int], *, batch_rows: int, queue_rows: int) -> None:
        if batch_rows <= 0 or queue_rows < batch_rows:
            raise ValueError("writer needs 0 < batch_rows <= queue_rows")
        self.ncols = dict(ncols)
        self.batch_rows = batch_rows
        self.queue_rows = queue_rows
        self._queues: dict[str, deque[Row]] = {t: deque() for t in ncols}

    def __getitem__(self, table: str) -> deque[Row]:
        return self._queues[table]

    def tables(self) -> list[str]:
        """Every table, in queue order."""
        return list(self._queues)

    def depth(self, table: str) -> int:
        """Rows of ``table`` waiting."""
        return len(self._queues[table])

    def total(self) -> int:
        """Rows waiting in all queues."""
        return sum(len(q) for q in self._queues.values())

    def has_rows(self) -> bool:
        """True when any queue holds a row."""
        return any(self._queues.values())

    def ready(self) -> bool:
        """True when some queue holds a full batch (worth writing before the flush interval)."""
        return any(len(q) >= self.batch_rows for q in self._queues.values())

    def put(self, table: str, row: Row) -> Put:
        """Append a row; :attr:`Put.BAD` (nothing appended) for an unknown table or a row of the
        wrong width (:func:`shape_error` says which). One call per row: this is the hot path."""
        q = self._queues.get(table)
        if q is None or len(row) != self.ncols[table]:
            return Put.BAD
        q.append(row)
        n = len(q)
        if n < self.batch_rows:
            return Put.QUEUED
        return Put.SPILL if n >= self.queue_rows else Put.BATCH

    def take_batches(self) -> list[Batch]:
        """Remove and return up to ``batch_rows`` rows of every non-empty queue, oldest first."""
        batches: list[Batch] = []
        for t, q in self._queues.items():
            if not q:
                continue
            if len(q) <= self.batch_rows:
                rows = list(q)
                q.clear()
            else:
                rows = [q.popleft() for _ in range(self.batch_rows)]
            batches.append((t, rows))
        return batches

    def push_front(self, refused: Sequence[tuple[str, Sequence[Row]]]) -> None:
        """Put ``refused`` (in their original order) back at the front of their queues."""
        for table, back in reversed(refused):
            self._queues[table].extendleft(reversed(back))

    def clear(self) -> int:
        """Empty every queue; the number of rows dropped."""
        n = self.total()
        for q in self._queues.values():
            q.clear()
        return n
