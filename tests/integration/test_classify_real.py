"""classify() against errors raised by a real PostgreSQL server, through asyncpg and psycopg."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable

import asyncpg
import psycopg
import pytest

from kalshi_data.resilience import ErrorClass, classify
from kalshi_data.testing.pgcluster import PgCluster

R, P = ErrorClass.RETRYABLE, ErrorClass.PERMANENT


async def _error(aw: Awaitable[object]) -> BaseException:
    try:
        await aw
    except Exception as exc:
        return exc
    raise AssertionError("expected an error")


async def _wait_sleeping(cluster: PgCluster, count: int = 1) -> None:
    """Poll pg_stat_activity until `count` sessions are inside pg_sleep (deadline 10 s)."""
    deadline = time.monotonic() + 10
    sql = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'"
    )
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(cluster.execute, sql)
        if int(str(rows[0][0])) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the query never started")


async def _psycopg_connect(dsn: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)


async def test_wrong_password_and_missing_database_are_permanent(pg_cluster: PgCluster) -> None:
    """A rejected login (bad password, unknown database or role) is permanent in both drivers."""
    wrong = pg_cluster.dsn(password=secrets.token_hex(8))
    missing_db = pg_cluster.dsn("no_such_db")
    unknown_role = pg_cluster.dsn(user="ghost", password=secrets.token_hex(8))
    for dsn in (wrong, missing_db, unknown_role):
        a = await _error(asyncpg.connect(dsn, timeout=5))
        assert a.sqlstate in {"28P01", "3D000"}  # type: ignore[attr-defined]
        assert classify(a) is P
        p = await _error(_psycopg_connect(dsn))
        assert isinstance(p, psycopg.OperationalError)
        assert p.sqlstate is None  # the trap: libpq gives no SQLSTATE for a failed login
        assert classify(p) is P


async def test_syntax_and_undefined_table_are_permanent(pg_cluster: PgCluster) -> None:
    """Bad SQL is permanent in both drivers."""
    conn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    try:
        assert classify(await _error(conn.execute("SELEC 1"))) is P
        assert classify(await _error(conn.execute("SELECT * FROM nope"))) is P
    finally:
        await conn.close()
    pconn = await _psycopg_connect(pg_cluster.dsn())
    try:
        assert classify(await _error(pconn.execute("SELEC 1"))) is P
    finally:
        await pconn.close()


async def test_server_killed_mid_query_then_refused_is_retryable(pg_cluster: PgCluster) -> None:
    """kill -9 of the server during a query, then connecting while it is down: retryable."""
    aconn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    pconn = await _psycopg_connect(pg_cluster.dsn())
    try:
        a_query = asyncio.create_task(aconn.execute("SELECT pg_sleep(30)"))
        p_query = asyncio.create_task(pconn.execute("SELECT pg_sleep(30)"))
        await _wait_sleeping(pg_cluster, 2)
        await asyncio.to_thread(pg_cluster.kill9)
        assert classify(await _error(a_query)) is R
        assert classify(await _error(p_query)) is R
        assert classify(await _error(pconn.execute("SELECT 1"))) is R  # the closed connection
        a_refused = await _error(asyncpg.connect(pg_cluster.dsn(), timeout=5))
        assert isinstance(a_refused, ConnectionRefusedError)
        assert classify(a_refused) is R
        p_refused = await _error(_psycopg_connect(pg_cluster.dsn()))
        assert isinstance(p_refused, psycopg.OperationalError)
        assert classify(p_refused) is R
    finally:
        aconn.terminate()
        await pconn.close()


async def test_admin_shutdown_57p01_is_retryable(pg_cluster: PgCluster) -> None:
    """A terminated session (57P01, admin_shutdown) is retryable, however the driver wraps it."""
    conn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    try:
        query = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
        await _wait_sleeping(pg_cluster)
        await asyncio.to_thread(
            pg_cluster.execute, f"SELECT pg_terminate_backend({conn.get_server_pid()})"
        )
        exc = await _error(query)
    finally:
        conn.terminate()
    # asyncpg reports 08003 (connection gone) with the server's 57P01 as the cause.
    states = {getattr(exc, "sqlstate", None), getattr(exc.__cause__, "sqlstate", None)}
    assert "57P01" in states
    assert classify(exc) is R
    assert exc.__cause__ is not None
    assert classify(exc.__cause__) is R


async def test_fast_shutdown_during_a_query_is_retryable(pg_cluster: PgCluster) -> None:
    """pg_ctl stop -m fast while queries run: both drivers' errors are retryable (57P01)."""
    aconn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    pconn = await _psycopg_connect(pg_cluster.dsn())
    try:
        a_query = asyncio.create_task(aconn.execute("SELECT pg_sleep(30)"))
        p_query = asyncio.create_task(pconn.execute("SELECT pg_sleep(30)"))
        await _wait_sleeping(pg_cluster, 2)
        await asyncio.to_thread(pg_cluster.stop, "fast")
        a_exc = await _error(a_query)
        p_exc = await _error(p_query)
    finally:
        aconn.terminate()
        await pconn.close()
    assert classify(a_exc) is R
    assert classify(p_exc) is R
    assert getattr(p_exc, "sqlstate", None) == "57P01"


@pytest.mark.parametrize("state", ["25006", "40001", "40P01", "53300", "57P03", "08006"])
def test_retryable_sqlstates(state: str) -> None:
    """The SQLSTATEs of failovers, serialization and exhaustion are retryable."""
    exc = asyncpg.PostgresError.new({"C": state, "M": "x"})
    assert classify(exc) is R
