"""Spool replay: closed segments oldest first, each deleted only after all its batches committed.

A segment is replayed in chunks of at least ``batch_rows`` rows (:class:`SegmentChunks`, pure),
each chunk merged per table into one staged transaction by the writer's ``commit``. When the
database fails part-way, the position after the last committed chunk is kept, so the next
attempt resumes there instead of repeating the segment from its start (a repeat would still
store nothing twice: replays always go through staging and ``ON CONFLICT DO NOTHING``). A
segment that held corrupt bytes is replayed as far as it is intact, then set aside.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator
from pathlib import Path

from gatherer.spool import Damage, Spool, SpoolBatch
from gatherer.writequeue import Row

log = logging.getLogger("gatherer.writer")


class SegmentChunks:
    """The batches of one segment past ``resume`` (a byte offset), in chunks of at least
    ``batch_rows`` rows (the last may hold fewer). ``corrupt`` is set once a corrupt record
    was skipped (a torn tail is not corruption)."""

    def __init__(
        self, items: Iterable[SpoolBatch | Damage], *, resume: int, batch_rows: int
    ) -> None:
        self._items = items
        self._resume = resume
        self._batch_rows = batch_rows
        self.corrupt = False

    def __iter__(self) -> Iterator[list[SpoolBatch]]:
        chunk: list[SpoolBatch] = []
        n = 0
        for item in self._items:
            if isinstance(item, Damage):
                self.corrupt = self.corrupt or item.kind == "corrupt"
                continue
            if item.end <= self._resume:
                continue
            chunk.append(item)
            n += len(item.rows)
            if n >= self._batch_rows:
                yield chunk
                chunk, n = [], 0
        if chunk:
            yield chunk


def merge_chunk(
    chunk: Iterable[SpoolBatch], known: Container[str]
) -> tuple[list[tuple[str, list[Row]]], list[SpoolBatch]]:
    """A chunk's rows merged per table (first-seen order), and its batches of unknown tables."""
    merged: dict[str, list[Row]] = {}
    unknown: list[SpoolBatch] = []
    for batch in chunk:
        if batch.table not in known:
            unknown.append(batch)
            continue
        merged.setdefault(batch.table, []).extend(batch.rows)
    return list(merged.items()), unknown


class Replayer:
    """Replays a spool through ``commit(chunk) -> bool`` (False: the database failed; stop).

    Args:
        spool: the writer's spool.
        batch_rows: the smallest chunk worth a transaction.
        commit: writes one chunk; False when the database failed on the way.
        after_segment: called after a segment was removed or set aside (metrics, bound).
    """

    def __init__(
        self,
        spool: Spool,
        *,
        batch_rows: int,
        commit: Callable[[list[SpoolBatch]], Awaitable[bool]],
        after_segment: Callable[[], None],
    ) -> None:
        self._spool = spool
        self._batch_rows = batch_rows
        self._commit = commit
        self._after_segment = after_segment
        self._resume: tuple[Path, int] | None = None
        self._batches = self._rows = 0  # since the spool was last empty

    async def replay(self) -> None:
        """Replay closed segments oldest first; delete each once all its batches committed."""
        self._spool.seal()
        for segment in self._spool.closed_segments():
            corrupt = await self._segment(segment)
            if corrupt is None:
                return
            if corrupt:
                kept = self._spool.quarantine(segment)
                log.error(
                    "spool segment had corrupt bytes: replayed what was intact, kept %s", kept
                )
            else:
                self._spool.remove(segment)
            self._after_segment()
        if not self._spool.has_data() and self._batches:
            log.info("replayed %d batches (%d rows) from spool", self._batches, self._rows)
            self._batches = self._rows = 0

    async def _segment(self, segment: Path) -> bool | None:
        """Commit a segment's batches: None if the database failed, else whether it was corrupt."""
        resume = 0
        if self._resume is not None and self._resume[0] == segment:
            resume = self._resume[1]
        with contextlib.closing(self._spool.read(segment)) as items:
            chunks = SegmentChunks(items, resume=resume, batch_rows=self._batch_rows)
            for chunk in chunks:
                if not await self._commit(chunk):
                    return None
                self._resume = (segment, chunk[-1].end)
                self._batches += len(chunk)
                self._rows += sum(len(b.rows) for b in chunk)
        self._resume = None
        return chunks.corrupt
