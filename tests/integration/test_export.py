"""S3 Parquet export against a real production database and moto's S3 server on loopback."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import psycopg
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from kalshi_data.config import load_config
from kalshi_data.export import ExportConfig, manifest_key, object_key, run_export
from kalshi_data.migrate import migrate
from kalshi_data.pgcluster import free_port

ROWS_PER_DAY = 1500


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
            "'2026-11-18 00:00+00'::timestamptz + (i / %s) * interval '1 day' "
            "+ mod(i, %s) * interval '1 second', 4200, 5800, 100 + i, false, false, now(), 'g1' "
            "FROM generate_series(0, %s::int) AS i",
            (ROWS_PER_DAY, ROWS_PER_DAY, 3 * ROWS_PER_DAY - 1),
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
    now = datetime(2026, 11, 21, 0, 30, tzinfo=UTC)  # 20 Nov ended 30 min ago: not settled
    result = run_export(cfg, now=now)
    assert result.rows == {"trades": 2 * ROWS_PER_DAY}
    assert result.files == [
        object_key("kd", "trades", d)
        for d in (datetime(2026, 11, 18).date(), datetime(2026, 11, 19).date())
    ]
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
    assert mark[0] == datetime(2026, 11, 20, tzinfo=UTC)


def test_rerun_is_idempotent_and_resumes(fresh_db: str, s3_endpoint: str) -> None:
    """A second run exports nothing new; later, the next settled day only."""
    _fill(fresh_db)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="archive")
    cfg = _config(fresh_db, s3_endpoint)
    first = run_export(cfg, now=datetime(2026, 11, 21, 0, 30, tzinfo=UTC))
    again = run_export(cfg, now=datetime(2026, 11, 21, 0, 30, tzinfo=UTC))
    assert len(first.files) == 2
    assert again.files == []
    later = run_export(cfg, now=datetime(2026, 11, 21, 2, 0, tzinfo=UTC))
    assert later.files == [object_key("kd", "trades", datetime(2026, 11, 20).date())]
    listed = s3.list_objects_v2(Bucket="archive", Prefix="kd/trades/")["Contents"]
    assert len(listed) == 6  # three parquet files + three manifests, no duplicates
