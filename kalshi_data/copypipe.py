"""Stream a query's result from one PostgreSQL connection into another as binary COPY.

Used wherever rows move between databases with the same column types (tables.py): the
deduplicator (gatherer → production staging), ``restore-gatherer`` (production → gatherer) and
the benchmarks. Nothing is decoded in Python; a bounded queue keeps memory flat; an error on the
source side is re-raised in the consumer (inside the destination's transaction, which then rolls
back).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

QUEUE_CHUNKS = 32


class CopyPipe:
    """``COPY (query) TO STDOUT (FORMAT binary)`` on ``conn``, as an async iterator of chunks.

    Usage: ``await dst.copy_to_table(t, source=pipe.chunks(), format="binary")`` and, always,
    ``await pipe.close()`` afterwards (it stops the producer if the consumer failed).
    """

    def __init__(
        self, conn: asyncpg.Connection, query: str, *args: Any, name: str = "copy"
    ) -> None:
        self._conn = conn
        self._query = query
        self._args = args
        self._name = name
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUE_CHUNKS)
        self._task: asyncio.Task[None] | None = None

    async def _produce(self) -> None:
        async def sink(chunk: bytes) -> None:
            await self._queue.put(bytes(chunk))

        try:
            await self._conn.copy_from_query(self._query, *self._args, output=sink, format="binary")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._queue.put(exc)
            return
        await self._queue.put(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the COPY data; raises what the source side raised."""
        self._task = asyncio.create_task(self._produce(), name=self._name)
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        """Stop the producer (after an error on either side)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task  # already failing: the first error is the one reported
