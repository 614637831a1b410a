"""Production after a month: 30 synthetic days of trades (dated relative to now) in production.

Measured in one run, on the same cluster and rows:
- partition upkeep: the first run making 30 days back (+7 ahead) for every table, a steady-state
  daily run (one new day), and the repair of one day of rows found in the default partition;
- export throughput (rows/s, Parquet written and uploaded to moto's S3 server on loopback)
  against a raw binary ``COPY (SELECT ...) TO STDOUT`` of the same rows;
- Parquet bytes per row against PostgreSQL bytes per row (heap + indexes + TOAST);
- the plan of a one-day query (partitions scanned);
- the deduplicator's catch-up rate (one gatherer holding M new trades) with the 30 days present,
  against an empty production.
``KD_BENCH_DAY_ROWS`` sets trades per day (default 50,000), ``KD_BENCH_CATCHUP_ROWS`` M (200,000).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import boto3
import psycopg
import yaml

from deduplicator.upkeep import run_upkeep
from kalshi_data.config import load_config
from kalshi_data.migrate import migrate
from kalshi_data.tables import TRADES
from kalshi_data.testing.pgcluster import PgCluster, free_port
from kalshi_data.tools.export import ExportConfig, run_export
from kalshi_data.tools.users import create_user

DAY_ROWS = int(os.environ.get("KD_BENCH_DAY_ROWS", "50000"))
CATCHUP_ROWS = int(os.environ.get("KD_BENCH_CATCHUP_ROWS", "200000"))
DAYS = 30
SETTINGS = {"shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
FILL = """
INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, taker_outcome_side,
    taker_book_side, taker_side, is_block_trade, sid, seq, suspect, received_at, gatherer_id)
SELECT md5(%(tag)s || i)::uuid, 'KXS' || mod(i, 40) || '-M' || mod(i, 500),
    %(day)s::timestamptz + (mod(i, 86400000) * interval '1 ms'),
    100 * mod(i, 99) + 1, 10000 - (100 * mod(i, 99) + 1), 100 * (1 + mod(i, 50)),
    'yes', 'bid', 'yes', false, 1, i, false, %(day)s::timestamptz, 'g1'
FROM generate_series(1, %(n)s::int) AS i
"""
GATHERER_FILL = """
INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, taker_outcome_side,
    taker_book_side, taker_side, is_block_trade, sid, seq, suspect, received_at)
SELECT md5(%(tag)s || i)::uuid, 'KXS' || mod(i, 40) || '-M' || mod(i, 500),
    %(ts)s::timestamptz + i * interval '100 us', 4200, 5800, 100, 'yes', 'bid', 'yes', false,
    1, i, false, now()
FROM generate_series(1, %(n)s::int) AS i
"""


def _cluster(base: Path, name: str) -> PgCluster:
    c = PgCluster(base / name)
    c.init(SETTINGS)
    c.start()
    return c


def _upkeep(dsn: str, now: datetime, days_back: int) -> tuple[float, int, int]:
    async def go() -> tuple[float, int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            r = await run_upkeep(conn, now=now, days_back=days_back)
        finally:
            await conn.close()
        return r.seconds, len(r.created), sum(r.moved_rows.values())

    return asyncio.run(go())


def _catch_up(base: Path, prod: PgCluster, label: str, now: datetime) -> float:
    """Unique rows/s of a deduplicator merging one gatherer's CATCHUP_ROWS new trades."""
    g = _cluster(base, f"g-{label}")
    try:
        g.create_database("g")
        migrate(g.dsn("g"), "gatherer")
        create_user(g.dsn("g"), "dedup_reader", "reader", "bench-pw")
        with psycopg.connect(g.dsn("g"), autocommit=True) as conn:
            conn.execute(
                GATHERER_FILL,
                {"tag": f"catchup-{label}", "ts": now - timedelta(hours=1), "n": CATCHUP_ROWS},
            )
            conn.execute("VACUUM ANALYZE trades")
        with psycopg.connect(prod.dsn("prod"), autocommit=True) as conn:
            conn.execute("DELETE FROM sync_cursors")
        port = free_port()
        cfg = {
            "instance_id": f"bench-{label}",
            "production": {"dsn": prod.dsn("prod", "dedup", "bench-pw")},
            "gatherers": [{"id": f"g-{label}", "dsn": g.dsn("g", "reader", "bench-pw")}],
            "http": {"listen": f"127.0.0.1:{port}"},
            "batch_rows": 50_000,
            "poll_interval_s": 0.2,
        }
        cfg_path = base / f"dedup-{label}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        with (base / f"dedup-{label}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "deduplicator", "--config", str(cfg_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        watch = psycopg.connect(prod.dsn("prod"), autocommit=True)
        started = time.perf_counter()
        try:
            while True:
                row = watch.execute(
                    "SELECT coalesce(sum(rows_read), 0) FROM sync_cursors WHERE table_name = "
                    "'trades' AND gatherer_id = %s",
                    (f"g-{label}",),
                ).fetchone()
                if row is not None and int(row[0]) >= CATCHUP_ROWS:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"deduplicator exited {proc.returncode}: see {base}")
                time.sleep(0.1)
            took = time.perf_counter() - started
        finally:
            watch.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        return CATCHUP_ROWS / took
    finally:
        g.destroy()


