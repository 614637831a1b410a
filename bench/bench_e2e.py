"""End-to-end latency: exchange timestamp → committed in production, at a fixed message rate.

Runs the whole pipeline as real processes (the demo's orchestration: simulator, three gatherers
with their own PostgreSQL, the deduplicator, production) at ``KD_BENCH_RATE`` messages/s (default
2,000) for ``KD_BENCH_SECONDS`` (default 40), then reads, for every trade and order-book delta
committed after a warm-up, the commit time of the production transaction that inserted it
(``track_commit_timestamp``) minus its exchange timestamp. Prints p50/p90/p99/max per table.
The simulator stamps ``ts_ms`` from the same clock, so the figure is the pipeline's own delay.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg

from kalshi_data.testing import cluster as lc

RATE = float(os.environ.get("KD_BENCH_RATE", "2000"))
SECONDS = float(os.environ.get("KD_BENCH_SECONDS", "40"))
WARMUP = 10.0

LATENCY = """
SELECT count(*),
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY lat),
       max(lat)
FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - exchange_ts) * 1000 AS lat
      FROM {table} WHERE exchange_ts >= to_timestamp(%s)) s
"""


def main() -> None:
    """Run the pipeline at RATE for SECONDS and print latency percentiles."""
    workdir = Path(tempfile.mkdtemp(prefix="kd-bench-e2e-"))
    (workdir / "logs").mkdir()
    demo = lc.LocalCluster(workdir)
    try:
        prod_dsn, gatherers = lc.setup_databases(
            demo, 3, prod_settings={"track_commit_timestamp": "on"}
        )
        lc.start_simulator(demo, seed=11, markets=500, rate=RATE)
        lc.start_gatherers(demo, gatherers)
        lc.start_dedup(demo, prod_dsn, gatherers)
        start = time.time()
        time.sleep(SECONDS)
        demo.services[0].stop()
        lc.wait_drained(demo, 60)
        dsn = demo.clusters["production"].dsn("kalshi")
        print(
            f"rate {RATE:,.0f} msg/s for {SECONDS:.0f} s, 3 gatherers, latency after "
            f"{WARMUP:.0f} s warm-up (exchange ts -> production commit)"
        )
        with psycopg.connect(dsn) as conn:
            for table in ("trades", "orderbook_deltas"):
                row = conn.execute(LATENCY.format(table=table).encode(), (start + WARMUP,))
                n, pct, worst = row.fetchone() or (0, None, None)
                if not n or pct is None:
                    print(f"{table}: no rows")
                    continue
                p50, p90, p99 = pct
                print(
                    f"{table:17} n={n:>7,}  p50 {p50:6.1f} ms  p90 {p90:6.1f} ms  "
                    f"p99 {p99:6.1f} ms  max {worst:7.1f} ms  (target p99 <= 100 ms)"
                )
    finally:
        for svc in reversed(demo.services):
            svc.stop()
        for cluster in demo.clusters.values():
            cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
