"""Helpers for deduplicator tests: clusters, synthetic gatherer rows, and the ground truth.

Synthetic rows are generated from an index ``i`` so that the truth is known exactly: trade ``i``
has id ``md5('trade' || i)::uuid``; order-book delta ``i`` belongs to the tuple ``i // 2`` with
occurrence index ``k = mod(i, 2)``, so every tuple appears twice (identical deltas in one ms,
the hard case). A gatherer "misses" the indexes its ``hole`` predicate selects.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import yaml

from kalshi_data.migrate import migrate
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.users import create_user

READER_PW = "reader-test-pw"  # generated per run would be nicer; these clusters live minutes
WRITER_PW = "writer-test-pw"
#: Rows are stamped an hour before the run started (never a fixed date: the restore and retention
#: windows are computed from the clock, and a fixed date would leave them one day).
BASE_TS = (datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)).isoformat(sep=" ")

TRADE_SQL = """
INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, taker_outcome_side,
    taker_book_side, taker_side, is_block_trade, sid, seq, suspect, received_at)
SELECT md5('trade' || i)::uuid, 'MKT-' || (mod(i, 40)), %(base)s::timestamptz + i * interval '1 ms',
    100 * (mod(i, 99)) + 1, 10000 - (100 * (mod(i, 99)) + 1), 100 * (1 + mod(i, 7)),
    'yes', 'bid', 'yes',
    false, 3, i, %(suspect)s, now()
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i WHERE NOT ({hole})
"""
DELTA_SQL = """
INSERT INTO orderbook_deltas (ticker, market_id, exchange_ts, side, price, delta, k, sid, seq,
    suspect, received_at)
SELECT 'MKT-' || (mod(i / 2, 40)), NULL, %(base)s::timestamptz + (i / 2) * interval '1 ms',
    CASE WHEN mod(i / 2, 2) = 0 THEN 'yes' ELSE 'no' END, 100 * (mod(i / 2, 99)),
    100 * (1 + mod(i / 2, 5)),
    -- k is the occurrence index among what THIS gatherer saw: a gatherer that missed the first
    -- of two identical deltas numbers the second 0, as a real gatherer would
    CASE WHEN mod(i, 2) = 1 AND NOT ({hole_prev}) THEN 1 ELSE 0 END,
    1, i, %(suspect)s, now()
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i WHERE NOT ({hole})
"""
MARKET_SQL = """
INSERT INTO markets (ticker, event_ticker, status, updated_time, data, content_hash, received_at)
SELECT 'MKT-' || i, 'EV-' || (mod(i, 4)), 'active', %(base)s::timestamptz + %(v)s * interval '1 s',
    jsonb_build_object('ticker', 'MKT-' || i, 'v', %(v)s), %(v)s * 1000 + i, now()
