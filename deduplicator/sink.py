"""The production side: one transaction per batch = fence + cursor check + merge + cursor CAS."""

from __future__ import annotations

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
        server_settings={"application_name": f"kalshi-dedup-{instance}"},
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
    pipe: CopyPipe,
) -> MergeResult:
    """Merge one gatherer batch into production in ONE transaction (DESIGN §4.2).

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
        # Every time: a cache of "already created" keyed by connection was wrong after a
        # reconnect (a new connection object can reuse the old one's id()).
        await conn.execute(sql.create_stage(spec))
        await conn.copy_to_table(
            sql.stage_name(spec),
            source=pipe.chunks(),
            format="binary",
            columns=list(spec.column_names),
        )
        stats = await conn.fetchrow(sql.stage_stats(spec))
        assert stats is not None
        staged_rows, newest = int(stats[0]), stats[1]
        merged = await conn.fetchrow(sql.merge_insert(spec), gatherer)
        assert merged is not None
        cleared = 0
        if sql.has_suspect(spec) and await conn.fetchval(sql.any_suspect(spec)):
            status = await conn.execute(sql.clear_suspect(spec), gatherer)
            cleared = int(status.rsplit(" ", 1)[-1])
        status = await conn.execute(
            sql.CURSOR_ADVANCE,
            gatherer,
            spec.name,
            str(bounds.end[0]),
            bounds.end[1],
            staged_rows,
            newest if newest is not None else 0.0,
            str(bounds.start[0]),
            bounds.start[1],
        )
        if status != "UPDATE 1":
            raise CursorMoved(f"{gatherer}/{spec.name} cursor moved during the batch")
    return MergeResult(
        staged_rows,
        int(merged[0]),
        int(merged[1]) + cleared,
        None if newest is None else float(newest),
    )
