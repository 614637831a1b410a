"""The deduplicator against real gatherer and production clusters: exactly once, through faults."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import psycopg
import pytest

from deduplicator.config import DedupConfig
from deduplicator.service import Deduplicator
from kalshi_data.config import load_config
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.restore import restore
from tests.integration.dedup_support import (
    BASE_TS,
    TRADE_SQL,
    DedupProcess,
    Topology,
    await_for,
    build_topology,
    expected_deltas,
    expected_trades,
    load_rows,
    production_deltas,
    production_trades,
    set_scratch,
    wait_for,
)


@pytest.fixture
def topo(
    pg_template: PgCluster, shared_pg: PgCluster, gatherer_template: PgCluster
) -> Iterator[Topology]:
    """Production plus three gatherer clusters (of the test's gatherer backend), migrated,
    destroyed afterwards."""
    set_scratch(shared_pg.dsn())
    t = build_topology(pg_template, gatherer_template=gatherer_template)
    yield t
    for c in [t.production, *t.gatherers]:
        c.destroy()


@contextlib.asynccontextmanager
async def running(cfg: dict[str, object]) -> AsyncIterator[Deduplicator]:
    """An in-process deduplicator, stopped (cleanly) on exit."""
    d = Deduplicator(load_config(DedupConfig, None, data=cfg))
    task = asyncio.create_task(d.run())
    try:
        yield d
    finally:
        d.stop.set()
        assert await asyncio.wait_for(task, 30) == 0


def _exactly_once(topo: Topology, lo: int, hi: int, *, deltas: bool = True) -> bool:
    """Trades AND deltas complete (deltas sync after trades: waiting on trades alone races)."""
    trades = production_trades(topo)
    if set(trades) != expected_trades(lo, hi) or max(trades.values(), default=1) != 1:
        return False
    return not deltas or production_deltas(topo) == expected_deltas(lo, hi)


def _assert_exactly_once(topo: Topology, lo: int, hi: int) -> None:
    trades = production_trades(topo)
    assert set(trades) == expected_trades(lo, hi)
    assert trades.most_common(1)[0][1] == 1
    assert production_deltas(topo) == expected_deltas(lo, hi)


@pytest.mark.both_backends
async def test_three_gatherers_with_different_holes(topo: Topology) -> None:
    """Each gatherer missed different messages; production has every one exactly once."""
    n = 6000
    for g in range(3):
        load_rows(topo, g, 0, n - 1, hole=f"mod({{i}}, 3) = {g}")
    async with running(topo.config()) as d:
        await await_for(lambda: _exactly_once(topo, 0, n - 1), 60, "all trades in production")
        await await_for(
            lambda: production_deltas(topo) == expected_deltas(0, n - 1), 30, "all deltas"
        )
        health = await d.health()
    _assert_exactly_once(topo, 0, n - 1)
    assert health["role"] == "leader"
    assert health["status"] == "healthy"
    # Each gatherer saw 2/3 of the rows; together they read each row twice: ratio 1/2.
    ratio = d.metrics.duplicate_ratio.labels("trades")._value.get()
    assert 0.45 < ratio < 0.55


async def test_suspect_rows_used_only_without_a_clean_copy(topo: Topology) -> None:
    """A suspect row is kept when nobody else has it, and cleared by a clean copy."""
    load_rows(topo, 0, 0, 99, suspect=True)
    load_rows(topo, 1, 0, 49)  # clean copy of the first half only
    async with running(topo.config()):
        await await_for(lambda: _exactly_once(topo, 0, 99), 30, "trades merged")

        def flags() -> dict[bool, int]:
            with psycopg.connect(topo.prod_dsn(superuser=True)) as conn:
                rows = conn.execute("SELECT suspect, count(*) FROM trades GROUP BY 1").fetchall()
            return {bool(r[0]): int(r[1]) for r in rows}

        await await_for(lambda: flags() == {False: 50, True: 50}, 30, "suspect flags settled")


@pytest.mark.both_backends
async def test_cursor_never_skips_slow_or_concurrent_commits(topo: Topology) -> None:
    """Concurrent writers, a slow transaction committing after later ones, equal timestamps on
    batch boundaries: no row skipped, none doubled.

    Rows 0..499 are committed first, so the day's partition (or TimescaleDB chunk) exists
    before the slow transaction starts: on TimescaleDB the transaction that creates a chunk
    holds a lock that makes every other insert into that chunk wait until it commits (see
    test_timescale), which would stall the writers rather than test the horizon."""
    dsn = topo.gatherer_dsn(0, superuser=True)
    with psycopg.connect(dsn) as first:
        first.execute(TRADE_SQL.format(hole="false").encode(), _params(0, 499))
    slow = psycopg.connect(dsn)
    # The slow transaction takes its xid first, then stays open while others commit.
    slow.execute(TRADE_SQL.format(hole="false").encode(), _params(500, 999))
    xid_row = slow.execute("SELECT txid_current()").fetchone()
    assert xid_row is not None
    slow_xid = int(xid_row[0])
    errors: list[BaseException] = []
    chunks = [(1000 + 500 * j, 1000 + 500 * j + 499) for j in range(24)]

    def writer(mine: list[tuple[int, int]]) -> None:
        try:
            with psycopg.connect(dsn) as conn:
                for lo, hi in mine:
                    conn.execute(TRADE_SQL.format(hole="false").encode(), _params(lo, hi))
                    time.sleep(random.uniform(0, 0.05))  # interleave commits of the writers
                    conn.commit()
        except BaseException as exc:
            errors.append(exc)

    cfg = topo.config(batch_rows=137)  # batch boundaries fall inside equal-timestamp runs
    try:
        async with running(cfg) as d:
            threads = [threading.Thread(target=writer, args=(chunks[j::4],)) for j in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                await asyncio.to_thread(t.join)
            assert errors == []
            last_commit = time.time()
            progress = d.syncs[0].status.tables["trades"]
            # A round that began after the last commit found nothing more below the horizon:
            # everything after the slow transaction's xid is held back...
            await await_for(
                lambda: (progress.fresh_until or 0.0) > last_commit,
                30,
                "a read of gatherer 0 after the last commit",
            )
            assert _count(topo) == 500
            assert progress.cursor[0] < slow_xid, (progress.cursor, slow_xid)
            # ...until it commits.
            slow.commit()
            await await_for(
                lambda: _exactly_once(topo, 0, 12999, deltas=False), 60, "every committed row"
            )
    finally:
        slow.close()
    trades = production_trades(topo)
    assert len(trades) == 13000
    assert set(trades.values()) == {1}


def _params(lo: int, hi: int) -> dict[str, object]:
    return {"base": BASE_TS, "lo": lo, "hi": hi, "suspect": False}


def _count(topo: Topology) -> int:
    with psycopg.connect(topo.prod_dsn(superuser=True)) as conn:
        row = conn.execute("SELECT count(*) FROM trades").fetchone()
    assert row is not None
    return int(row[0])


def test_kill9_mid_batch_then_restart(topo: Topology, tmp_path: Path) -> None:
    """SIGKILL of the deduplicator mid-stream, then a restart: no loss, no duplicate."""
    n = 120_000
    for g in range(3):
        load_rows(topo, g, 0, n - 1)
    proc = DedupProcess(topo.config(batch_rows=3000), tmp_path).start()
    try:
        wait_for(lambda: _count(topo) > 10_000, 60, "the first batches")
        assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
        assert _count(topo) < n, "killed too late to be mid-stream"
        proc2 = DedupProcess(topo.config(batch_rows=3000), tmp_path).start()
        try:
            wait_for(lambda: _count(topo) == n, 120, "catch-up after restart")
            wait_for(lambda: _exactly_once(topo, 0, n - 1), 120, "trades and deltas")
            assert proc2.kill(signal.SIGTERM) == 0
        finally:
            proc2.stop()
    finally:
        proc.stop()
    _assert_exactly_once(topo, 0, n - 1)


async def test_production_failover_to_synchronous_standby(topo: Topology) -> None:
    """Primary killed, synchronous standby promoted, multi-host DSN: resumes by itself."""
    standby = topo.production.create_standby(Path(tempfile.mkdtemp(prefix="kd-prod-sb-")))
    try:
        p, s = topo.production.port, standby.port
        dsn = (
            f"postgresql://dedup:writer-test-pw@127.0.0.1:{p},127.0.0.1:{s}/prod"
            "?target_session_attrs=read-write"
        )
        cfg = topo.config(production={"dsn": dsn, "connect_timeout_s": 2})
        for g in range(3):
            load_rows(topo, g, 0, 4999)
        async with running(cfg) as d:
            await await_for(lambda: _exactly_once(topo, 0, 4999), 60, "first half synced")
            topo.production.kill9()
            for g in range(3):
                load_rows(topo, g, 5000, 9999)
            await asyncio.to_thread(standby.promote)
            topo.production = standby  # reads below go to the new primary
            await await_for(lambda: _exactly_once(topo, 0, 9999), 90, "resumed after failover")
            health = await d.health()
        assert health["production"] == "connected"
        _assert_exactly_once(topo, 0, 9999)
    finally:
        standby.destroy()


async def test_one_gatherer_down_others_keep_production_current(topo: Topology) -> None:
    """One gatherer DB down: the others keep production current; it catches up on return."""
    for g in range(3):
        load_rows(topo, g, 0, 999)
    async with running(topo.config()) as d:
        await await_for(lambda: _exactly_once(topo, 0, 999), 30, "initial sync")
        down = topo.gatherers[1]
        down.kill9()
        load_rows(topo, 0, 1000, 1999)
        load_rows(topo, 2, 1000, 1999)
        await await_for(lambda: _exactly_once(topo, 0, 1999), 30, "others keep production current")
        health = await d.health()
        assert health["gatherers"]["g2"]["status"] == "down"
        assert health["status"] == "degraded"
        await asyncio.to_thread(down.start)
        # Rows only the returning gatherer has must arrive too.
        load_rows(topo, 1, 2000, 2999)
        await await_for(lambda: _exactly_once(topo, 0, 2999), 60, "the lost gatherer caught up")
        await await_for(
            lambda: d.syncs[1].status.up and d.syncs[1].breaker.state.value == "closed",
            30,
            "breaker closed again",
        )
    _assert_exactly_once(topo, 0, 2999)


def test_only_the_leader_writes_and_standby_takes_over(topo: Topology, tmp_path: Path) -> None:
    """Two deduplicators: one leads; kill it and the standby takes over within 10 s."""
    for g in range(3):
        load_rows(topo, g, 0, 1999)
    a = DedupProcess(topo.config("dedup-a", http_port=_free()), tmp_path).start()
    wait_for(lambda: _holder(topo) == "dedup-a", 30, "dedup-a to lead")
    b = DedupProcess(topo.config("dedup-b", http_port=_free()), tmp_path).start()
    try:
        wait_for(lambda: _exactly_once(topo, 0, 1999), 60, "first sync")
        assert _holder(topo) == "dedup-a"
        assert "acquired the lease" not in b.output()
        a.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: _holder(topo) == "dedup-b", 15, "dedup-b to take over")
        took = time.monotonic() - killed_at
        assert took < 10, f"takeover took {took:.1f} s"
        for g in range(3):
            load_rows(topo, g, 2000, 3999)
        wait_for(lambda: _exactly_once(topo, 0, 3999), 60, "the new leader syncs")
        assert b.kill(signal.SIGTERM) == 0
    finally:
        a.stop()
        b.stop()
    _assert_exactly_once(topo, 0, 3999)


def _holder(topo: Topology) -> str | None:
    with psycopg.connect(topo.prod_dsn(superuser=True)) as conn:
        row = conn.execute("SELECT holder FROM dedup_lease WHERE name = 'dedup'").fetchone()
    return None if row is None else row[0]


def _free() -> int:
    from kalshi_data.testing.pgcluster import free_port

    return free_port()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("password", "InvalidPasswordError"),
        ("database", "InvalidCatalogNameError"),
    ],
)
def test_permanent_errors_exit_nonzero_with_a_message(
    topo: Topology, tmp_path: Path, breakage: str, expected: str
) -> None:
    """Wrong password or missing database: exit 1 naming the problem, no retry loop."""
    dsn = topo.prod_dsn()
    dsn = (
        dsn.replace("writer-test-pw", "wrong")
        if breakage == "password"
        else dsn.replace("/prod", "/missing")
    )
    proc = DedupProcess(topo.config(production={"dsn": dsn}), tmp_path).start()
    try:
        assert proc.proc is not None
        code = proc.proc.wait(30)
    finally:
        proc.stop()
    out = proc.output()
    assert code == 1
    assert expected in out
    assert "wrong" not in out  # the password never reaches the log


async def test_rebuilt_gatherer_is_rescanned_not_skipped(topo: Topology, tmp_path: Path) -> None:
    """A gatherer DB rebuilt (new system identifier, xids from scratch) and refilled with
    restore-gatherer is rescanned: nothing skipped, nothing doubled."""
    from kalshi_data.migrate import migrate
    from kalshi_data.tools.users import create_user

    cfg = topo.config(gatherers=[{"id": "g1", "dsn": topo.gatherer_dsn(0)}])
    load_rows(topo, 0, 0, 2999)
    # Burn xids so the old cursor is far ahead of the rebuilt cluster's fresh xids.
    with psycopg.connect(topo.gatherer_dsn(0, superuser=True), autocommit=True) as conn:
        for _ in range(300):
            conn.execute("SELECT pg_current_xact_id()")
    load_rows(topo, 0, 3000, 3999)
    async with running(cfg):
        await await_for(lambda: _exactly_once(topo, 0, 3999), 30, "initial sync")
    old = topo.gatherers[0]
    port = old.port
    old.destroy()
    rebuilt = PgCluster(tmp_path / "rebuilt", port=port)
    rebuilt.init().start()
    topo.gatherers[0] = rebuilt
    rebuilt.create_database("gatherer")
    migrate(rebuilt.dsn("gatherer"), "gatherer")
    create_user(rebuilt.dsn("gatherer"), "dedup_reader", "reader", "reader-test-pw")
    # The runbook's recovery: restore production's recent window into the rebuilt cluster.
    restored = await restore(
        topo.prod_dsn(superuser=True), rebuilt.dsn("gatherer"), timedelta(days=3)
    )
    assert restored["trades"] == 4000
    load_rows(topo, 0, 4000, 4999)  # new rows at low xids in the new cluster
    async with running(cfg) as d:
        await await_for(lambda: _exactly_once(topo, 0, 4999), 30, "rows of the rebuilt cluster")
        assert d.metrics.cursor_rescans.labels("g1", "trades")._value.get() == 1
        # The restored rows were read again and merged without doubling anything.
        await await_for(
            lambda: d.metrics.rows_read.labels("g1", "trades")._value.get() >= 5000,
            30,
            "the rescan to read the restored rows",
        )
    _assert_exactly_once(topo, 0, 4999)


async def test_health_endpoint_over_http(topo: Topology) -> None:
    """/health, /ready and /metrics answer over real HTTP."""
    from kalshi_data.testing.pgcluster import free_port

    port = free_port()
    load_rows(topo, 0, 0, 99)
    async with running(topo.config(http_port=port)):
        await await_for(lambda: _count(topo) == 100, 30, "sync")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as r:
                body = await r.json()
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{port}/ready") as r:
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
    assert body["role"] == "leader"
    assert set(body["gatherers"]) == {"g1", "g2", "g3"}
    assert "dedup_sync_lag_seconds" in text
    assert "writer-test-pw" not in str(body)
    assert "writer-test-pw" not in text


def _rows_read(topo: Topology, table: str) -> int:
    with psycopg.connect(topo.prod_dsn(superuser=True)) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(rows_read), 0) FROM sync_cursors WHERE table_name = %s", (table,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_identical_copies_skip_staging_and_a_restart_falls_back_safely(
    topo: Topology,
) -> None:
    """Three identical gatherers: every copy after the first is skipped by the seen-identity
    filter (never staged). Then a fresh deduplicator (empty filter) re-reads rows production
    already holds: its direct COPY meets them, falls back to staging + ON CONFLICT, and
    production stays exactly once."""
    n = 3000
    for g in range(3):
        load_rows(topo, g, 0, n - 1)
    async with running(topo.config()) as d:
        await await_for(lambda: _exactly_once(topo, 0, n - 1), 60, "all rows merged")
        await await_for(lambda: _rows_read(topo, "trades") == 3 * n, 30, "every copy read")
        skipped = sum(
            d.metrics.seen_skipped.labels(f"g{i + 1}", "trades")._value.get() for i in range(3)
        )
        inserted = sum(
            d.metrics.unique_rows.labels(f"g{i + 1}", "trades")._value.get() for i in range(3)
        )
    assert inserted == n
    # Claims make the other loops wait for the merge of the same keys, then skip them: 2 n in
    # the usual run. (A loop that waited CLAIM_WAITS times stages anyway, harmlessly: so only
    # "most copies skipped" is asserted, plus nothing skipped that was not merged.)
    assert n <= skipped <= 2 * n
    _assert_exactly_once(topo, 0, n - 1)

    # Rewind one gatherer's cursors (as a rescan would) and start a new process.
    with psycopg.connect(topo.prod_dsn(superuser=True), autocommit=True) as conn:
        conn.execute("UPDATE sync_cursors SET last_xid = '0', last_id = 0 WHERE gatherer_id = 'g2'")
    load_rows(topo, 1, n, n + 499)  # and some rows nobody has merged yet
    async with running(topo.config()) as d:
        await await_for(lambda: _rows_read(topo, "trades") == 4 * n + 500, 60, "rescan read")
        await await_for(lambda: _exactly_once(topo, 0, n + 499, deltas=False), 30, "new rows")
        conflicts = d.metrics.direct_conflicts.labels("g2", "trades")._value.get()
    assert conflicts >= 1
    trades = production_trades(topo)
    assert set(trades) == expected_trades(0, n + 499)
    assert trades.most_common(1)[0][1] == 1


@pytest.mark.both_backends
async def test_reader_batches_use_the_cursor_index_not_a_sort(
    topo: Topology, gatherer_backend: str
) -> None:
    """The next batch over a partitioned table (or hypertable) is a Merge Append of each
    partition's (chunk's) cursor index under the LIMIT; a Sort of every pending row made catch-up
    quadratic. (A hypertable whose rows fit one chunk needs no Merge Append: one index scan.)"""
    from deduplicator import source
    from deduplicator import sql as dsql
    from kalshi_data.tables import TRADES

    load_rows(topo, 0, 0, 1999)
    conn = await source.connect(topo.gatherer_dsn(0), timeout_s=5, gatherer="g1")
    try:
        for query, args in (
            (dsql.keyed_batch_query(TRADES), ("0", 0, str(2**40), 500)),
            (dsql.batch_end_query(TRADES), ("0", 0, str(2**40), 500, 2**30)),
        ):
            plan = [r[0] for r in await conn.fetch("EXPLAIN " + query, *args)]
            merges = sum("Merge Append" in line for line in plan)
            # Each Merge Append prints its own ordering; any other Sort on the cursor is a sort.
            cursor_sorts = sum("Sort Key:" in line and "ingest_xid" in line for line in plan)
            # the cursor index: "<t>_cursor" on chunks, "<partition>_ingest_xid_ingest_id_idx"
            cursor_scans = sum(
                "Scan using" in line and ("_cursor on" in line or "ingest_id_idx on" in line)
                for line in plan
            )
            assert merges == 1 or (gatherer_backend == "timescaledb" and merges == 0), plan
            assert cursor_sorts == merges, "\n".join(plan)
            assert cursor_scans >= 1, "\n".join(plan)
    finally:
        await conn.close()
