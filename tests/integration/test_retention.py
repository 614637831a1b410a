"""Gatherer retention drops only partitions that are old AND fully synced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from kalshi_data.migrate import migrate
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.retention import run_retention

INSERT = (
    "INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, "
    "is_block_trade, suspect, received_at) SELECT gen_random_uuid(), 'MKT', "
    "%(day)s::timestamptz + i * interval '1 s', 1, 1, 1, false, false, "
    "now() FROM generate_series(1, 10) AS i"
)


def _midnight(now: datetime, days_ago: int) -> datetime:
    """UTC midnight ``days_ago`` days before ``now`` (the one clock reading of a test)."""
    return datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=days_ago)


def _partition_of(conn: psycopg.Connection[tuple[object, ...]], day: datetime) -> str:
    """The partition (native) or chunk (TimescaleDB) holding the rows of ``day``."""
    row = conn.execute(
        "SELECT DISTINCT tableoid::regclass::text FROM trades WHERE exchange_ts >= %s "
        "AND exchange_ts < %s",
        (day, day + timedelta(days=1)),
    ).fetchall()
    assert len(row) == 1, row
    return str(row[0][0])


@pytest.mark.both_backends
async def test_unsynced_partitions_survive(
    gatherer_shared_pg: PgCluster, gatherer_backend: str
) -> None:
    """Old synced partitions are dropped; an old one with unsynced rows is kept; new ones stay.
    On TimescaleDB the old chunks are compressed first (a lagging deduplicator's case)."""
    shared_pg = gatherer_shared_pg
    gath = shared_pg.create_database("ret_gath")
    prod = shared_pg.create_database("ret_prod")
    # One clock reading for the whole test: the rows' days, the partition names and the
    # retention cut-off all derive from it, so a UTC midnight during the run changes nothing.
    now = datetime.now(UTC)
    try:
        migrate(gath, "gatherer")
        migrate(prod, "production")
        with psycopg.connect(gath, autocommit=True) as conn:
            conn.execute("SELECT kd_ensure_partitions(20, 2)")
            conn.execute(INSERT, {"day": _midnight(now, 10)})  # synced below
            row = conn.execute(
                "SELECT max(ingest_xid)::text, max(ingest_id) FROM trades"
            ).fetchone()
            conn.execute(INSERT, {"day": _midnight(now, 9)})  # after the cursor: unsynced
            sysid = conn.execute(
                "SELECT system_identifier::text FROM pg_control_system()"
            ).fetchone()
            day10 = _partition_of(conn, _midnight(now, 10))
            day9 = _partition_of(conn, _midnight(now, 9))
            if gatherer_backend == "timescaledb":
                conn.execute("SELECT compress_chunk(c) FROM show_chunks('trades') c")
        assert row is not None
        assert sysid is not None
        with psycopg.connect(prod, autocommit=True) as conn:
            for t in ("trades", "orderbook_deltas", "orderbook_snapshots", "tickers"):
                xid, iid = (row[0], row[1]) if t == "trades" else ("0", 0)
                conn.execute(
                    "INSERT INTO sync_cursors (gatherer_id, table_name, system_identifier, "
                    "last_xid, last_id) VALUES ('g1', %s, %s, %s::xid8, %s)",
                    (t, sysid[0], xid, iid),
                )
        dry = await run_retention(gath, prod, "g1", timedelta(days=5), dry_run=True, now=now)
        by_part = {d.partition: d.action for d in dry if d.table == "trades"}
        assert by_part[day10] == "would drop"
        assert by_part[day9] == "kept: unsynced rows"
        done = await run_retention(gath, prod, "g1", timedelta(days=5), dry_run=False, now=now)
        assert any(d.partition == day10 and d.action == "dropped" for d in done)
        with psycopg.connect(gath) as conn:
            left = conn.execute("SELECT count(*) FROM trades").fetchone()
        assert left == (10,)  # only the unsynced day remains
    finally:
        shared_pg.execute('DROP DATABASE "ret_gath" WITH (FORCE)')
        shared_pg.execute('DROP DATABASE "ret_prod" WITH (FORCE)')


@pytest.mark.both_backends
async def test_foreign_cursor_refuses(gatherer_shared_pg: PgCluster) -> None:
    """A cursor recorded for another cluster is no proof: nothing is dropped."""
    shared_pg = gatherer_shared_pg
    gath = shared_pg.create_database("ret_gath2")
    prod = shared_pg.create_database("ret_prod2")
    try:
        migrate(gath, "gatherer")
        migrate(prod, "production")
        with psycopg.connect(prod, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO sync_cursors (gatherer_id, table_name, system_identifier) "
                "SELECT 'g1', t, '1' FROM unnest(ARRAY['trades','orderbook_deltas',"
                "'orderbook_snapshots','tickers']) AS t"
            )
        with pytest.raises(RuntimeError, match="refusing to drop"):
            await run_retention(gath, prod, "g1", timedelta(days=1), dry_run=False)
    finally:
        shared_pg.execute('DROP DATABASE "ret_gath2" WITH (FORCE)')
        shared_pg.execute('DROP DATABASE "ret_prod2" WITH (FORCE)')
