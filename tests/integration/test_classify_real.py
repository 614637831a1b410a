"""classify() against errors raised by a real PostgreSQL server."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from kalshi_data.pgcluster import PgCluster
from kalshi_data.resilience import ErrorClass, classify


async def _error(coro: object) -> BaseException:
    try:
        await coro  # type: ignore[misc]
    except Exception as exc:
        return exc
    raise AssertionError("expected an error")


async def test_permanent_server_errors(pg_cluster: PgCluster) -> None:
    """Wrong password, missing database and bad SQL are permanent."""
    bad_pw = await _error(asyncpg.connect(pg_cluster.dsn(password="nope"), timeout=5))
    assert classify(bad_pw) is ErrorClass.PERMANENT
    missing = await _error(asyncpg.connect(pg_cluster.dsn("no_such_db"), timeout=5))
    assert classify(missing) is ErrorClass.PERMANENT
    conn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    try:
        assert classify(await _error(conn.execute("SELEC 1"))) is ErrorClass.PERMANENT
        assert classify(await _error(conn.execute("SELECT * FROM nope"))) is ErrorClass.PERMANENT
    finally:
        await conn.close()


async def test_server_killed_mid_query_is_retryable(pg_cluster: PgCluster) -> None:
    """kill -9 of the server during a query: the client's error is retryable."""
    conn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    query = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(pg_cluster.kill9)
    exc = await _error(query)
    assert classify(exc) is ErrorClass.RETRYABLE
    conn.terminate()
    refused = await _error(asyncpg.connect(pg_cluster.dsn(), timeout=5))
    assert classify(refused) is ErrorClass.RETRYABLE  # connection refused while down


async def test_fast_shutdown_57p01_is_retryable(pg_cluster: PgCluster) -> None:
    """Sessions ended by the administrator get 57P01 (admin_shutdown): retryable; a fast
    shutdown during a query is retryable whichever way the driver reports it."""
    conn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    admin = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    query = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.3)
    await admin.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
    exc = await _error(query)
    # asyncpg reports 08003 (connection gone) with the server's 57P01 as the cause.
    states = {getattr(exc, "sqlstate", None), getattr(exc.__cause__, "sqlstate", None)}
    assert "57P01" in states
    assert classify(exc) is ErrorClass.RETRYABLE
    assert exc.__cause__ is not None
    assert classify(exc.__cause__) is ErrorClass.RETRYABLE
    conn.terminate()
    conn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    query = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(pg_cluster.stop, "fast")
    assert classify(await _error(query)) is ErrorClass.RETRYABLE
    conn.terminate()
    admin.terminate()


@pytest.mark.parametrize("state", ["25006", "40001", "40P01", "53300", "57P03", "08006"])
def test_retryable_sqlstates(state: str) -> None:
    """The SQLSTATEs of failovers, serialization and exhaustion are retryable."""
    exc = asyncpg.PostgresError.new({"C": state, "M": "x"})
    assert classify(exc) is ErrorClass.RETRYABLE
