"""The archive's life cycle on a real production database and moto's S3 server on loopback:
export -> verify -> drop (production.keep_days) -> import gives production back row for row;
the archive read in place by DuckDB gives production's counts and sums; the Parquet schema."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import boto3
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deduplicator.upkeep import run_upkeep
from kalshi_data.config import load_config
from kalshi_data.errors import ConfigError
from kalshi_data.migrate import migrate
from kalshi_data.tables import TRADES
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.export import ROW_GROUP_ROWS, ExportConfig, object_key, run_export
from kalshi_data.tools.importer import RestoreError, run_import
from tests.integration.test_export import s3_endpoint  # noqa: F401 (fixture)

PER_DAY = 2000
DAYS_AGO = (12, 11, 10)

FILL = """
INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, taker_outcome_side,
    taker_book_side, taker_side, is_block_trade, sid, seq, suspect, received_at, gatherer_id)
SELECT md5('a' || i)::uuid, 'KXS' || mod(i, 3) || '-M' || mod(i, 5),
    %(day)s::timestamptz + mod(i, 86000) * interval '1 s' + mod(i, 997) * interval '1 us',
    100 * mod(i, 99) + 1, 10000 - (100 * mod(i, 99) + 1), 1 + mod(i, 1000) * 100,
    CASE WHEN mod(i, 3) = 0 THEN NULL ELSE 'yes' END, 'bid', 'yes', mod(i, 50) = 0,
    7, i, mod(i, 13) = 0, now(), 'g' || (1 + mod(i, 3))
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
"""
COLS = ", ".join([*TRADES.column_names, "gatherer_id"])
ALL = f"SELECT {COLS} FROM trades ORDER BY trade_id, exchange_ts"


def _days(now: datetime) -> list[date]:
    return [now.date() - timedelta(days=n) for n in DAYS_AGO]


def _fill(dsn: str, now: datetime) -> None:
    migrate(dsn, "production")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n, day in enumerate(_days(now)):
            lo = n * PER_DAY
            conn.execute(FILL, {"day": f"{day} 00:00+00", "lo": lo, "hi": lo + PER_DAY - 1})

    async def upkeep() -> None:  # the days are older than the migration's window: repair them
        conn = await asyncpg.connect(dsn)
        try:
            await run_upkeep(conn, now=now)
        finally:
            await conn.close()

    asyncio.run(upkeep())


def _config(dsn: str, endpoint: str, keep_days: int | None, bucket: str) -> ExportConfig:
    return load_config(
        ExportConfig,
        None,
        data={
            "production": {"dsn": dsn, "keep_days": keep_days},
            "s3": {"bucket": bucket, "prefix": "kd", "endpoint_url": endpoint},
            "tables": ["trades"],
            "settle_s": 3600,
        },
    )


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(ALL).fetchall()


def test_export_drop_import_round_trip(
    fresh_db: str,
    shared_pg: PgCluster,
    s3_endpoint: str,  # noqa: F811
) -> None:
    """Days older than keep_days leave production only once verified in S3; importing them
    (into production, then into an empty database) gives production back row for row."""
    bucket = "archive-round-trip"  # moto keeps buckets across servers in one process
    now = datetime.now(UTC)
    _fill(fresh_db, now)
    before = _rows(fresh_db)
    assert len(before) == PER_DAY * len(DAYS_AGO)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    days = _days(now)

    # Exported without keep_days: nothing dropped. Then a tampered object blocks its day's drop.
    first = run_export(_config(fresh_db, s3_endpoint, None, bucket), now=now)
    assert first.dropped == []
    assert first.rows == {"trades": len(before)}
    # The database itself refuses to drop a day whose export is not verified.
    with psycopg.connect(fresh_db, autocommit=True) as conn, pytest.raises(psycopg.Error):
        conn.execute(
            "SELECT kd_drop_day('trades', %s, %s)", (days[0], object_key("kd", "trades", days[0]))
        )
    bad = object_key("kd", "trades", days[1])
    good_body = s3.get_object(Bucket=bucket, Key=bad)["Body"].read()
    s3.put_object(Bucket=bucket, Key=bad, Body=good_body[:-10] + b"0123456789")
    cfg = _config(fresh_db, s3_endpoint, 5, bucket)
    second = run_export(cfg, now=now)
    assert second.files == []
    assert sorted(second.dropped) == [f"trades_p{d:%Y%m%d}" for d in (days[0], days[2])]
    with psycopg.connect(fresh_db) as conn:
        left = conn.execute("SELECT count(*) FROM trades").fetchone()
        verified = conn.execute(
            "SELECT count(*) FROM export_manifests WHERE verified_at IS NOT NULL"
        ).fetchone()
    assert left == (PER_DAY,)  # only the day whose object does not verify
    assert verified == (2,)
    # The object restored: the rerun drops that day too, and a further rerun does nothing.
    s3.put_object(Bucket=bucket, Key=bad, Body=good_body)
    assert run_export(cfg, now=now).dropped == [f"trades_p{days[1]:%Y%m%d}"]
    assert run_export(cfg, now=now).dropped == []
    assert _rows(fresh_db) == []

    # Import back into production: row for row; a second import inserts nothing.
    restored = run_import(cfg, "trades", days[0], days[-1])
    assert restored.inserted == dict.fromkeys(days, PER_DAY)
    assert _rows(fresh_db) == before
    again = run_import(cfg, "trades", days[0], days[-1])
    assert again.inserted == dict.fromkeys(days, 0)
    assert _rows(fresh_db) == before

    # Into an empty database (schema applied by the importer).
    empty = shared_pg.create_database(f"{fresh_db.rsplit('/', 1)[1]}_empty")
    try:
        run_import(cfg, "trades", days[0], days[-1], dsn=empty, migrate_target=True)
        assert _rows(empty) == before
        # A day the archive does not have (not settled yet) is an error, not a silent success.
        with pytest.raises(RestoreError, match="no manifest"):
            run_import(cfg, "trades", now.date(), now.date(), dsn=empty)
    finally:
        shared_pg.execute(f'DROP DATABASE IF EXISTS "{empty.rsplit("/", 1)[1]}" WITH (FORCE)')


def test_keep_days_must_be_positive() -> None:
    """A bad keep_days fails at load, naming the key."""
    with pytest.raises(ConfigError, match="production.keep_days"):
        load_config(
            ExportConfig,
            None,
            data={"production": {"dsn": "x", "keep_days": 0}, "s3": {"bucket": "b"}},
        )


def test_duckdb_reads_the_archive_in_place(fresh_db: str, s3_endpoint: str) -> None:  # noqa: F811
    """DuckDB over the Hive-partitioned Parquet in S3 gets production's counts and sums; the
    Parquet schema is exact (integers, UTC microseconds, tables.py's column order)."""
    import duckdb
    import pyarrow.dataset as ds
    from pyarrow import fs

    now = datetime.now(UTC)
    _fill(fresh_db, now)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="archive-lake")
    run_export(_config(fresh_db, s3_endpoint, None, "archive-lake"), now=now)

    host = s3_endpoint.removeprefix("http://")
    s3fs = fs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        endpoint_override=host,
        scheme="http",
        region="us-east-1",
    )
    dataset = ds.dataset(
        "archive-lake/kd/trades",
        filesystem=s3fs,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
    )
    db = duckdb.connect()
    db.register("trades", dataset)
    lake = db.sql(
        "SELECT date, count(*), sum(count), sum(yes_price::bigint * count), "
        "count(*) FILTER (WHERE suspect), min(exchange_ts), max(exchange_ts) "
        "FROM trades GROUP BY date ORDER BY date"
    ).fetchall()
    series = db.sql(
        "SELECT date, split_part(ticker, '-', 1) AS series, sum(count) FROM trades "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    with psycopg.connect(fresh_db) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        prod = conn.execute(
            "SELECT to_char(exchange_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*), sum(count), "
            "sum(yes_price::bigint * count), count(*) FILTER (WHERE suspect), "
            "min(exchange_ts), max(exchange_ts) FROM trades GROUP BY 1 ORDER BY 1"
        ).fetchall()
        prod_series = conn.execute(
            "SELECT to_char(exchange_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD'), "
            "split_part(ticker, '-', 1), sum(count) FROM trades GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    assert [r[:5] for r in lake] == [r[:5] for r in prod]
    assert [(r[5], r[6]) for r in lake] == [(r[5], r[6]) for r in prod]  # microsecond-exact
    assert series == prod_series

    # The schema: decimal-exact (integers in fixed units), UTC timestamps, stable order.
    body = s3.get_object(Bucket="archive-lake", Key=object_key("kd", "trades", _days(now)[0]))[
        "Body"
    ]
    with pq.ParquetFile(pa.BufferReader(body.read())) as f:
        schema = f.schema_arrow
        assert f.metadata.row_group(0).num_rows == min(PER_DAY, ROW_GROUP_ROWS)
    assert schema.names == [*TRADES.column_names, "gatherer_id"]
    assert schema.field("yes_price").type == pa.int32()
    assert schema.field("count").type == pa.int64()
    assert schema.field("exchange_ts").type == pa.timestamp("us", tz="UTC")
    assert not any(pa.types.is_floating(f.type) for f in schema)
