"""Deduplicator catch-up: three gatherer DBs holding the same N trades → production.

Measured in one run, on the same clusters:
- raw COPY of the N unique rows into production (the physical limit);
- a row-by-row ``INSERT … ON CONFLICT DO NOTHING`` loop, 5,000 rows per transaction, over the
  same input (three copies), as a competing design documents — on a sample, since it is slow;
- the deduplicator process itself, from empty cursors, until production holds N rows; its peak
  RSS (VmHWM) is read from /proc.
Prints unique rows/s for each and the ratios. ``KD_BENCH_ROWS`` sets N (default 1,000,000).

``KD_BENCH_DEDUP_TREES`` (source trees separated by ``os.pathsep``; default: this checkout) runs
the deduplicator process once per tree, in the same run against the same clusters and baselines
(production and its cursors emptied in between): an A/B of two versions of the code, e.g. a
``git archive`` of an older commit beside this one. ``KD_BENCH_BACKENDS=plain`` skips the
TimescaleDB gatherers; ``KD_BENCH_SAMPLE`` sets the row-by-row sample (default min(N, 100,000)).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import psycopg
import yaml

from kalshi_data.copypipe import CopyPipe
from kalshi_data.migrate import migrate
from kalshi_data.tables import TRADES
from kalshi_data.testing.pgcluster import PgCluster, free_port, timescaledb_missing
from kalshi_data.tools.users import create_user

N = int(os.environ.get("KD_BENCH_ROWS", "1000000"))
SAMPLE = int(os.environ.get("KD_BENCH_SAMPLE", min(N, 100_000)))
SETTINGS = {"shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
FILL = """
INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, taker_outcome_side,
    taker_book_side, taker_side, is_block_trade, sid, seq, suspect, received_at)
SELECT md5('bench' || i)::uuid, 'MKT-' || mod(i, 500),
    '2026-11-22 00:00+00'::timestamptz + i * interval '1 ms', 4200, 5800, 100,
    'yes', 'bid', 'yes', false, 1, i, false, now()
