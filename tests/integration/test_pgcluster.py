"""The PostgreSQL cluster manager against real servers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import asyncpg
import psycopg
import pytest

from kalshi_data.testing.pgcluster import PgCluster


def test_start_stop_restart(pg_cluster: PgCluster) -> None:
    """A cluster answers queries, stops, and answers again after a restart."""
    assert pg_cluster.execute("SELECT 41 + 1") == [(42,)]
    pg_cluster.stop()
    assert not pg_cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        pg_cluster.execute("SELECT 1")
    pg_cluster.start()
    assert pg_cluster.execute("SELECT 1") == [(1,)]


def test_kill9_then_restart_keeps_committed_rows(pg_cluster: PgCluster) -> None:
    """kill -9 of the postmaster and backends loses no committed row; restart recovers."""
    pg_cluster.execute("CREATE TABLE t (v int)")
    pg_cluster.execute("INSERT INTO t SELECT generate_series(1, 100)")
    pid = pg_cluster.pid
    pg_cluster.kill9()
    assert not pg_cluster.is_running()
    pg_cluster.start()
    assert pg_cluster.pid != pid
    assert pg_cluster.execute("SELECT count(*) FROM t") == [(100,)]


def test_initdb_gives_a_new_system_identifier(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """A cluster rebuilt with initdb has a new system identifier (what cursors are pinned to)."""
    rebuilt = PgCluster(tmp_path / "rebuilt")
    try:
        rebuilt.init().start()
        assert rebuilt.system_identifier != pg_cluster.system_identifier
    finally:
        rebuilt.destroy()


async def test_wrong_password_is_refused(pg_cluster: PgCluster) -> None:
    """Host connections need the generated superuser password (scram-sha-256)."""
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await asyncpg.connect(pg_cluster.dsn(password="not-the-password"), timeout=5)
    assert info.value.sqlstate == "28P01"


def test_synchronous_standby_promotion(pg_cluster: PgCluster) -> None:
    """A synchronous standby has every committed row and accepts writes once promoted."""
    standby = pg_cluster.create_standby(Path(tempfile.mkdtemp(prefix="kd-standby-")))
    try:
        rows = pg_cluster.execute("SELECT application_name, sync_state FROM pg_stat_replication")
        assert rows == [("standby1", "sync")]
        pg_cluster.execute("CREATE TABLE t (v int)")
        pg_cluster.execute("INSERT INTO t SELECT generate_series(1, 50)")
        pg_cluster.kill9()
        # Synchronous replication: the commit returned only once the standby had it.
        assert standby.execute("SELECT pg_is_in_recovery()") == [(True,)]
        standby.promote()
        assert standby.execute("SELECT count(*) FROM t") == [(50,)]
        standby.execute("INSERT INTO t VALUES (51)")
        assert standby.execute("SELECT max(v) FROM t") == [(51,)]
    finally:
        standby.destroy()
