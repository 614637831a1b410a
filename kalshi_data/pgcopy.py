"""Binary COPY into PostgreSQL without a leaked asyncpg future or a hang when the server dies.

Both COPY writers use it: the deduplicator's sink (binary data in hand, ``copy_to_table``) and
the gatherer writer (row tuples, ``copy_records_to_table``). One guard, two entry points.

What it guards against (asyncpg 0.32, issue 16). ``Protocol.copy_in`` creates its result future,
writes the COPY statement, then waits for ``writing_allowed`` *outside* any timer: before the
data in hand, and for records after every 512 KiB it encodes. When a write left the transport
paused (its buffer above the high-water mark) and the server dies in that wait, nothing sets
the event again, so the COPY hangs until cancelled; the cancellation then writes CopyFail to a
transport uvloop has closed (or that ``terminate()`` dropped), which raises before asyncpg
attaches the callback that retrieves the future's exception: "Future exception was never
retrieved … ConnectionDoesNotExistError". The guard:

1. waits until the transport accepts writes, or the connection is lost (then raises a retryable
   :class:`asyncpg.ConnectionDoesNotExistError` without starting the COPY). For data in hand,
   ``copy_in`` then runs to its ``await`` of the future without yielding: the statement is far
   below the high-water mark and cannot pause the transport again;
2. while the COPY runs, a lost connection sets ``writing_allowed`` itself, so a COPY waiting
   for a resume that can never come fails now instead of hanging;
3. for records, the iterable handed to asyncpg marks the COPY's result future as retrieved when
   asyncpg starts iterating it (after the future exists, before any wait), so its exception is
   never reported as lost whatever path the failure takes;
4. a client-side failure (a write that fails synchronously, e.g. EPIPE as the server dies) adds
   the same retrieving callback to every future the protocol still holds, the step asyncpg's
   error path skipped, and, when the connection is gone, is re-raised as
   :class:`asyncpg.ConnectionDoesNotExistError` (chained): the loss is the fault, whatever the
   driver made of it, so :func:`kalshi_data.resilience.classify` calls it retryable.

All of this reaches into asyncpg internals (``conn._protocol``, its ``writing_allowed`` event, a
C attribute found with :func:`gc.get_referents`); the regression tests are
``tests/integration/test_dedup_failover.py::test_copy_killed_while_paused_leaves_no_unretrieved_future``
and ``tests/integration/test_gatherer_writer.py::test_copy_records_killed_while_paused_*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


async def copy_data(conn: Any, table: str, data: memoryview, columns: Sequence[str]) -> str:
    """``conn.copy_to_table(table, source=data, format="binary", columns=columns)``, guarded.

    Args:
        conn: an asyncpg connection.
        table: the target table (asyncpg quotes it).
        data: the whole binary COPY stream (a memoryview: asyncpg takes bytes for a file name).
        columns: the columns ``data`` holds, in order.

    Returns:
        The command tag (``COPY n``).
    """
    cols = list(columns)
    return await _guarded(
        conn, lambda: conn.copy_to_table(table, source=data, format="binary", columns=cols)
    )


async def copy_records(
    conn: Any, table: str, records: Sequence[tuple[Any, ...]], columns: Sequence[str]
) -> str:
    """``conn.copy_records_to_table(table, records=records, columns=columns)``, guarded.

    Args:
        conn: an asyncpg connection.
        table: the target table (asyncpg quotes it).
        records: row tuples in ``columns`` order.
        columns: the target columns.

    Returns:
        The command tag (``COPY n``).
    """
    cols = list(columns)
    protocol = conn._protocol  # asyncpg internals (None once terminated): see the module docstring
    rows = _RetrievingRows(records, lambda: _retrieve_pending(protocol))
    return await _guarded(
        conn, lambda: conn.copy_records_to_table(table, records=rows, columns=cols)
    )


async def _guarded(conn: Any, copy: Callable[[], Awaitable[T]]) -> T:
    if conn.is_closed():
        # A terminated connection has no protocol: asyncpg itself would fail with
        # AttributeError, which no classifier reads as a lost connection.
        raise asyncpg.ConnectionDoesNotExistError("connection is closed: COPY not started")
    protocol = conn._protocol  # asyncpg internals: see the module docstring
    await _writable(conn)

    def wake(_conn: object) -> None:
        protocol.writing_allowed.set()  # the connection is gone: no resume will ever come

    conn.add_termination_listener(wake)
    try:
        return await copy()
    except asyncpg.PostgresError:
        raise  # the server answered: asyncpg awaited the future
    except Exception as exc:
        _retrieve_pending(protocol)
        if conn.is_closed() and not isinstance(exc, asyncpg.ConnectionDoesNotExistError):
            raise asyncpg.ConnectionDoesNotExistError("connection lost during COPY") from exc
        raise
    except BaseException:
        _retrieve_pending(protocol)
        raise
    finally:
        conn.remove_termination_listener(wake)


class _RetrievingRows:
    """The rows, iterated by asyncpg's ``copy_in`` after it created the COPY's result future:
    ``on_iter`` runs then (and marks that future's exception as retrieved)."""

    __slots__ = ("_on_iter", "_rows")

    def __init__(self, rows: Sequence[tuple[Any, ...]], on_iter: Callable[[], None]) -> None:
        self._rows = rows
        self._on_iter = on_iter

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        self._on_iter()
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


async def _writable(conn: Any) -> None:
    """Return once ``conn``'s transport is not paused for writing; raise
    ConnectionDoesNotExistError if the connection is lost first."""
    allowed: asyncio.Event = conn._protocol.writing_allowed  # asyncpg internals
    if allowed.is_set():
        return
    lost: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def on_lost(_conn: object) -> None:
        if not lost.done():
            lost.set_result(None)

    conn.add_termination_listener(on_lost)
    resumed: asyncio.Future[object] = asyncio.ensure_future(allowed.wait())
    try:
        if not conn.is_closed():
            await asyncio.wait({resumed, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        resumed.cancel()
        lost.cancel()
        conn.remove_termination_listener(on_lost)
    if conn.is_closed() or not allowed.is_set():
        raise asyncpg.ConnectionDoesNotExistError("connection lost before COPY started")


def _retrieve_pending(protocol: object) -> None:
    """Mark the exception of every future ``protocol`` still holds (its result waiter; asyncpg
    keeps it in a C attribute) as retrieved once it is set. ``protocol`` may be None (a
    terminated connection): nothing to do then."""
    for ref in gc.get_referents(protocol):
        if isinstance(ref, asyncio.Future):
            ref.add_done_callback(_consume)


def _consume(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        with contextlib.suppress(BaseException):
            fut.exception()
