"""S3 Parquet export against a real production database and moto's S3 server on loopback."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import psycopg
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from kalshi_data.config import load_config
from kalshi_data.migrate import migrate
from kalshi_data.testing.pgcluster import free_port
from kalshi_data.tools.export import ExportConfig, manifest_key, object_key, run_export

ROWS_PER_DAY = 1500
# The three exported days end two weeks before the run (any day the suite runs on); every
# export below is given its own `now`, relative to them.
DAY0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=14)
DAYS = [(DAY0 + timedelta(days=k)).date() for k in range(3)]
NOW_UNSETTLED = DAY0 + timedelta(days=3, minutes=30)  # the third day ended 30 min ago
NOW_SETTLED = DAY0 + timedelta(days=3, hours=2)


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3-compatible server on 127.0.0.1 (moto, server mode), with dummy credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _fill(dsn: str) -> None:
    migrate(dsn, "production")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, "
            "is_block_trade, suspect, received_at, gatherer_id) "
            "SELECT md5('t' || i)::uuid, 'MKT-' || mod(i, 7), "
            "%s::timestamptz + (i / %s) * interval '1 day' "
            "+ mod(i, %s) * interval '1 second', 4200, 5800, 100 + i, false, false, now(), 'g1' "
            "FROM generate_series(0, %s::int) AS i",
            (DAY0, ROWS_PER_DAY, ROWS_PER_DAY, 3 * ROWS_PER_DAY - 1),
        )


def _config(dsn: str, endpoint: str) -> ExportConfig:
    return load_config(
        ExportConfig,
        None,
        data={
            "production": {"dsn": dsn},
            "s3": {"bucket": "archive", "prefix": "kd", "endpoint_url": endpoint},
            "tables": ["trades", "orderbook_deltas"],
            "settle_s": 3600,
        },
    )


def test_export_writes_settled_days_with_manifests(fresh_db: str, s3_endpoint: str) -> None:
    """Each settled day becomes one Parquet file whose rows, hash and manifest match."""
    _fill(fresh_db)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="archive")
    cfg = _config(fresh_db, s3_endpoint)
    result = run_export(cfg, now=NOW_UNSETTLED)  # the third day is not settled yet
    assert result.rows == {"trades": 2 * ROWS_PER_DAY}
    assert result.files == [object_key("kd", "trades", d) for d in DAYS[:2]]
    for key in result.files:
        body = s3.get_object(Bucket="archive", Key=key)["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        manifest = json.loads(s3.get_object(Bucket="archive", Key=manifest_key(key))["Body"].read())
        assert table.num_rows == ROWS_PER_DAY == manifest["row_count"]
        assert hashlib.sha256(body).hexdigest() == manifest["sha256"]
        assert table.schema.field("yes_price").type.bit_width == 32  # exact integers
        assert len(set(table.column("trade_id").to_pylist())) == ROWS_PER_DAY
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT s3_key, row_count FROM export_manifests ORDER BY 1").fetchall()
        mark = conn.execute("SELECT exported_until FROM export_watermarks").fetchone()
    assert [r[1] for r in rows] == [ROWS_PER_DAY, ROWS_PER_DAY]
    assert mark is not None
    assert mark[0] == DAY0 + timedelta(days=2)


def test_rerun_is_idempotent_and_resumes(fresh_db: str, s3_endpoint: str) -> None:
    """A second run exports nothing new; later, the next settled day only."""
    _fill(fresh_db)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="archive")
    cfg = _config(fresh_db, s3_endpoint)
    first = run_export(cfg, now=NOW_UNSETTLED)
    again = run_export(cfg, now=NOW_UNSETTLED)
    assert len(first.files) == 2
    assert again.files == []
    later = run_export(cfg, now=NOW_SETTLED)
    assert later.files == [object_key("kd", "trades", DAYS[2])]
    listed = s3.list_objects_v2(Bucket="archive", Prefix="kd/trades/")["Contents"]
    assert len(listed) == 6  # three parquet files + three manifests, no duplicates
