"""Refused batches narrowed down to their bad rows, and the bad rows kept as dead letters.

A permanent error (a CHECK violation, a value the encoder refuses) on a batch is narrowed down by
bisecting it (:func:`isolate`): good rows commit, each bad row becomes a ``dead_letters`` row
(source ``writer``, reason SQLSTATE + constraint, raw = JSON of the row, :class:`DeadLetters`).
A dead letter that itself cannot be stored is appended to ``<spool_dir>/rejected.jsonl`` and
logged: never dropped, never a loop.

:func:`isolate` is pure logic over an injected ``commit`` (no database needed to test it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gatherer.pgcodec import error_reason, render_raw
from gatherer.spill import RateLimitedLog
from gatherer.writequeue import Batch, Row
from kalshi_data.resilience import ErrorClass, classify
from kalshi_data.tables import DEAD_LETTERS

log = logging.getLogger("gatherer.writer")

REJECTED_FILE = "rejected.jsonl"


@dataclass
class Isolated:
    """What :func:`isolate` did: ``failed`` is the retryable error that stopped it (else None)
    and ``rest`` what it had not committed then, in the original order."""

    failed: BaseException | None = None
    rest: list[Batch] = field(default_factory=list)


async def isolate(
    batches: Sequence[Batch],
    commit: Callable[[str, list[Row]], Awaitable[object]],
    dead_letter: Callable[[str, Row, str], None],
    *,
    classify_error: Callable[[BaseException], ErrorClass] = classify,
) -> Isolated:
    """Commit the good rows of refused ``batches`` one table-chunk at a time, bisecting every
    chunk that fails permanently down to single rows, which go to ``dead_letter(table, row,
    reason)``. A retryable failure stops it (the database is gone: nothing more can be learnt).
    """
    for i, (table, rows) in enumerate(batches):
        pending = [rows]
        while pending:
            chunk = pending.pop()
            try:
                await commit(table, chunk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if classify_error(exc) is ErrorClass.RETRYABLE:
                    rest = [(table, c) for c in [chunk, *reversed(pending)]]
                    return Isolated(exc, [*rest, *batches[i + 1 :]])
                if len(chunk) == 1:
                    dead_letter(table, chunk[0], error_reason(exc))
                    continue
                mid = len(chunk) // 2
                pending.append(chunk[mid:])
                pending.append(chunk[:mid])
    return Isolated()


def dead_letter_row(table: str, row: Row, reason: str, *, now_us: int) -> Row:
    """The ``dead_letters`` row (tables.py order) for a refused row of ``table``."""
    return (uuid.uuid4(), "writer", reason, render_raw(table, row), now_us)


class DeadLetters:
    """Turns refused rows into ``dead_letters`` rows for ``store`` (the queue, or the spool
    after stop); a refused dead letter goes to ``rejected.jsonl`` in ``spool_dir``.

    Args:
        spool_dir: where ``rejected.jsonl`` is appended.
        counter: the ``gatherer_dead_letters_total{source="writer"}`` child.
        store: takes one ``dead_letters`` row.
    """

    def __init__(self, spool_dir: Path, counter: Any, store: Callable[[Row], None]) -> None:
        self.spool_dir = spool_dir
        self._counter = counter
        self.store = store
        self._log = RateLimitedLog(1.0)

    def __call__(self, table: str, row: Row, reason: str) -> None:
        """Dead-letter ``row`` of ``table``."""
        self._counter.inc()
        self._log(logging.WARNING, "row of %s refused (%s): stored in dead_letters", table, reason)
        if table == DEAD_LETTERS.name:
            self.reject_to_file(table, row, reason)
            return
        self.store(dead_letter_row(table, row, reason, now_us=time.time_ns() // 1000))

    def reject_to_file(self, table: str, row: Row, reason: str) -> None:
        """Last resort for a dead letter the database refuses: a line in rejected.jsonl."""
        path = self.spool_dir / REJECTED_FILE
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