FROM generate_series(0, 39) AS i
"""


@dataclass
class Topology:
    """A production cluster and gatherer clusters, migrated, with login users."""

    production: PgCluster
    gatherers: list[PgCluster]

    def prod_dsn(self, *, superuser: bool = False) -> str:
        """DSN of the production database as the deduplicator writer (or superuser)."""
        if superuser:
            return self.production.dsn("prod")
        return self.production.dsn("prod", user="dedup", password=WRITER_PW)

    def gatherer_dsn(self, i: int, *, superuser: bool = False) -> str:
        """DSN of gatherer ``i`` as the select-only reader (or superuser)."""
        if superuser:
            return self.gatherers[i].dsn("gatherer")
        return self.gatherers[i].dsn("gatherer", user="reader", password=READER_PW)

    def config(
        self, instance_id: str = "dedup-a", http_port: int = 0, **extra: object
    ) -> dict[str, object]:
        """A deduplicator config dict for this topology."""
        cfg: dict[str, object] = {
            "instance_id": instance_id,
            "production": {"dsn": self.prod_dsn(), "connect_timeout_s": 3},
            "gatherers": [
                {"id": f"g{i + 1}", "dsn": self.gatherer_dsn(i), "connect_timeout_s": 2}
                for i in range(len(self.gatherers))
            ],
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "poll_interval_s": 0.2,
            "batch_rows": 2000,
            "lease_ttl_s": 3,
            "lease_poll_s": 0.5,
            "breaker_failures": 2,
            "breaker_reset_s": 1,
            "backoff_cap_s": 1,
        }
        cfg.update(extra)
        return cfg


def build_topology(
    template: PgCluster, n_gatherers: int = 3, gatherer_template: PgCluster | None = None
) -> Topology:
    """Start and migrate a production cluster and ``n_gatherers`` gatherer clusters (copied from
    ``gatherer_template`` when given, e.g. one that preloads TimescaleDB)."""
    clusters: list[PgCluster] = []
    try:
        for i in range(n_gatherers + 1):
            c = PgCluster(Path(tempfile.mkdtemp(prefix="kd-dd-")))
            c.clone_from(template if i == 0 else (gatherer_template or template))
            c.start()
            clusters.append(c)
        prod, gathers = clusters[0], clusters[1:]
        prod.create_database("prod")
        migrate(prod.dsn("prod"), "production")
        create_user(prod.dsn("prod"), "dedup_writer", "dedup", WRITER_PW)
        for g in gathers:
            g.create_database("gatherer")
            migrate(g.dsn("gatherer"), "gatherer")
            create_user(g.dsn("gatherer"), "dedup_reader", "reader", READER_PW)
        return Topology(prod, gathers)
    except BaseException:
        for c in clusters:
            c.destroy()
        raise


def load_rows(
    topo: Topology, g: int, lo: int, hi: int, hole: str = "false", *, suspect: bool = False
) -> None:
    """Write trades and deltas ``lo..hi`` into gatherer ``g``, minus the indexes for which the
    SQL predicate ``hole`` (written in terms of ``{i}``) is true."""
    params = {"base": BASE_TS, "lo": lo, "hi": hi, "suspect": suspect}
    dsn = topo.gatherer_dsn(g, superuser=True)
    here, prev = hole.format(i="i"), hole.format(i="(i - 1)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TRADE_SQL.format(hole=here).encode(), params)
        conn.execute(DELTA_SQL.format(hole=here, hole_prev=prev).encode(), params)


def expected_trades(lo: int, hi: int) -> set[str]:
    """The trade ids of indexes lo..hi."""
    import hashlib

    out = set()
    for i in range(lo, hi + 1):
        h = hashlib.md5(f"trade{i}".encode()).hexdigest()
        out.add(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def production_trades(topo: Topology) -> Counter[str]:
    """Trade ids in production with their multiplicity."""
    with psycopg.connect(topo.prod_dsn(superuser=True)) as conn:
        rows = conn.execute("SELECT trade_id::text FROM trades").fetchall()
    return Counter(r[0] for r in rows)


def production_deltas(topo: Topology) -> Counter[tuple[object, ...]]:
    """Order-book delta identities in production with multiplicity."""
    with psycopg.connect(topo.prod_dsn(superuser=True)) as conn:
        rows = conn.execute(
            "SELECT ticker, exchange_ts, side, price, delta, k FROM orderbook_deltas"
        ).fetchall()
    return Counter(tuple(r) for r in rows)


def expected_deltas(lo: int, hi: int) -> Counter[tuple[object, ...]]:
    """The true delta multiset of indexes lo..hi (pairs of identical deltas, k = 0 and 1)."""
    with psycopg.connect(_scratch_dsn()) as conn:
        rows = conn.execute(
            "SELECT 'MKT-' || (mod(i / 2, 40)), %s::timestamptz + (i / 2) * interval '1 ms', "
            "CASE WHEN mod(i / 2, 2) = 0 THEN 'yes' ELSE 'no' END, 100 * (mod(i / 2, 99)), "
            "(100 * (1 + mod(i / 2, 5)))::bigint, mod(i, 2) "
            "FROM generate_series(%s::int, %s::int) AS i",
            (BASE_TS, lo, hi),
        ).fetchall()
    return Counter(tuple(r) for r in rows)


_SCRATCH: list[str] = []


def set_scratch(dsn: str) -> None:
    """A database used only to compute expected values with the same SQL arithmetic."""
    _SCRATCH[:] = [dsn]


def _scratch_dsn() -> str:
    return _SCRATCH[0]


def wait_for(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition until true; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def await_for(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Async version of :func:`wait_for` (keeps the event loop running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class DedupProcess:
    """The deduplicator as a real subprocess (``python -m deduplicator``), for signals."""

    def __init__(self, cfg: dict[str, object], workdir: Path) -> None:
        self.path = workdir / f"{cfg['instance_id']}.yaml"
        self.path.write_text(yaml.safe_dump(cfg))
        self.log = workdir / f"{cfg['instance_id']}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DedupProcess:
        """Launch the process."""
        env = dict(os.environ)
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deduplicator", "--config", str(self.path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def kill(self, sig: int) -> int | None:
        """Send ``sig`` and wait for exit (None if still running after 20 s)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Make sure the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        """What the process logged."""
        return self.log.read_text() if self.log.exists() else ""

    def json_lines(self) -> list[dict[str, object]]:
        """Log lines that are JSON objects."""
        out = []
        for line in self.output().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
