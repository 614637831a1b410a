"""Migrations and schemas on a real PostgreSQL 15 (the plain-PostgreSQL path)."""

from __future__ import annotations

import hashlib
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from kalshi_data import tables
from kalshi_data.migrate import ACCEPTED_CHECKSUMS, MigrationError, load, migrate, migrations_dir
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.users import create_user


def _columns(dsn: str, table: str) -> list[tuple[str, str, bool]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull "
            "FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY a.attnum",
            (table,),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _unique_columns(dsn: str, table: str) -> set[tuple[str, ...]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_constraint c "
            "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
            "WHERE c.conrelid = %s::regclass AND c.contype IN ('u', 'p') GROUP BY c.oid",
            (table,),
        ).fetchall()
    return {tuple(r[0]) for r in rows}


@pytest.mark.both_backends
def test_gatherer_migrations_idempotent(fresh_db: str) -> None:
    """Applying twice applies everything once, then nothing (on TimescaleDB too)."""
    first = migrate(fresh_db, "gatherer")
    assert first == [m.name for m in load("gatherer")]
    assert migrate(fresh_db, "gatherer") == []


def test_concurrent_runs_are_safe(fresh_db: str) -> None:
    """Two simultaneous runs apply every file exactly once between them."""
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(fresh_db, "production"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = sorted(name for r in results for name in r)
    assert applied == sorted(m.name for m in load("production"))
    with psycopg.connect(fresh_db) as conn:
        n = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert n == (len(applied),)


def test_edited_migration_is_refused(fresh_db: str, tmp_path: Path) -> None:
    """A file changed after it was applied stops the run with a message naming it."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), copy)
    migrate(fresh_db, "gatherer", base=copy)
    path = copy / "gatherer" / "0002_tables.sql"
    path.write_text(path.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match=r"0002_tables\.sql was edited"):
        migrate(fresh_db, "gatherer", base=copy)


def test_wrong_target_is_refused(fresh_db: str) -> None:
    """Production migrations are refused on a gatherer database."""
    migrate(fresh_db, "gatherer")
    with pytest.raises(MigrationError, match="gatherer migrations"):
        migrate(fresh_db, "production")


@pytest.mark.parametrize("target", ["gatherer", "production"])
def test_schema_matches_table_contract(fresh_db: str, target: str) -> None:
    """Every synced table has exactly the columns and identity of kalshi_data/tables.py."""
    migrate(fresh_db, target)  # type: ignore[arg-type]
    extra = tables.CURSOR_COLUMNS if target == "gatherer" else tables.PRODUCTION_COLUMNS
    for spec in tables.SYNCED_TABLES:
        cols = _columns(fresh_db, spec.name)
        names = [c[0] for c in cols]
        assert names == [*spec.column_names, *extra], spec.name
        with psycopg.connect(fresh_db) as conn:
            for col, (name, pgtype, nullable) in zip(spec.columns, cols, strict=False):
                row = conn.execute("SELECT format_type(%s::regtype, NULL)", (col.pgtype,))
                expected = row.fetchone()
                assert expected is not None
                assert (col.name, expected[0], col.nullable) == (name, pgtype, nullable), spec.name
        key = spec.identity if target == "gatherer" else spec.production_key
        assert key in _unique_columns(fresh_db, spec.name), spec.name


def test_plain_postgres_partitions_route_rows(fresh_db: str) -> None:
    """Without TimescaleDB, time-series tables are range-partitioned by day with a default."""
    migrate(fresh_db, "gatherer")
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT kd_timescale_enabled()").fetchone() == (False,)
        conn.execute(
            "INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, "
            "is_block_trade, suspect, received_at) VALUES "
            "(gen_random_uuid(), 'A', now(), 4200, 5800, 100, false, false, now()),"
            "(gen_random_uuid(), 'A', '2001-01-01', 4200, 5800, 100, false, false, now())"
        )
        rows = conn.execute(
            "SELECT tableoid::regclass::text FROM trades ORDER BY exchange_ts"
        ).fetchall()
    assert rows[0][0] == "trades_default"
    assert rows[1][0].startswith("trades_p")


def test_cursor_columns_follow_commit_horizon(fresh_db: str) -> None:
    """ingest_xid is the writer's xid, and rows of an open transaction stay above xmin."""
    migrate(fresh_db, "gatherer")
    insert = (
        "INSERT INTO dead_letters (dl_id, source, reason, raw, received_at) "
        "VALUES (gen_random_uuid(), 'ws', 'test', '\\x00', now())"
    )
    with psycopg.connect(fresh_db) as slow, psycopg.connect(fresh_db, autocommit=True) as fast:
        slow.execute(insert)  # stays open: its xid holds the horizon back
        fast.execute(insert)
        visible = fast.execute(
            "SELECT count(*) FROM dead_letters "
            "WHERE ingest_xid < pg_snapshot_xmin(pg_current_snapshot())"
        ).fetchone()
        assert visible == (0,)  # the committed row is above the slow transaction's xid
        slow.commit()
        visible = fast.execute(
            "SELECT count(*) FROM dead_letters "
            "WHERE ingest_xid < pg_snapshot_xmin(pg_current_snapshot())"
        ).fetchone()
        assert visible == (2,)


def _user_dsn(cluster: PgCluster, dbname: str, user: str, password: str) -> str:
    return cluster.dsn(dbname, user=user, password=password)


@pytest.mark.both_backends
def test_gatherer_roles_are_restricted(gatherer_shared_pg: PgCluster, fresh_db: str) -> None:
    """The writer can only insert (and read identity columns); the reader can only read."""
    migrate(fresh_db, "gatherer")
    dbname = fresh_db.rsplit("/", 1)[1]
    suffix = dbname.replace("_", "")
    create_user(fresh_db, "gatherer_writer", f"gw{suffix}", "pw-writer-test")
    create_user(fresh_db, "dedup_reader", f"dr{suffix}", "pw-reader-test")
    writer = _user_dsn(gatherer_shared_pg, dbname, f"gw{suffix}", "pw-writer-test")
    reader = _user_dsn(gatherer_shared_pg, dbname, f"dr{suffix}", "pw-reader-test")
    # One timestamp, computed once: now() would differ per autocommit statement, and the
    # replay below must carry the same identity (exchange_ts is part of it).
    stamp = datetime.now(UTC) - timedelta(hours=1)
    row = (
        "INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, "
        "is_block_trade, suspect, received_at) VALUES "
        f"('00000000-0000-0000-0000-000000000001', 'A', '{stamp.isoformat()}', "
        "4200, 5800, 100, false, false, now())"
    )
    with psycopg.connect(writer, autocommit=True) as conn:
        conn.execute(row.encode())
        conn.execute((row + " ON CONFLICT DO NOTHING").encode())
        assert conn.execute("SELECT kd_ensure_partitions(0, 1)").fetchone() is not None
        for forbidden in (
            "SELECT * FROM trades",
            "SELECT ticker FROM trades",
            "DELETE FROM trades",
            "UPDATE trades SET count = 0",
            "TRUNCATE trades",
            "SELECT * FROM schema_migrations",
            "CREATE TABLE evil (v int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(row.replace("0001", "0002").encode())
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(row.replace("0001", "0002").encode())
    _assert_storage_grants_narrow(fresh_db, f"gw{suffix}", f"dr{suffix}")


def _assert_storage_grants_narrow(dsn: str, writer: str, reader: str) -> None:
    """Every table that stores rows (partitions, chunks, compressed chunks included) grants the
    writer at most INSERT and the reader at most SELECT: a privilege on a child table would
    bypass the parent's narrow grants."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.oid::regclass::text, r.rolname, "
            "       has_table_privilege(r.oid, c.oid, 'UPDATE') "
            "    OR has_table_privilege(r.oid, c.oid, 'DELETE') "
            "    OR has_table_privilege(r.oid, c.oid, 'TRUNCATE'), "
            "       has_table_privilege(r.oid, c.oid, 'INSERT') "
            "FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN pg_roles r "
            "WHERE c.relkind IN ('r', 'p') AND r.rolname IN (%s, %s) "
            "  AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            (writer, reader),
        ).fetchall()
    assert rows, "no storage tables found"
    too_wide = [(t, role) for t, role, modify, _ins in rows if modify]
    assert too_wide == []
    reader_inserts = [t for t, role, _m, ins in rows if role == reader and ins]
    assert reader_inserts == []


def test_production_writer_has_no_ddl(shared_pg: PgCluster, fresh_db: str) -> None:
    """The deduplicator's production role writes data and cursors but cannot change schema."""
    migrate(fresh_db, "production")
    dbname = fresh_db.rsplit("/", 1)[1]
    user = "dw" + dbname.replace("_", "")
    create_user(fresh_db, "dedup_writer", user, "pw-dedup-test")
    with psycopg.connect(_user_dsn(shared_pg, dbname, user, "pw-dedup-test")) as conn:
        conn.execute("UPDATE sync_cursors SET last_id = 1 WHERE gatherer_id = 'g1'")
        conn.execute("UPDATE dedup_lease SET epoch = epoch + 1 WHERE name = 'dedup'")
        conn.commit()
        for forbidden in (
            "CREATE TABLE evil (v int)",
            "DROP TABLE trades",
            "ALTER TABLE trades ADD COLUMN x int",
            "DELETE FROM trades",
            "TRUNCATE trades",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
            conn.rollback()


OLD_0004 = Path(__file__).parent / "data" / "gatherer_0004_roles_before_0007.sql"


def _writer_column_grants(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name::text, column_name::text FROM information_schema.column_privileges"
            " WHERE grantee = 'kd_gatherer_writer' AND privilege_type = 'SELECT'"
            " AND table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_database_with_the_old_0004_migrates_on(fresh_db: str, tmp_path: Path) -> None:
    """A gatherer that applied 0004 before its column grants were removed (its checksum is in
    ACCEPTED_CHECKSUMS) migrates on, and 0007 leaves it with the same privileges as a new one;
    any other content of 0004 is still refused."""
    old = tmp_path / "old"
    shutil.copytree(migrations_dir(), old)
    (old / "gatherer" / "0004_roles.sql").write_text(OLD_0004.read_text())
    for later in (old / "gatherer").glob("0007_*.sql"):
        later.unlink()
    migrate(fresh_db, "gatherer", base=old)
    checksum = hashlib.sha256(OLD_0004.read_bytes()).hexdigest()
    assert checksum in ACCEPTED_CHECKSUMS[("gatherer", "0004")]
    assert ("trades", "trade_id") in _writer_column_grants(fresh_db)
    assert migrate(fresh_db, "gatherer") == ["0007_timescale.sql"]
    assert _writer_column_grants(fresh_db) == []
    assert migrate(fresh_db, "gatherer") == []
    # only the listed checksum is accepted: a database that recorded any other is refused
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE schema_migrations SET checksum = %s WHERE version = '0004'",
            (hashlib.sha256(b"another edit").hexdigest(),),
        )
    with pytest.raises(MigrationError, match=r"0004_roles\.sql was edited"):
        migrate(fresh_db, "gatherer")
