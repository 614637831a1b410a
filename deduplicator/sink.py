"""The production side: one transaction per batch = fence + cursor check + merge + cursor CAS."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from deduplicator import sql
from deduplicator.errors import CursorMoved, NotLeader
from deduplicator.lease import LeaseState
from deduplicator.source import BatchBounds
from kalshi_data.copypipe import CopyPipe
from kalshi_data.tables import SYNCED_TABLES, TableSpec


@dataclass(frozen=True, slots=True)
class StoredCursor:
    """A cursor as stored in ``sync_cursors``."""

    position: tuple[int, int]
    system_identifier: str | None
    newest_received_at: float | None


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What one batch did to production."""

    rows: int
    inserted: int
    touched: int
    newest_received_at: float | None
    #: the direct COPY met a row already in production (and the batch was staged instead)
    conflicted: bool = False


async def connect(
    dsn: str, *, timeout_s: float, statement_timeout_s: float, instance: str
) -> asyncpg.Connection:
    """A connection to the production primary; multi-host DSNs with
    target_session_attrs=read-write pick the writable host, and DNS is resolved on every call
    (an RDS failover flips the endpoint's CNAME)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn,
        timeout=timeout_s,
        command_timeout=statement_timeout_s,
        # JIT compiles a merge whose staged-row estimate crosses jit_above_cost: hundreds of
        # milliseconds for a statement that runs in tens.
        server_settings={"application_name": f"kalshi-dedup-{instance}", "jit": "off"},
    )
    return conn


async def load_cursors(conn: asyncpg.Connection, gatherer: str) -> dict[str, StoredCursor]:
    """Every table's cursor for ``gatherer``, creating missing rows at (0, 0)."""
    async with conn.transaction():
        for spec in SYNCED_TABLES:
            await conn.execute(sql.CURSOR_ENSURE, gatherer, spec.name)
    rows = await conn.fetch(sql.CURSOR_READ, gatherer)
    return {
        r[0]: StoredCursor((int(r[1]), int(r[2])), r[3], None if r[4] is None else float(r[4]))
        for r in rows
    }


async def pin_or_reset(
    conn: asyncpg.Connection,
    gatherer: str,
    table: str,
    *,
    system_identifier: str,
    reset: bool,
) -> None:
    """Record the gatherer cluster's identity, or reset the cursor for a safe rescan."""
    query = sql.CURSOR_RESET if reset else sql.CURSOR_PIN
    await conn.execute(query, gatherer, table, system_identifier)


async def merge_batch(
    conn: asyncpg.Connection,
    lease: LeaseState,
    gatherer: str,
    spec: TableSpec,
    bounds: BatchBounds,
    open_pipe: Callable[[bool], CopyPipe] | None,
    *,
    newest: float | None = None,
    direct: bool = False,
) -> MergeResult:
    """Merge one gatherer batch into production in ONE transaction (DESIGN §4.2).

    ``open_pipe(with_gatherer)`` streams the rows to stage: the whole batch, or only the rows
    whose identity this process has not committed yet (:mod:`deduplicator.seen`); None when
    every row is known, and then only the cursor moves. ``newest`` is the batch's newest
    ``received_at`` when the caller knows it (else it is read from the staged rows). The cursor
    always advances over the whole batch (``bounds.rows`` rows read).

    With ``direct``, the rows are first COPYed straight into the table inside a savepoint (the
    fast path when none of them can be in production yet); a unique violation rolls back to
    the savepoint and the batch goes through staging and ``ON CONFLICT`` as usual, so the
    outcome is the same either way.

    Raises:
        NotLeader: the fencing check matched no lease row (another instance leads).
        CursorMoved: the stored cursor is not ``bounds.start``.
    """
    async with conn.transaction():
        if await conn.fetchval(sql.FENCE, lease.epoch, lease.instance_id) is None:
            lease.leader = False
            raise NotLeader(f"lease epoch {lease.epoch} is no longer held by {lease.instance_id}")
        row = await conn.fetchrow(sql.CURSOR_LOCK, gatherer, spec.name)
        if row is None or (int(row[0]), int(row[1])) != bounds.start:
            raise CursorMoved(f"{gatherer}/{spec.name} cursor is not {bounds.start}")
        inserted = touched = 0
        conflicted = False
        if open_pipe is not None:
            copied = await _copy_direct(conn, spec, open_pipe) if direct else None
            conflicted = direct and copied is None
            if copied is not None:
                inserted = touched = copied
            else:
                inserted, touched, staged_newest = await _stage_and_insert(
                    conn, gatherer, spec, open_pipe(False)
                )
                newest = newest if newest is not None else staged_newest
        status = await conn.execute(
            sql.CURSOR_ADVANCE,
            gatherer,
            spec.name,
            str(bounds.end[0]),
            bounds.end[1],
            bounds.rows,
            newest if newest is not None else 0.0,
            str(bounds.start[0]),
            bounds.start[1],
        )
        if status != "UPDATE 1":
            raise CursorMoved(f"{gatherer}/{spec.name} cursor moved during the batch")
    return MergeResult(
        bounds.rows, inserted, touched, None if newest is None else float(newest), conflicted
    )