def main() -> None:
    """Fill, measure, print."""
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 (a dev dependency)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    base = Path(tempfile.mkdtemp(prefix="kd-bench-prod-"))
    now = datetime.now(UTC)
    today = now.date()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    s3_port = free_port()
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3_server.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    prod = _cluster(base, "prod")
    try:
        prod.create_database("prod")
        dsn = prod.dsn("prod")
        migrate(dsn, "production")
        create_user(dsn, "dedup_writer", "dedup", "bench-pw")
        print(f"{DAYS} days x {DAY_ROWS:,} trades = {DAYS * DAY_ROWS:,} rows in production")

        # Catch-up against an empty production first (same cluster, before the 30 days exist).
        empty_rate = _catch_up(base, prod, "empty", now)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE trades")

        secs, created, _ = _upkeep(dsn, now, DAYS)
        print(
            f"upkeep, first run ({DAYS} days back + 7 ahead, 4 tables): {created} partitions "
            f"in {secs:.2f} s"
        )
        days = [today - timedelta(days=n) for n in range(DAYS, 0, -1)]
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for day in days:
                conn.execute(FILL, {"tag": f"d{day}", "day": f"{day} 00:00+00", "n": DAY_ROWS})
            conn.execute("VACUUM ANALYZE trades")
        print(f"fill: {time.perf_counter() - started:.1f} s")
        secs, created, _ = _upkeep(dsn, now + timedelta(days=1), DAYS)
        print(
            f"upkeep, daily steady state (30 days present): {created} new partitions "
            f"in {secs * 1000:.0f} ms"
        )

        # One day of rows in the default (a day no partition covered), then its repair.
        stray = today - timedelta(days=DAYS + 10)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(FILL, {"tag": "stray", "day": f"{stray} 00:00+00", "n": DAY_ROWS})
        secs, _, moved = _upkeep(dsn, now + timedelta(days=1), DAYS)
        print(
            f"upkeep, repair of one day in the default: {moved:,} rows moved in {secs:.2f} s "
            f"= {moved / secs:,.0f} rows/s"
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE trades_p{stray:%Y%m%d}")

            # PostgreSQL bytes per row over the 30 days' partitions.
            size = conn.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'trades'::regclass"
            ).fetchone()
            rows = DAYS * DAY_ROWS
            pg_bpr = int(size[0]) / rows if size else 0.0

            # Raw COPY TO of the same rows, day by day (what the export reads).
            cols = ", ".join(f"{c}::text" if c == "trade_id" else c for c in TRADES.column_names)
            started = time.perf_counter()
            for day in days:
                lo = f"{day} 00:00+00"
                hi = f"{day + timedelta(days=1)} 00:00+00"
                with conn.cursor().copy(
                    f"COPY (SELECT {cols}, gatherer_id FROM trades WHERE exchange_ts >= '{lo}' "
                    f"AND exchange_ts < '{hi}' ORDER BY trade_id, exchange_ts) TO STDOUT "
                    "(FORMAT binary)"
                ) as copy:
                    for _ in copy:
                        pass
            copy_s = time.perf_counter() - started

            plan = conn.execute(
                "EXPLAIN SELECT count(*), sum(count) FROM trades WHERE exchange_ts >= %s "
                "AND exchange_ts < %s",
                (f"{days[5]} 00:00+00", f"{days[6]} 00:00+00"),
            ).fetchall()

        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        cfg = load_config(
            ExportConfig,
            None,
            data={
                "production": {"dsn": dsn},
                "s3": {"bucket": "bench", "prefix": "kd", "endpoint_url": endpoint},
                "tables": ["trades"],
                "max_days_per_run": DAYS + 5,
                "settle_s": 3600,
            },
        )
        started = time.perf_counter()
        result = run_export(cfg, now=now)
        export_s = time.perf_counter() - started
        exported = result.rows.get("trades", 0)
        objects = s3.list_objects_v2(Bucket="bench", Prefix="kd/trades/")["Contents"]
        pq_bytes = sum(o["Size"] for o in objects if o["Key"].endswith(".parquet"))

        print(
            f"export: {exported:,} rows in {export_s:.2f} s = {exported / export_s:,.0f} rows/s "
            "(query, Parquet zstd, sha256, upload to moto S3)"
        )
        print(
            f"raw COPY TO (binary) of the same rows: {copy_s:.2f} s = {rows / copy_s:,.0f} "
            f"rows/s; export / raw = {copy_s / export_s:.2f}x"
        )
        print(
            f"bytes per row: PostgreSQL {pg_bpr:.0f} (heap + 3 indexes), Parquet "
            f"{pq_bytes / exported:.1f}; ratio {pg_bpr / (pq_bytes / exported):.1f}x"
        )
        print("one-day query plan:")
        for (line,) in plan:
            print(f"    {line}")

        present_rate = _catch_up(base, prod, "full", now)
        print(
            f"dedup catch-up, 1 gatherer x {CATCHUP_ROWS:,} new trades: empty production "
            f"{empty_rate:,.0f} rows/s, with 30 days present {present_rate:,.0f} rows/s "
            f"({present_rate / empty_rate:.2f}x)"
        )
    finally:
        prod.destroy()
        s3_server.stop()


if __name__ == "__main__":
    main()
