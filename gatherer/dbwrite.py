"""One transaction of the writer: binary COPY of a set of batches, directly or through staging.

A unique violation (23505) on the direct COPY means some rows are already there (a reconnect
repeated a state, a spool replay repeats a batch whose commit was not acknowledged): the batches
are re-run through TEMP staging tables and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.
Spool replays always take that path. No duplicate is ever stored.

A transaction taking longer than ``write_timeout_s`` is abandoned by terminating the connection
(a watchdog rather than a cancel: cancelling inside a transaction would still wait for the
rollback on a hung socket; terminating the connection fails every pending call). The COPY
itself goes through :mod:`kalshi_data.pgcopy`, so a server that dies mid-COPY ends it at once
with a retryable error and leaves no asyncpg future unretrieved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from gatherer.pgcodec import insert_from_stage_sql, inserted_count, stage_ddl, stage_name
from gatherer.writequeue import Batch
from kalshi_data.pgcopy import copy_records
from kalshi_data.tables import BY_NAME

log = logging.getLogger("gatherer.writer")

UNIQUE_VIOLATION = "23505"


class BatchCommitter:
    """Commits batches on the writer's current connection and counts what it stored.

    Args:
        write_timeout_s: a transaction taking longer is abandoned (connection terminated).
        m_write_s: the write-duration histogram child.
        m_rows: per-table rows-written counter children.
    """

    def __init__(self, *, write_timeout_s: float, m_write_s: Any, m_rows: dict[str, Any]) -> None:
        self.write_timeout_s = write_timeout_s
        self._m_write_s = m_write_s
        self._m_rows = m_rows
        self._staged: set[str] = set()

    def new_connection(self) -> None:
        """A fresh connection has no TEMP staging tables yet."""
        self._staged = set()

    async def commit(self, conn: Any, batches: Sequence[Batch], *, staged: bool) -> None:
        """One transaction for ``batches``; a unique violation re-runs it through staging."""
        started = time.perf_counter()
        watchdog = asyncio.get_running_loop().call_later(self.write_timeout_s, self._abort, conn)
        try:
            counts = await self._copy(conn, batches, staged=staged)
        except Exception as exc:
            if staged or getattr(exc, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            counts = None
        finally:
            watchdog.cancel()
        if counts is None:  # some rows were there already
            await self.commit(conn, batches, staged=True)
            return
        self._m_write_s.observe(time.perf_counter() - started)
        for table, n in counts.items():
            self._m_rows[table].inc(n)

    async def _copy(self, conn: Any, batches: Sequence[Batch], *, staged: bool) -> dict[str, int]:
        """COPY ``batches`` in one transaction (through staging when ``staged``): rows stored."""
        counts: dict[str, int] = {}
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
        return counts

    def _abort(self, conn: Any) -> None:
        log.warning("a write took longer than %.1f s: closing the connection", self.write_timeout_s)
        conn.terminate()

    async def _ensure_stage(self, conn: Any, tables: Sequence[str]) -> None:
        for table in tables:
            if table not in self._staged:
                await conn.execute(stage_ddl(BY_NAME[table]))
                self._staged.add(table)
