"""TimescaleDB-specific behaviour of the gatherer database (docs/timescaledb.md).

Every test here runs on a server that preloads TimescaleDB (the ``[timescaledb]`` variant of the
gatherer fixtures) and is skipped, with the reason in the terminal summary, where the extension
is not installed. Compressed chunks are made with ``compress_chunk`` explicitly: the policy
(compress_after 7 days) runs every 12 hours, not on a test's schedule.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from deduplicator import source
from deduplicator import sql as dsql
from gatherer.spool import Spool
from kalshi_data.errors import PermanentError
from kalshi_data.migrate import MigrationError, migrate
from kalshi_data.tables import TRADES
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.restore import restore
from kalshi_data.tools.retention import run_retention
from tests.conftest import TIMESCALE_SKIP
from tests.integration import test_gatherer_writer as tw
from tests.integration.gatherer_support import (
    config_data,
    gatherer_process,
    simulator,
    write_config,
)

_SKIP = pytest.mark.skipif(TIMESCALE_SKIP is not None, reason=f"TimescaleDB: {TIMESCALE_SKIP}")
pytestmark = pytest.mark.parametrize(
    "gatherer_backend", [pytest.param("timescaledb", marks=_SKIP)], indirect=True
)

COLS = (
    "trade_id, ticker, exchange_ts, yes_price, no_price, count, taker_outcome_side, "
    "taker_book_side, taker_side, is_block_trade, sid, seq, suspect, received_at"
)
#: Trades ``lo..hi`` of one day, 4 tickers, 10 ms apart; one transaction per call.
INSERT_DAY = (
    f"INSERT INTO trades ({COLS}) SELECT md5(%(tag)s || i)::uuid, 'MKT-' || mod(i, 4), "
    "%(day)s::timestamptz + i * interval '10 ms', 100, 9900, 100, 'yes', 'bid', 'yes', false, 3, "
    "i, false, now() FROM generate_series(%(lo)s::int, %(hi)s::int) AS i"
)


def _fill(dsn: str, days: list[datetime], *, txns: int = 40, rows: int = 250) -> None:
    """``txns`` transactions of ``rows`` trades into each day (so cursor xids vary by batch)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for d, day in enumerate(days):
            for k in range(txns):
                lo = k * rows
                conn.execute(
                    INSERT_DAY, {"tag": f"d{d}-", "day": day, "lo": lo, "hi": lo + rows - 1}
                )


def _compress_older_than(dsn: str, age: timedelta) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(compress_chunk(c, if_not_compressed => true)) "
            "FROM show_chunks('trades', older_than => %s::interval) c",
            (age,),
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def _midnight(now: datetime, days_ago: int) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=days_ago)


def test_migrations_build_hypertables_ordered_by_the_cursor(fresh_db: str) -> None:
    """On TimescaleDB the time-series tables are hypertables compressed in cursor order, the
    writer holds no column rights (0007), and a second run applies nothing."""
    assert "0007_timescale.sql" in migrate(fresh_db, "gatherer")
    assert migrate(fresh_db, "gatherer") == []
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute(
            "SELECT hypertable::text, segmentby, orderby FROM "
            "timescaledb_information.hypertable_columnstore_settings ORDER BY 1"
        ).fetchall()
        grants = conn.execute(
            "SELECT count(*) FROM information_schema.column_privileges "
            "WHERE grantee = 'kd_gatherer_writer' AND privilege_type = 'SELECT'"
        ).fetchone()
    assert [r[0] for r in rows] == ["orderbook_deltas", "orderbook_snapshots", "tickers", "trades"]
    for _, segmentby, orderby in rows:
        assert segmentby == "ticker"
        assert str(orderby).startswith("ingest_xid,ingest_id")
    assert grants == (0,)