async def _copy_direct(
    conn: asyncpg.Connection, spec: TableSpec, open_pipe: Callable[[bool], CopyPipe]
) -> int | None:
    """COPY the rows straight into the table in a savepoint: rows copied, or None when one of
    them was already there (the savepoint is rolled back)."""
    pipe = open_pipe(True)
    try:
        data = await _read_all(pipe)
        async with conn.transaction():
            status = await copy_in(conn, spec.name, data, [*spec.column_names, "gatherer_id"])
    except asyncpg.UniqueViolationError:
        return None
    finally:
        await pipe.close()
    return int(status.rsplit(" ", 1)[-1])


async def _stage_and_insert(
    conn: asyncpg.Connection, gatherer: str, spec: TableSpec, pipe: CopyPipe
) -> tuple[int, int, float | None]:
    """COPY into the staging table, then insert what production lacks: (inserted, touched,
    newest received_at of the staged rows)."""
    try:
        data = await _read_all(pipe)
        # Every time: a cache of "already created" keyed by connection was wrong after a
        # reconnect (a new connection object can reuse the old one's id()).
        await conn.execute(sql.create_stage(spec))
        await copy_in(conn, sql.stage_name(spec), data, list(spec.column_names))
    finally:
        await pipe.close()
    newest = await conn.fetchval(sql.stage_newest(spec))
    merged = await conn.fetchrow(sql.merge_insert(spec), gatherer)
    assert merged is not None
    inserted, touched = int(merged[0]), int(merged[1])
    if sql.has_suspect(spec) and await conn.fetchval(sql.any_suspect(spec)):
        status = await conn.execute(sql.clear_suspect(spec), gatherer)
        touched += int(status.rsplit(" ", 1)[-1])
    return inserted, touched, None if newest is None else float(newest)


async def _read_all(pipe: CopyPipe) -> memoryview:
    """The whole batch as binary COPY data, read from the gatherer before production's COPY.

    Why not stream it through (as before): ``copy_to_table`` with an async iterator waits for
    each chunk while its result future is already out. When the server dies in that wait,
    asyncpg fails the future, then writes the next chunk (or CopyFail) to the closed transport;
    under uvloop that write raises, the future is never awaited, and asyncio logs "Future
    exception was never retrieved" (issue 16). With the data in hand, asyncpg writes the
    COPY statement, the data and CopyDone without yielding to the event loop, then awaits the
    result: a loss can only surface in that await. Memory is bounded by the batch limits
    (``batch_rows``, ``batch_bytes``); the cost is that the gatherer read and the production
    write of one batch no longer overlap.
    """
    # A memoryview, not bytes: copy_to_table takes bytes for a file name (os.fspath).
    return memoryview(b"".join([chunk async for chunk in pipe.chunks()]))


async def copy_in(
    conn: asyncpg.Connection, table: str, data: memoryview, columns: list[str]
) -> str:
    """``copy_to_table(table, source=data, format="binary")`` such that asyncpg's COPY result
    future is always awaited or has its exception retrieved (issue 16).

    asyncpg 0.32's ``Protocol.copy_in`` creates its result future, writes the COPY statement,
    then, for data in hand, ``await writing_allowed.wait()`` *outside* any timer: when the
    previous write left the transport paused (its buffer above the high-water mark) and the
    server dies in that wait, nothing sets the event again, so the COPY hangs until cancelled;
    the cancellation then writes CopyFail to a transport uvloop has closed, which raises
    ``RuntimeError`` before asyncpg attaches the callback that retrieves the future's
    exception ("Future exception was never retrieved … ConnectionDoesNotExistError"). So:

    1. wait here until the transport accepts writes, or the connection is lost (then raise a
       retryable :class:`asyncpg.ConnectionDoesNotExistError` without starting the COPY).
       From then on ``copy_in`` runs to its ``await`` of the future without yielding: the
       statement is far below the high-water mark and cannot pause the transport again;
    2. if ``copy_to_table`` still fails with a client-side error (a write that fails
       synchronously, e.g. EPIPE as the server dies), add asyncpg's own retrieving callback to
       the connection's pending futures, the step its error path skipped.
    """
    await _writable(conn)
    try:
        status: str = await conn.copy_to_table(table, source=data, format="binary", columns=columns)
    except asyncpg.PostgresError:
        raise  # the server answered: asyncpg awaited the future
    except BaseException:
        _retrieve_pending(conn)
        raise
    return status


async def _writable(conn: asyncpg.Connection) -> None:
    """Return once ``conn``'s transport is not paused for writing; raise
    ConnectionDoesNotExistError if the connection is lost first."""
    if conn.is_closed():  # terminated or aborted: asyncpg has dropped its protocol already
        raise asyncpg.ConnectionDoesNotExistError("connection lost before COPY started")
    allowed: asyncio.Event = conn._protocol.writing_allowed  # asyncpg internals: see copy_in
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


def _retrieve_pending(conn: asyncpg.Connection) -> None:
    """Mark the exception of every future the connection's protocol still holds (its result
    waiter; asyncpg keeps it in a C attribute) as retrieved once it is set."""
    for ref in gc.get_referents(conn._protocol):  # asyncpg internals: see copy_in
        if isinstance(ref, asyncio.Future):
            ref.add_done_callback(_consume)


def _consume(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        with contextlib.suppress(BaseException):
            fut.exception()
