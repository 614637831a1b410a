"""Reading one gatherer database: identity, horizon, batch bounds, and a binary COPY stream.

Rows are never decoded here: the batch is streamed as PostgreSQL binary COPY from the gatherer
straight into the production staging table (both sides have the same column types, from
tables.py), which keeps the deduplicator's CPU and memory flat whatever the row width.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from deduplicator import sql
from kalshi_data.copypipe import CopyPipe
from kalshi_data.dbcheck import check_timescale_preload
from kalshi_data.tables import TableSpec


@dataclass(frozen=True, slots=True)
class Identity:
    """Which cluster a gatherer database is, and how far its xids have gone."""

    system_identifier: str
    next_xid: int


@dataclass(frozen=True, slots=True)
class BatchBounds:
    """The closed cursor range ``(start, end]`` of one batch and its row count."""

    start: tuple[int, int]
    end: tuple[int, int]
    rows: int


async def connect(dsn: str, *, timeout_s: float, gatherer: str) -> asyncpg.Connection:
    """A read-only connection to a gatherer database (DNS resolved anew on every call)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn,
        timeout=timeout_s,
        command_timeout=300,
        server_settings={
            "application_name": f"kalshi-dedup-reader-{gatherer}",
            "default_transaction_read_only": "on",
            # Batches are "the next N rows in cursor order" over a table partitioned by time
            # (or a hypertable): the fast plan is a Merge Append of every partition's cursor
            # index under the LIMIT. Row estimates for the cursor range are poor, and with them
            # the planner sorted *every* pending row for each batch (quadratic in the backlog:
            # 250 ms per 50,000-row batch with 500,000 pending). No reader query needs a sort
            # that an index cannot give, so sorts are priced out for this session.
            "enable_sort": "off",
            # ...which makes plan costs huge, and JIT would then compile every small query.
            "jit": "off",
            "work_mem": "32MB",
        },
    )
    try:
        await check_timescale_preload(conn, f"gatherer {gatherer}")
    except BaseException:
        await conn.close()
        raise
    return conn


async def identity(conn: asyncpg.Connection) -> Identity:
    """The cluster's system identifier and the next xid it will assign."""
    row = await conn.fetchrow(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), "
        "pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
    )
    assert row is not None
    return Identity(str(row[0]), int(row[1]))


async def horizon(conn: asyncpg.Connection) -> int:
    """Every transaction with an xid below this one has finished (one statement)."""
    return int(await conn.fetchval(sql.horizon_query()))


async def next_batch(
    conn: asyncpg.Connection,
    spec: TableSpec,
    cursor: tuple[int, int],
    horizon_xid: int,
    *,
    max_rows: int,
    max_bytes: int,
) -> BatchBounds | None:
    """Bounds of the next batch after ``cursor``, or None when nothing is pending."""
    row = await conn.fetchrow(
        sql.batch_end_query(spec), str(cursor[0]), cursor[1], str(horizon_xid), max_rows, max_bytes
    )
    if row is None:
        return None
    return BatchBounds(cursor, (int(row[0]), int(row[1])), int(row[2]))


async def backlog(conn: asyncpg.Connection, spec: TableSpec, last_id: int) -> int:
    """Approximate rows pending (ingest sequence high-water mark minus the cursor's id)."""
    return int(await conn.fetchval(sql.backlog_query(spec), last_id))


@dataclass(frozen=True, slots=True)
class BatchKeys:
    """A batch's rows by ingest id, their identity keys (same order), the suspect ones, and the
    newest ``received_at``."""

    ids: list[int]
    keys: list[bytes]
    suspect_ids: frozenset[int]
    newest_received_at: float | None


def _keys(row: asyncpg.Record, first: int) -> BatchKeys:
    """BatchKeys from columns ``first..first+3`` of a keys query row."""
    ids, keys = list(row[first]), list(row[first + 1])
    if len(ids) != len(keys):
        raise ValueError(f"{len(ids)} rows but {len(keys)} identity keys")
    newest = row[first + 3]
    return BatchKeys(
        ids, keys, frozenset(row[first + 2]), None if newest is None else float(newest)
    )


async def keyed_batch(
    conn: asyncpg.Connection,
    spec: TableSpec,
    cursor: tuple[int, int],
    horizon_xid: int,
    *,
    max_rows: int,
    max_bytes: int,
) -> tuple[BatchBounds, BatchKeys] | None:
    """The next batch after ``cursor`` with its rows' identity keys, or None when nothing is
    pending: one statement for narrow tables, bounds then keys for wide ones."""
    if sql.is_wide(spec):
        bounds = await next_batch(
            conn, spec, cursor, horizon_xid, max_rows=max_rows, max_bytes=max_bytes
        )
        if bounds is None:
            return None
        b = bounds
        row = await conn.fetchrow(
            sql.range_keys_query(spec), str(b.start[0]), b.start[1], str(b.end[0]), b.end[1]
        )
        assert row is not None
        return bounds, _keys(row, 0)
    row = await conn.fetchrow(
        sql.keyed_batch_query(spec), str(cursor[0]), cursor[1], str(horizon_xid), max_rows
    )
    assert row is not None
    if not row[2]:
        return None
    bounds = BatchBounds(cursor, (int(row[0]), int(row[1])), int(row[2]))
    return bounds, _keys(row, 3)


def copy_pipe(
    conn: asyncpg.Connection,
    spec: TableSpec,
    bounds: BatchBounds,
    only_ids: list[int] | None = None,
    gatherer: str | None = None,
) -> CopyPipe:
    """The batch's rows (or only those with the given ingest ids) as a binary COPY stream (see
    :mod:`kalshi_data.copypipe`); with ``gatherer``, plus a last column holding that id."""
    b = bounds
    args: list[object] = [str(b.start[0]), b.start[1], str(b.end[0]), b.end[1]]
    if only_ids is not None:
        args.append(only_ids)
    if gatherer is not None:
        args.append(gatherer)
    return CopyPipe(
        conn,
        sql.copy_out_query(spec, only_ids=only_ids is not None, gatherer=gatherer is not None),
        *args,
        name=f"copy-out-{spec.name}",
    )
