"""Production partition upkeep (deduplicator/upkeep.py) on a real production database.

The repair case: an existing deployment whose default partitions hold several days (and today,
whose partition never existed) is repaired while a writer keeps inserting new and duplicate rows
through the parent as the deduplicator's role; afterwards the defaults are empty, every day is a
partition, and production holds exactly the rows written, each once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, date, datetime, timedelta

import asyncpg
import psycopg
import pytest

from deduplicator.metrics import DedupMetrics
from deduplicator.upkeep import run_periodic, run_upkeep
from kalshi_data.migrate import migrate
from kalshi_data.tables import TIMESERIES_TABLES, TRADES
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.users import create_user

PER_DAY = 6000
WRITER_PW = "upkeep-writer-pw"

INSERT = """
INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, is_block_trade,
    suspect, received_at, gatherer_id)
SELECT md5('t' || i)::uuid, 'MKT-' || mod(i, 9),
    %(day)s::timestamptz + mod(i, 86000) * interval '1 s',
    4200, 5800, 100, false, false, now(), 'g1'
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
ON CONFLICT DO NOTHING
"""


def _lo(day: date) -> str:
    return f"{day.isoformat()} 00:00+00"


def _partitions(conn: psycopg.Connection[tuple[object, ...]], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass",
        (table,),
    ).fetchall()
    return {str(r[0]) for r in rows}


@pytest.fixture
def prod(shared_pg: PgCluster, fresh_db: str) -> tuple[str, str]:
    """A migrated production database: (superuser DSN, deduplicator-writer DSN)."""
    migrate(fresh_db, "production")
    user = f"upkeep_{fresh_db.rsplit('/', 1)[1]}"
    create_user(fresh_db, "dedup_writer", user, WRITER_PW)
    dbname = fresh_db.rsplit("/", 1)[1]
    return fresh_db, shared_pg.dsn(dbname, user=user, password=WRITER_PW)


def test_upkeep_repairs_default_days_while_writes_go_on(prod: tuple[str, str]) -> None:
    """Several days in the default move into partitions in batches: no row lost or doubled,
    and the concurrent writer is never blocked for long."""
    su, writer_dsn = prod
    now = datetime.now(UTC)
    today = now.date()
    old_days = [today - timedelta(days=n) for n in (6, 5, 4)]  # before the migration's window
    days = [*old_days, today]
    with psycopg.connect(su, autocommit=True) as conn:
        # today's partition never existed (the deployment outlived the migration's window)
        for table in ("trades",):
            part = f"{table}_p{today:%Y%m%d}"
            conn.execute(f"DROP TABLE {part}")
        expected = 0
        for n, day in enumerate(days):
            lo = n * PER_DAY
            conn.execute(INSERT, {"day": _lo(day), "lo": lo, "hi": lo + PER_DAY - 1})
            expected += PER_DAY
        in_default = conn.execute("SELECT count(*) FROM trades_default").fetchone()
        assert in_default == (expected,)

    # The writer: new rows for every day under repair (late rows) and copies of existing ones.
    stop = threading.Event()
    stalls: list[float] = []
    written = [0]
    next_id = [len(days) * PER_DAY]

    errors: list[BaseException] = []

    def write() -> None:
        try:
            _write()
        except BaseException as exc:
            errors.append(exc)
            raise

    def _write() -> None:
        with psycopg.connect(writer_dsn, autocommit=True) as conn:
            k = 0
            while not stop.is_set():
                day = days[k % len(days)]
                t0 = time.monotonic()
                lo = next_id[0]
                conn.execute(INSERT, {"day": _lo(day), "lo": lo, "hi": lo + 49})
                dup = (k * 37) % (len(days) * PER_DAY)
                # a copy of an existing row: must not become a second row wherever it sits
                conn.execute(
                    INSERT,
                    {"day": _lo(days[dup // PER_DAY]), "lo": dup, "hi": dup},
                )
                stalls.append(time.monotonic() - t0)
                next_id[0] += 50
                written[0] += 1
                k += 1

    thread = threading.Thread(target=write, daemon=True)
    thread.start()

    async def upkeep() -> list[tuple[str, date]]:
        conn = await asyncpg.connect(writer_dsn)
        try:
            report = await run_upkeep(conn, now=now, batch_blocks=8)
        finally:
            await conn.close()
        assert report.default_rows["trades"] == 0
        return report.repaired

    try:
        deadline = time.monotonic() + 10
        while written[0] < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = written[0]
        repaired = asyncio.run(upkeep())
        during = written[0] - before
        deadline = time.monotonic() + 10
        while written[0] < before + during + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
    assert sorted(repaired) == sorted(("trades", d) for d in days)
    assert during > 0, "the writer made no progress while the upkeep ran"
    assert max(stalls) < 3.0, f"a write waited {max(stalls):.2f} s"

    with psycopg.connect(su, autocommit=True) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT trade_id) FROM trades"
        ).fetchone() or (0, 0)
        ids = conn.execute(
            "SELECT count(*) FROM trades t WHERE t.trade_id NOT IN "
            "(SELECT md5('t' || i)::uuid FROM generate_series(0, %s) AS i)",
            (next_id[0] - 1,),
        ).fetchone()
        assert ids == (0,)
        assert total == distinct == next_id[0]  # every row written, each exactly once
        assert conn.execute("SELECT count(*) FROM trades_default").fetchone() == (0,)
        parts = _partitions(conn, "trades")
        for day in days:
            assert f"trades_p{day:%Y%m%d}" in parts
        # a one-day query reads one partition
        plan = conn.execute(
            "EXPLAIN SELECT count(*) FROM trades WHERE exchange_ts >= %s AND exchange_ts < %s",
            (_lo(old_days[0]), _lo(old_days[1])),
        ).fetchall()
        scanned = {line for (line,) in plan if " on trades_" in line}
        assert scanned
        assert all(f"trades_p{old_days[0]:%Y%m%d}" in s for s in scanned), plan
        assert not conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'trades_default'::regclass "
            "AND NOT tgisinternal"
        ).fetchall()


def test_upkeep_creates_days_ahead_and_is_idempotent(prod: tuple[str, str]) -> None:
    """Each table gets today-2 ... today+N; a second run does nothing."""
    _, writer_dsn = prod
    now = datetime.now(UTC) + timedelta(days=12)  # as if 12 days passed since the migration

    async def twice() -> tuple[int, int, dict[str, int]]:
        conn = await asyncpg.connect(writer_dsn)
        try:
            first = await run_upkeep(conn, now=now, days_ahead=3)
            again = await run_upkeep(conn, now=now, days_ahead=3)
        finally:
            await conn.close()
        return len(first.created), len(again.created), first.default_rows

    created, again, default_rows = asyncio.run(twice())
    assert created == len(TIMESERIES_TABLES) * 6  # today-2 ... today+3, none existed
    assert again == 0
    assert default_rows == {t.name: 0 for t in TIMESERIES_TABLES}
    with psycopg.connect(prod[0]) as conn:
        parts = _partitions(conn, TRADES.name)
    for n in range(-2, 4):
        assert f"trades_p{(now + timedelta(days=n)).date():%Y%m%d}" in parts


def test_periodic_upkeep_retries_failures_and_stops_at_once(
    prod: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """run_periodic under its Supervisor: a failing run (here a wrong password, permanent) is
    logged and retried with backoff rather than ending the loop; a good run publishes; the stop
    event cuts both the backoff and the hour-long wait short."""
    _, writer_dsn = prod
    wrong = writer_dsn.replace(WRITER_PW, "not-the-password")
    metrics = DedupMetrics("upkeep-test")

    async def scenario() -> float:
        caplog.set_level(logging.WARNING, logger="deduplicator.upkeep")
        stop = asyncio.Event()
        task = asyncio.create_task(run_periodic(wrong, metrics, stop, interval_s=0.2))
        deadline = time.monotonic() + 30
        while caplog.text.count("partition upkeep failed: InvalidPasswordError") < 2:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        stop = asyncio.Event()
        task = asyncio.create_task(run_periodic(writer_dsn, metrics, stop))  # hourly
        gauge = metrics.partition_upkeep_last_success
        while gauge._value.get() == 0:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline + 30
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        return float(gauge._value.get())  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) > 0
    assert "not-the-password" not in caplog.text