FROM generate_series(1, {n}) AS i
"""


def _cluster(base: Path, name: str, *, timescaledb: bool = False) -> PgCluster:
    c = PgCluster(base / name)
    c.init(SETTINGS, timescaledb=timescaledb)
    c.start()
    return c


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM trades").fetchone()
    assert row is not None
    return int(row[0])


async def _raw_copy(gatherer_dsn: str, prod_dsn: str) -> float:
    """Seconds to stream N rows from one gatherer into production with plain binary COPY."""
    g = await asyncpg.connect(gatherer_dsn)
    p = await asyncpg.connect(prod_dsn)
    cols = ", ".join(TRADES.column_names)
    pipe = CopyPipe(g, f"SELECT {cols}, 'g1'::text FROM trades")
    started = time.perf_counter()
    try:
        await p.copy_to_table(
            "trades",
            source=pipe.chunks(),
            format="binary",
            columns=[*TRADES.column_names, "gatherer_id"],
        )
    finally:
        await pipe.close()
    took = time.perf_counter() - started
    await g.close()
    await p.close()
    return took


async def _row_by_row(gatherer_dsns: list[str], prod_dsn: str) -> tuple[float, int]:
    """Seconds for the row-by-row loop over the first SAMPLE rows of each gatherer."""
    cols = ", ".join(TRADES.column_names)
    placeholders = ", ".join(f"${i + 1}" for i in range(len(TRADES.columns)))
    insert = (
        f"INSERT INTO trades ({cols}, gatherer_id) VALUES ({placeholders}, 'g') "
        "ON CONFLICT ON CONSTRAINT trades_identity DO NOTHING"
    )
    p = await asyncpg.connect(prod_dsn)
    samples = []
    for dsn in gatherer_dsns:
        g = await asyncpg.connect(dsn)
        samples.append(
            await g.fetch(
                f"SELECT {cols} FROM trades ORDER BY ingest_xid, ingest_id LIMIT {SAMPLE}"
            )
        )
        await g.close()
    rows_done = 0
    started = time.perf_counter()  # the insert loop only: reading the sample is not timed
    for rows in samples:
        for i in range(0, len(rows), 5000):
            async with p.transaction():
                for r in rows[i : i + 5000]:
                    await p.execute(insert, *r)
            rows_done += len(rows[i : i + 5000])
    took = time.perf_counter() - started
    await p.close()
    return took, rows_done


def _rows_read(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(rows_read), 0) FROM sync_cursors WHERE table_name = 'trades'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    """Run the measurements on plain-PostgreSQL gatherers, then (when the extension is
    installed) on TimescaleDB gatherers, in the same run; production is plain PostgreSQL."""
    backends = [False]
    missing = timescaledb_missing()
    if os.environ.get("KD_BENCH_BACKENDS") == "plain":
        print("TimescaleDB gatherers not measured: KD_BENCH_BACKENDS=plain")
    elif missing is None:
        backends.append(True)
    else:
        print(f"TimescaleDB gatherers not measured: {missing}")
    for timescaledb in backends:
        print(f"--- gatherer backend: {'TimescaleDB' if timescaledb else 'plain PostgreSQL'}")
        _measure(timescaledb=timescaledb)


def _measure(*, timescaledb: bool) -> None:
    base = Path(tempfile.mkdtemp(prefix="kd-bench-dedup-"))
    clusters: list[PgCluster] = []
    try:
        prod = _cluster(base, "prod")
        clusters.append(prod)
        prod.create_database("prod")
        migrate(prod.dsn("prod"), "production")
        create_user(prod.dsn("prod"), "dedup_writer", "dedup", "bench-pw")
        gdsns, rdsns = [], []
        for i in range(3):
            g = _cluster(base, f"g{i + 1}", timescaledb=timescaledb)
            clusters.append(g)
            g.create_database("g")
            migrate(g.dsn("g"), "gatherer")
            create_user(g.dsn("g"), "dedup_reader", "reader", "bench-pw")
            with psycopg.connect(g.dsn("g"), autocommit=True) as conn:
                conn.execute(FILL.format(n=N).encode())
                conn.execute("VACUUM ANALYZE trades")
            gdsns.append(g.dsn("g"))
            rdsns.append(g.dsn("g", "reader", "bench-pw"))
        print(f"N = {N:,} trades in each of 3 gatherer databases")

        raw_s = asyncio.run(_raw_copy(gdsns[0], prod.dsn("prod")))
        raw_rate = N / raw_s
        print(f"raw binary COPY of N unique rows: {raw_s:.2f} s = {raw_rate:,.0f} rows/s")
        prod.execute("TRUNCATE trades", "prod")

        rbr_s, rbr_rows = asyncio.run(_row_by_row(gdsns, prod.dsn("prod")))
        rbr_unique = _count(prod.dsn("prod"))
        rbr_rate = rbr_unique / rbr_s
        print(
            f"row-by-row INSERT ON CONFLICT, 5,000/txn: {rbr_rows:,} rows read, "
            f"{rbr_unique:,} unique in {rbr_s:.2f} s = {rbr_rate:,.0f} unique rows/s (sample)"
        )
        prod.execute("TRUNCATE trades", "prod")

        here = str(Path(__file__).resolve().parent.parent)
        trees = os.environ.get("KD_BENCH_DEDUP_TREES", here).split(os.pathsep)
        for tree in trees:
            if len(trees) > 1:
                print(f"deduplicator from {tree}:")
            ours_rate, peak = _run_dedup(base, prod, rdsns, tree)
            print(f"ratio vs raw COPY:   {ours_rate / raw_rate:.2f}x  (target >= 0.6x)")
            print(f"ratio vs row-by-row: {ours_rate / rbr_rate:.1f}x  (target >= 40x)")
            print(f"peak RSS:            {peak:.0f} MB  (target <= 300 MB)")
            prod.execute("TRUNCATE trades, sync_cursors", "prod")
    finally:
        for c in clusters:
            c.destroy()


def _run_dedup(base: Path, prod: PgCluster, rdsns: list[str], tree: str) -> tuple[float, float]:
    """Run ``python -m deduplicator`` from ``tree`` until every gatherer's N trades are read:
    unique rows/s and peak RSS (MB)."""
    port = free_port()
    cfg = {
        "instance_id": "bench",
        "production": {"dsn": prod.dsn("prod", "dedup", "bench-pw")},
        "gatherers": [{"id": f"g{i + 1}", "dsn": d} for i, d in enumerate(rdsns)],
        "http": {"listen": f"127.0.0.1:{port}"},
        "batch_rows": 50_000,
        "poll_interval_s": 0.2,
        # KD_BENCH_SEEN=0 turns the seen-identity filter off (to measure what it brings).
        "seen_cache_rows": int(os.environ.get("KD_BENCH_SEEN", "1000000")),
    }
    cfg_path = base / "dedup.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    with (base / "dedup.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deduplicator", "--config", str(cfg_path)],
            stdout=log,
            # cwd too: ``python -m`` puts the working directory ahead of PYTHONPATH, so without
            # it every tree would run the checkout the bench was started from.
            cwd=tree,
            env={**os.environ, "PYTHONPATH": tree},
            stderr=subprocess.STDOUT,
        )
    watch = psycopg.connect(prod.dsn("prod"), autocommit=True)
    started = time.perf_counter()
    peak = 0.0
    try:
        # Done when every gatherer's trades cursor has read all N rows (3 N in all): not
        # merely when production first holds N rows, since the other gatherers' copies must
        # be read too. (Polling sync_cursors costs nothing; count(*) would steal a core.)
        while _rows_read(watch) < 3 * N:
            peak = max(peak, _vm_hwm_mb(proc.pid))
            if proc.poll() is not None:
                raise RuntimeError(f"deduplicator exited {proc.returncode}: see {base}")
            time.sleep(0.2)
        ours_s = time.perf_counter() - started
        peak = max(peak, _vm_hwm_mb(proc.pid))
    finally:
        watch.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    written = _count(prod.dsn("prod"))
    if written != N:
        raise RuntimeError(f"production holds {written:,} trades, expected {N:,}")
    ours_rate = N / ours_s
    print(
        f"deduplicator catch-up (3 x N rows read, N written): {ours_s:.2f} s = "
        f"{ours_rate:,.0f} unique rows/s, peak RSS {peak:.0f} MB"
    )
    return ours_rate, peak


if __name__ == "__main__":
    main()
