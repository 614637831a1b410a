"""Reading a gatherer database (deduplicator/source.py) against a real one: a read-only
session, the cluster's identity, the xid horizon, batch bounds in cursor order under the row
limit, identity keys matching the rows, and the batch as a binary COPY stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import psycopg
import pytest

from deduplicator import source
from kalshi_data.tables import TRADES
from tests.unit.deduplicator.conftest import insert_trades

PGCOPY = b"PGCOPY\n\xff\r\n\0"


@pytest.fixture
async def reader(gatherer_plain_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await source.connect(gatherer_plain_db, timeout_s=5, gatherer="g1")
    try:
        yield conn
    finally:
        await conn.close()


def _cursor_of_rows(dsn: str) -> list[tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT ingest_xid::text::bigint, ingest_id FROM trades ORDER BY 1, 2"
        ).fetchall()
    return [(int(x), int(i)) for x, i in rows]


async def test_reader_session_is_read_only_and_named(reader: asyncpg.Connection) -> None:
    assert await reader.fetchval("SHOW default_transaction_read_only") == "on"
    assert await reader.fetchval("SHOW application_name") == "kalshi-dedup-reader-g1"
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await reader.execute("DELETE FROM trades")


async def test_identity_is_the_clusters(reader: asyncpg.Connection, gatherer_plain_db: str) -> None:
    ident = await source.identity(reader)
    with psycopg.connect(gatherer_plain_db) as conn:
        row = conn.execute(
            "SELECT system_identifier::text, pg_current_xact_id()::text::bigint "
            "FROM pg_control_system()"
        ).fetchone()
    assert row is not None
    assert ident.system_identifier == row[0]
    assert 0 < ident.next_xid <= int(row[1])  # that write took the next xid or a later one


async def test_horizon_passes_committed_rows(
    reader: asyncpg.Connection, gatherer_plain_db: str
) -> None:
    insert_trades(gatherer_plain_db, 0, 2)
    xids = {x for x, _ in _cursor_of_rows(gatherer_plain_db)}
    assert len(xids) == 1
    assert await source.horizon(reader) > max(xids)


@pytest.mark.parametrize("wide", [False, True])
async def test_batches_follow_the_cursor_under_the_row_limit(
    reader: asyncpg.Connection,
    gatherer_plain_db: str,
    monkeypatch: pytest.MonkeyPatch,
    wide: bool,
) -> None:
    """Both query shapes (one statement for narrow tables; bounds then keys for wide ones)."""
    from deduplicator import sql

    monkeypatch.setattr(sql, "is_wide", lambda _spec: wide)
    assert (
        await source.keyed_batch(reader, TRADES, (0, 0), 2**40, max_rows=3, max_bytes=1 << 20)
        is None
    )
    insert_trades(gatherer_plain_db, 0, 4, per_transaction=True)
    cursors = _cursor_of_rows(gatherer_plain_db)
    h = await source.horizon(reader)
    got = await source.keyed_batch(reader, TRADES, (0, 0), h, max_rows=3, max_bytes=1 << 20)
    assert got is not None
    bounds, keys = got
    assert (bounds.start, bounds.end, bounds.rows) == ((0, 0), cursors[2], 3)
    assert keys.ids == [i for _, i in cursors[:3]]
    assert len(set(keys.keys)) == 3
    assert keys.suspect_ids == frozenset()
    assert keys.newest_received_at is not None
    rest = await source.keyed_batch(reader, TRADES, bounds.end, h, max_rows=3, max_bytes=1 << 20)
    assert rest is not None
    assert (rest[0].start, rest[0].end, rest[0].rows) == (cursors[2], cursors[4], 2)
    assert (
        await source.keyed_batch(reader, TRADES, cursors[4], h, max_rows=3, max_bytes=1 << 20)
        is None
    )


async def test_rows_above_the_horizon_wait(
    reader: asyncpg.Connection, gatherer_plain_db: str
) -> None:
    """A transaction that may still commit below the cursor holds the batch back: rows whose xid
    is not below the horizon given are not read."""
    insert_trades(gatherer_plain_db, 0, 1)
    (xid, _), _ = _cursor_of_rows(gatherer_plain_db)
    assert (
        await source.next_batch(reader, TRADES, (0, 0), xid, max_rows=10, max_bytes=1 << 20) is None
    )
    bounds = await source.next_batch(
        reader, TRADES, (0, 0), xid + 1, max_rows=10, max_bytes=1 << 20
    )
    assert bounds is not None
    assert bounds.rows == 2


async def test_backlog_counts_rows_after_the_cursor(
    reader: asyncpg.Connection, gatherer_plain_db: str
) -> None:
    insert_trades(gatherer_plain_db, 0, 9)
    cursors = _cursor_of_rows(gatherer_plain_db)
    assert await source.backlog(reader, TRADES, 0) == 10
    assert await source.backlog(reader, TRADES, cursors[3][1]) == 6


async def test_copy_pipe_streams_the_batch_as_binary_copy(
    reader: asyncpg.Connection, gatherer_plain_db: str
) -> None:
    insert_trades(gatherer_plain_db, 0, 4)
    cursors = _cursor_of_rows(gatherer_plain_db)
    bounds = source.BatchBounds((0, 0), cursors[-1], 5)
    whole = source.copy_pipe(reader, TRADES, bounds)
    try:
        data = b"".join([c async for c in whole.chunks()])
    finally:
        await whole.close()
    only = source.copy_pipe(reader, TRADES, bounds, only_ids=[cursors[0][1]], gatherer="g1")
    try:
        one = b"".join([c async for c in only.chunks()])
    finally:
        await only.close()
    assert data.startswith(PGCOPY)
    assert one.startswith(PGCOPY)
    assert data.endswith(b"\xff\xff")  # the trailer
    # Loaded back (as the sink does into production): the rows, and the gatherer column.
    cols = ", ".join(TRADES.column_names)
    su = await asyncpg.connect(gatherer_plain_db)
    try:
        await su.execute(f"CREATE TEMP TABLE back AS SELECT {cols} FROM trades LIMIT 0")
        await su.copy_to_table("back", source=memoryview(data), format="binary")
        assert await su.fetchval("SELECT count(DISTINCT trade_id) FROM back") == 5
        await su.execute("TRUNCATE back")
        await su.execute("ALTER TABLE back ADD COLUMN gatherer_id text")
        await su.copy_to_table("back", source=memoryview(one), format="binary")
        rows = await su.fetch(
            "SELECT b.gatherer_id, t.ingest_id FROM back b JOIN trades t USING (trade_id)"
        )
        assert [(r[0], r[1]) for r in rows] == [("g1", cursors[0][1])]
    finally:
        await su.close()
