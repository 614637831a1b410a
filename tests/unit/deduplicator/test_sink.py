"""The production side (deduplicator/sink.py) against real gatherer and production databases:
cursors created and pinned, one transaction per batch that is fenced by the lease and by the
cursor, rows merged once whether staged or copied directly, and ``copy_in`` never leaving a
COPY future unretrieved when the connection is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import psycopg
import pytest

from deduplicator import lease, sink, source
from deduplicator.errors import CursorMoved, NotLeader
from kalshi_data import pgcopy
from kalshi_data.copypipe import CopyPipe
from kalshi_data.tables import SYNCED_TABLES, TRADES
from tests.unit.deduplicator.conftest import expected_ids, insert_trades, trade_ids


@pytest.fixture
async def prod(production_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await sink.connect(production_db, timeout_s=5, statement_timeout_s=30, instance="a")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def reader(gatherer_plain_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await source.connect(gatherer_plain_db, timeout_s=5, gatherer="g1")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def leader(prod: asyncpg.Connection) -> lease.LeaseState:
    state = lease.LeaseState("dedup-a")
    assert await lease.try_acquire(prod, state, ttl_s=60)
    return state


async def _batch(
    reader: asyncpg.Connection, start: tuple[int, int] = (0, 0)
) -> tuple[source.BatchBounds, Callable[[bool], CopyPipe]]:
    h = await source.horizon(reader)
    got = await source.keyed_batch(reader, TRADES, start, h, max_rows=1000, max_bytes=1 << 24)
    assert got is not None
    bounds = got[0]

    def open_pipe(with_gatherer: bool) -> CopyPipe:
        return source.copy_pipe(reader, TRADES, bounds, gatherer="g1" if with_gatherer else None)

    return bounds, open_pipe


def _cursor(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT last_xid::text::bigint, last_id, rows_read FROM sync_cursors "
            "WHERE gatherer_id = 'g1' AND table_name = 'trades'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def test_connection_is_named_and_without_jit(prod: asyncpg.Connection) -> None:
    assert await prod.fetchval("SHOW application_name") == "kalshi-dedup-a"
    assert await prod.fetchval("SHOW jit") == "off"


async def test_load_cursors_creates_every_table_at_zero_then_pins(
    prod: asyncpg.Connection,
) -> None:
    cursors = await sink.load_cursors(prod, "g1")
    assert set(cursors) == {s.name for s in SYNCED_TABLES}
    assert all(c == sink.StoredCursor((0, 0), None, None) for c in cursors.values())
    await sink.pin_or_reset(prod, "g1", "trades", system_identifier="111", reset=False)
    await sink.pin_or_reset(prod, "g1", "trades", system_identifier="222", reset=False)
    assert (await sink.load_cursors(prod, "g1"))["trades"].system_identifier == "111"  # first wins
    await sink.pin_or_reset(prod, "g1", "trades", system_identifier="222", reset=True)
    again = await sink.load_cursors(prod, "g1")
    assert again["trades"] == sink.StoredCursor((0, 0), "222", None)
    assert await sink.load_cursors(prod, "g2") != {}  # another gatherer's rows are its own


@pytest.mark.parametrize("direct", [False, True])
async def test_merge_inserts_once_and_moves_the_cursor(
    prod: asyncpg.Connection,
    reader: asyncpg.Connection,
    leader: lease.LeaseState,
    production_db: str,
    gatherer_plain_db: str,
    direct: bool,
) -> None:
    await sink.load_cursors(prod, "g1")
    insert_trades(gatherer_plain_db, 0, 9)
    bounds, open_pipe = await _batch(reader)
    result = await sink.merge_batch(prod, leader, "g1", TRADES, bounds, open_pipe, direct=direct)
    assert (result.rows, result.inserted, result.conflicted) == (10, 10, False)
    # Staged rows give the newest received_at; a direct COPY stages nothing (the caller passes
    # the one its keys query read).
    assert (result.newest_received_at is not None) is (not direct)
    assert trade_ids(production_db) == expected_ids(0, 9)
    assert _cursor(production_db) == (*bounds.end, 10)
    # The same rows again from a second gatherer: nothing new; a direct COPY meets them and
    # falls back to staging.
    await sink.load_cursors(prod, "g2")
    again = await sink.merge_batch(prod, leader, "g2", TRADES, bounds, open_pipe, direct=direct)
    assert (again.rows, again.inserted, again.conflicted) == (10, 0, direct)
    assert trade_ids(production_db) == expected_ids(0, 9)


async def test_no_pipe_moves_only_the_cursor(
    prod: asyncpg.Connection,
    reader: asyncpg.Connection,
    leader: lease.LeaseState,
    production_db: str,
    gatherer_plain_db: str,
) -> None:
    await sink.load_cursors(prod, "g1")
    insert_trades(gatherer_plain_db, 0, 2)
    bounds, _ = await _batch(reader)
    result = await sink.merge_batch(prod, leader, "g1", TRADES, bounds, None, newest=12.5)
    assert (result.rows, result.inserted, result.newest_received_at) == (3, 0, 12.5)
    assert trade_ids(production_db) == []
    assert _cursor(production_db) == (*bounds.end, 3)


async def test_deposed_leader_writes_nothing(
    prod: asyncpg.Connection,
    reader: asyncpg.Connection,
    leader: lease.LeaseState,
    production_db: str,
    gatherer_plain_db: str,
) -> None:
    await sink.load_cursors(prod, "g1")
    insert_trades(gatherer_plain_db, 0, 2)
    bounds, open_pipe = await _batch(reader)
    assert await lease.try_acquire(prod, lease.LeaseState("dedup-b"), ttl_s=0)
    with pytest.raises(NotLeader):
        await sink.merge_batch(prod, leader, "g1", TRADES, bounds, open_pipe)
    assert leader.leader is False
    assert trade_ids(production_db) == []
    assert _cursor(production_db) == (0, 0, 0)


async def test_a_moved_cursor_rolls_the_batch_back(
    prod: asyncpg.Connection,
    reader: asyncpg.Connection,
    leader: lease.LeaseState,
    production_db: str,
    gatherer_plain_db: str,
) -> None:
    await sink.load_cursors(prod, "g1")
    insert_trades(gatherer_plain_db, 0, 2)
    bounds, open_pipe = await _batch(reader)
    assert (await sink.merge_batch(prod, leader, "g1", TRADES, bounds, open_pipe)).inserted == 3
    insert_trades(gatherer_plain_db, 3, 4)
    later, later_pipe = await _batch(reader, bounds.end)
    stale = source.BatchBounds((0, 0), later.end, later.rows)  # a batch read from the old cursor
    with pytest.raises(CursorMoved):
        await sink.merge_batch(prod, leader, "g1", TRADES, stale, later_pipe)
    assert trade_ids(production_db) == expected_ids(0, 2)
    assert _cursor(production_db) == (*bounds.end, 3)


def _copy_data(rows: int) -> memoryview:
    row = b"\0\x01\0\0\0\x04\0\0\0\x01"  # one int4 column
    return memoryview(b"PGCOPY\n\xff\r\n\0" + b"\0" * 8 + row * rows + b"\xff\xff")


async def test_copy_data_copies_and_names_the_count(production_db: str) -> None:
    conn = await asyncpg.connect(production_db)
    try:
        await conn.execute("CREATE TABLE t (x int)")
        assert await pgcopy.copy_data(conn, "t", _copy_data(10), ["x"]) == "COPY 10"
        assert await conn.fetchval("SELECT sum(x) FROM t") == 10
    finally:
        await conn.close()


async def test_copy_data_waits_out_a_paused_transport_until_the_server_drops_it(
    production_db: str,
) -> None:
    """The transport is paused for writing (a previous write above the high-water mark) when
    the server ends the session: ``pgcopy.copy_data`` ends in the retryable
    ConnectionDoesNotExistError without starting the COPY, not in a hang, and leaves no future
    unretrieved (the loop guard, tests/loopguard.py, fails the test otherwise)."""
    conn = await asyncpg.connect(production_db)
    try:
        await conn.execute("CREATE TABLE t (x int)")
        pid = conn.get_server_pid()
        conn._protocol.pause_writing()
        with psycopg.connect(production_db, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await asyncio.wait_for(pgcopy.copy_data(conn, "t", _copy_data(10), ["x"]), 30)
    finally:
        conn.terminate()


async def test_copy_data_on_a_terminated_connection_is_retryable(production_db: str) -> None:
    """Once asyncpg has dropped a terminated connection's protocol, the sink's COPY (now
    ``pgcopy.copy_data``) used to fail with AttributeError ('NoneType' object has no attribute
    'writing_allowed'), which no classifier treats as a lost connection."""
    conn = await asyncpg.connect(production_db)
    conn.terminate()
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await pgcopy.copy_data(conn, "t", _copy_data(1), ["x"])
