"""Writer throughput: rows/s through :class:`gatherer.writer.Writer` vs raw asyncpg binary COPY.

Same cluster, same rows, same run: the raw path COPYs 5,000-row batches, one transaction each,
with the same timestamptz codec; the Writer path goes through ``put`` -> queues -> COPY. Also
measured: the spool replay path (staging table + ``INSERT ... ON CONFLICT DO NOTHING``) and the
spool append rate (what the writer sustains while the database is down).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from gatherer.metrics import GathererMetrics
from gatherer.pgcodec import register_codecs
from gatherer.spool import Spool
from gatherer.writer import Writer
from kalshi_data.migrate import migrate
from kalshi_data.tables import TRADES
from kalshi_data.testing.pgcluster import temporary_cluster

ROWS = 300_000
BATCH = 5000
T0 = 1_700_000_000_000_000


def _rows(n: int) -> list[tuple[Any, ...]]:
    return [
        (
            uuid.uuid4(),
            f"KXMKT-{i % 500}",
            T0 + i,
            4200,
            5800,
            100 + i % 1000,
            "yes",
            "yes",
            "yes",
            False,
            1,
            i,
            False,
            T0 + i + 7,
        )
        for i in range(n)
    ]


async def _raw_copy(dsn: str, rows: list[tuple[Any, ...]]) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await register_codecs(conn)
        started = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "trades", records=rows[i : i + BATCH], columns=TRADES.column_names
                )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _through_writer(dsn: str, spool: Path, rows: list[tuple[Any, ...]]) -> float:
    w = Writer(dsn, spool, metrics=GathererMetrics("bench"), batch_rows=BATCH)
    await w.start()
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            for row in rows[i : i + BATCH]:
                w.put("trades", row)
            # a producer yields to the loop between frames; keep the queue under its bound
            await asyncio.sleep(0)
            while w.queue_depth("trades") > 50_000:  # noqa: ASYNC110 (bench pacing)
                await asyncio.sleep(0.001)
        if not await w.wait_idle(600):
            raise RuntimeError("writer did not drain")
        return time.perf_counter() - started
    finally:
        await w.stop()


async def _replay(dsn: str, spool_dir: Path, rows: list[tuple[Any, ...]]) -> tuple[float, float]:
    spool = Spool(spool_dir)
    started = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        spool.append("trades", rows[i : i + BATCH], on_reject=lambda r, why: None)
    spool.close()
    append_s = time.perf_counter() - started
    w = Writer(dsn, spool_dir, metrics=GathererMetrics("bench"), batch_rows=BATCH)
    started = time.perf_counter()
    await w.start()
    try:
        if not await w.wait_idle(600):
            raise RuntimeError("spool replay did not finish")
        return append_s, time.perf_counter() - started
    finally:
        await w.stop()


async def _run(base: Path) -> None:
    with temporary_cluster(base / "pg") as cluster:
        dsn = cluster.create_database("bench")
        migrate(dsn, "gatherer")
        rows = _rows(ROWS)
        raw_s = await _raw_copy(dsn, rows)
        cluster.execute("TRUNCATE trades", dbname="bench")
        writer_s = await _through_writer(dsn, base / "spool-w", rows)
        cluster.execute("TRUNCATE trades", dbname="bench")
        append_s, replay_s = await _replay(dsn, base / "spool-r", rows)
        count = cluster.execute("SELECT count(*) FROM trades", dbname="bench")[0][0]
        if count != ROWS:
            raise RuntimeError(f"replay stored {count} rows, expected {ROWS}")
    raw_rate, writer_rate = ROWS / raw_s, ROWS / writer_s
    print(f"rows: {ROWS} trades, batches of {BATCH}")
    print(f"raw asyncpg COPY:       {raw_rate:>10,.0f} rows/s ({raw_s:.2f} s)")
    print(f"through Writer:         {writer_rate:>10,.0f} rows/s ({writer_s:.2f} s)")
    print(f"Writer / raw ratio:     {writer_rate / raw_rate:>10.2f}")
    print(f"spool append (DB down): {ROWS / append_s:>10,.0f} rows/s ({append_s:.2f} s)")
    print(f"spool replay (staging): {ROWS / replay_s:>10,.0f} rows/s ({replay_s:.2f} s)")


def main() -> None:
    """Run the benchmark on a temporary local cluster and print the figures."""
    with tempfile.TemporaryDirectory(prefix="kd-bench-writer-") as tmp:
        asyncio.run(_run(Path(tmp)))


if __name__ == "__main__":
    main()