def test_chunk_creator_makes_inserts_into_its_chunk_wait_and_holds_the_horizon(
    fresh_db: str,
) -> None:
    """The transaction that creates a chunk holds a lock until it commits: another insert into
    the same chunk waits (here it times out), while an insert into an existing chunk does not.
    Either way no row is read past the open transaction. (This is why a gatherer that opens a
    new day holds every other writer of that day until its commit, and why tests that keep a
    transaction open create the day's chunk first.)"""
    migrate(fresh_db, "gatherer")
    today = _midnight(datetime.now(UTC), 0)
    new_day = today - timedelta(days=3)
    _fill(fresh_db, [today], txns=1, rows=10)  # today's chunk exists, committed
    with psycopg.connect(fresh_db) as creator, psycopg.connect(fresh_db) as other:
        creator.execute(INSERT_DAY, {"tag": "c-", "day": new_day, "lo": 0, "hi": 9})
        other.execute("SET lock_timeout = '1s'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute(INSERT_DAY, {"tag": "o-", "day": new_day, "lo": 0, "hi": 9})
        other.rollback()
        other.execute(INSERT_DAY, {"tag": "t-", "day": today, "lo": 10, "hi": 19})
        other.commit()
        with psycopg.connect(fresh_db, autocommit=True) as reader:
            horizon = reader.execute(dsql.horizon_query()).fetchone()
            below = reader.execute(
                "SELECT count(*) FROM trades WHERE ingest_xid < %s::text::xid8", horizon
            ).fetchone()
        assert below == (10,)  # today's first 10 only: the later commit sits above the horizon
        creator.commit()
        other.execute(INSERT_DAY, {"tag": "o-", "day": new_day, "lo": 0, "hi": 9})
        other.commit()
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone() == (40,)


async def test_compressed_chunks_are_read_whole_and_in_cursor_order(fresh_db: str) -> None:
    """A deduplicator lagging past compress_after: its cursor sits inside a chunk that is then
    compressed. Reading on in batches returns every row exactly once, in cursor order, and each
    batch plan is a Merge Append (cursor indexes, compressed batches merged by their metadata)
    with no Sort of the pending rows."""
    migrate(fresh_db, "gatherer")
    now = datetime.now(UTC)
    _fill(fresh_db, [_midnight(now, 10), _midnight(now, 9), now - timedelta(hours=1)])
    with psycopg.connect(fresh_db) as conn:
        expected = [
            r[0]
            for r in conn.execute("SELECT ingest_id FROM trades ORDER BY ingest_xid, ingest_id")
        ]
    assert len(expected) == 30_000
    conn = await source.connect(fresh_db, timeout_s=10, gatherer="g1")
    try:
        horizon = await source.horizon(conn)
        cursor, got = (0, 0), []
        while True:
            batch = await source.keyed_batch(
                conn, TRADES, cursor, horizon, max_rows=1000, max_bytes=2**30
            )
            if batch is None:
                break
            bounds, keys = batch
            got.extend(keys.ids)
            cursor = bounds.end
            if len(got) == 5000:  # lagging: the cursor is inside the oldest chunk
                assert _compress_older_than(fresh_db, timedelta(days=7)) == 2
                pending = [
                    r[0]
                    for r in await conn.fetch(
                        "EXPLAIN " + dsql.keyed_batch_query(TRADES),
                        str(cursor[0]),
                        cursor[1],
                        str(horizon),
                        1000,
                    )
                ]
                plan = "\n".join(pending)
                assert "Merge Append" in plan, plan
                assert "ColumnarScan" in plan, plan
                # the only sorts: the Merge Append's own key, and compressed *batches* ordered
                # by their first cursor value (one entry per ~1,000 rows)
                for i, line in enumerate(pending):
                    if "Sort Key:" in line:
                        assert "_ts_meta" in line or "Merge Append" in pending[i - 1], plan
        assert got == expected
    finally:
        await conn.close()


async def test_spool_replay_and_on_conflict_into_compressed_chunks(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """Rows whose chunk is compressed are replayed from a spool and re-put live (23505 ->
    staging): only the new rows are added, by the least-privilege writer."""
    admin, dsn = tw._gatherer_db(pg_cluster)
    first = [tw._trade(i) for i in range(300)]
    async with tw._writer(dsn, tmp_path / "a") as w:
        for row in first:
            w.put("trades", row)
        assert await w.wait_idle(30)
    with psycopg.connect(admin, autocommit=True) as conn:
        n = conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('trades') c").fetchone()
    assert n is not None
    assert n[0] >= 1
    spool = Spool(tmp_path / "b")
    spool.append("trades", first[100:200], on_reject=lambda r, why: None)
    spool.append("trades", [tw._trade(i) for i in range(1000, 1050)], on_reject=lambda r, w: None)
    spool.close()
    async with tw._writer(dsn, tmp_path / "b") as w:
        assert await w.wait_idle(60)
        assert w.spool_bytes == 0
        for row in [*first[:50], tw._trade(2000)]:  # live duplicates: the staged path
            w.put("trades", row)
        assert await w.wait_idle(60)
    want = [*first, *(tw._trade(i) for i in range(1000, 1050)), tw._trade(2000)]
    assert await tw._fetch(admin, "trades") == tw._expected("trades", want)


async def test_retention_drops_only_synced_compressed_chunks(
    gatherer_shared_pg: PgCluster,
) -> None:
    """Compressed old chunks: the one wholly at or below the cursor goes, the one with a row
    above it stays, the recent one is not a candidate."""
    gath = gatherer_shared_pg.create_database("tsret_gath")
    prod = gatherer_shared_pg.create_database("tsret_prod")
    now = datetime.now(UTC)
    try:
        migrate(gath, "gatherer")
        migrate(prod, "production")
        _fill(gath, [_midnight(now, 10)], txns=5, rows=100)
        with psycopg.connect(gath, autocommit=True) as conn:
            top = conn.execute(
                "SELECT max(ingest_xid)::text, max(ingest_id) FROM trades"
            ).fetchone()
            sysid = conn.execute("SELECT system_identifier::text FROM pg_control_system()")
            sysid_row = sysid.fetchone()
        _fill(gath, [_midnight(now, 9), now - timedelta(hours=1)], txns=5, rows=100)
        assert _compress_older_than(gath, timedelta(days=7)) == 2
        assert top is not None
        assert sysid_row is not None
        with psycopg.connect(prod, autocommit=True) as conn:
            for t in ("trades", "orderbook_deltas", "orderbook_snapshots", "tickers"):
                xid, iid = (top[0], top[1]) if t == "trades" else ("0", 0)
                conn.execute(
                    "INSERT INTO sync_cursors (gatherer_id, table_name, system_identifier, "
                    "last_xid, last_id) VALUES ('g1', %s, %s, %s::xid8, %s)",
                    (t, sysid_row[0], xid, iid),
                )
        done = await run_retention(gath, prod, "g1", timedelta(days=5), dry_run=False, now=now)
        actions = sorted(d.action for d in done if d.table == "trades")
        assert actions == ["dropped", "kept: unsynced rows"]
        with psycopg.connect(gath) as conn:
            left = conn.execute(
                "SELECT count(*), min(exchange_ts) >= %s FROM trades", (_midnight(now, 9),)
            ).fetchone()
        assert left == (1000, True)
    finally:
        gatherer_shared_pg.execute('DROP DATABASE "tsret_gath" WITH (FORCE)')
        gatherer_shared_pg.execute('DROP DATABASE "tsret_prod" WITH (FORCE)')


async def test_installed_but_not_preloaded_is_refused(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """The same cluster restarted without the preload hides its compressed rows (DESIGN §3a):
    the gatherer, the deduplicator's reader, migrate, restore-gatherer and retention refuse it,
    each naming shared_preload_libraries."""
    admin, _ = tw._gatherer_db(pg_cluster)
    prod = pg_cluster.create_database("prod")
    migrate(prod, "production")
    now = datetime.now(UTC)
    _fill(admin, [_midnight(now, 10)], txns=2, rows=100)
    _compress_older_than(admin, timedelta(days=7))
    pg_cluster.stop()
    pg_cluster.set(shared_preload_libraries="''")
    pg_cluster.start()
    assert not pg_cluster.preloads_timescaledb
    hidden = pg_cluster.execute("SELECT count(*) FROM trades", dbname="gath")
    assert hidden == [(0,)]  # the hazard itself: 200 rows, none visible
    with pytest.raises(MigrationError, match="shared_preload_libraries"):
        migrate(admin, "gatherer")
    with pytest.raises(PermanentError, match="shared_preload_libraries"):
        await source.connect(admin, timeout_s=10, gatherer="g1")
    with pytest.raises(PermanentError, match="shared_preload_libraries"):
        await restore(prod, admin, timedelta(hours=1), now=now)
    with pytest.raises(PermanentError, match="shared_preload_libraries"):
        await run_retention(admin, prod, "g1", timedelta(days=5), dry_run=True, now=now)
    async with simulator(tmp_path, markets=5) as sim:
        cfg = write_config(tmp_path / "g.yaml", config_data(sim, admin, tmp_path))
        with gatherer_process(cfg, tmp_path / "log") as proc:
            code = await asyncio.to_thread(proc.wait, 60)
    assert code == 1
    text = (tmp_path / "log").read_text()
    lines: list[dict[str, Any]] = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    assert any(x["level"] == "ERROR" for x in lines)
    assert "shared_preload_libraries" in text
