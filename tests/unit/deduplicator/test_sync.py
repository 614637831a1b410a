"""One gatherer's sync loop (deduplicator/sync.py) against real gatherer and production databases:
a round merges a batch once and moves the cursor in the same transaction, finds nothing the
second time, and never passes a transaction still open; a gatherer's failure is recorded
without its text and counted by the gatherer's breaker, a production failure is not; a NOTIFY
wakes the loop before its poll interval, and ``stop`` ends it at once with no task left."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest

from deduplicator import lease
from deduplicator.config import DedupConfig, GathererSource, ProductionConfig
from deduplicator.metrics import DedupMetrics
from deduplicator.sync import GathererSync
from kalshi_data.config import Secret
from kalshi_data.resilience import BreakerState
from tests.unit.deduplicator.conftest import TRADES_SQL, expected_ids, insert_trades, trade_ids

#: Makes production refuse every cursor move of a merge (the pin of a new cursor passes).
REFUSE_CURSOR_MOVE = """
CREATE FUNCTION kd_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.last_id IS DISTINCT FROM OLD.last_id THEN
        RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = {message};
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER kd_test_refuse BEFORE UPDATE ON sync_cursors
    FOR EACH ROW EXECUTE FUNCTION kd_test_refuse();
"""
#: Shadows the built-in that the gatherer's identity and horizon queries call (the database's
#: search_path puts public first), so every round fails on the gatherer with a server error.
FAIL_GATHERER = """
CREATE FUNCTION public.pg_current_snapshot() RETURNS pg_snapshot LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '08006', MESSAGE = {message};
END $$;
"""

Factory = Callable[..., GathererSync]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _dbname(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def _password(dsn: str) -> str:
    password = urlsplit(dsn).password
    assert password  # the harness's superuser DSN carries one: it must never be shown
    return password


def _run_sql(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.encode())


def _cursor(dsn: str) -> tuple[int, int, int]:
    """The production cursor of g1's trades: (last_xid, last_id, rows_read)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT last_xid::text::bigint, last_id, rows_read FROM sync_cursors "
            "WHERE gatherer_id = 'g1' AND table_name = 'trades'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _last_row_cursor(dsn: str) -> tuple[int, int]:
    """The cursor of the gatherer's last trade in cursor order."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT ingest_xid::text::bigint, ingest_id FROM trades ORDER BY 1 DESC, 2 DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _until(
    what: str,
    cond: Callable[[], bool],
    task: asyncio.Task[None] | None = None,
    timeout_s: float = 20.0,
) -> None:
    """Await ``cond()`` (checked every 20 ms), failing after ``timeout_s`` or when ``task``
    (the loop) ends first (with its exception, if any)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if task is not None and task.done():
            await task
            raise AssertionError(f"the loop ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _others() -> set[asyncio.Task[object]]:
    me = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not me and not t.done()}


async def _settle() -> None:
    for _ in range(3):  # cancelled tasks finish on the next loop iterations
        await asyncio.sleep(0)


@pytest.fixture
async def leader(production_db: str) -> lease.LeaseState:
    """This instance holds the production lease."""
    conn = await asyncpg.connect(production_db)
    try:
        state = lease.LeaseState("dedup-a")
        assert await lease.try_acquire(conn, state, ttl_s=3600)
    finally:
        await conn.close()
    return state


@pytest.fixture
async def make_sync(
    production_db: str, gatherer_plain_db: str, leader: lease.LeaseState
) -> AsyncIterator[Factory]:
    """Builds the loop of gatherer g1 (config overrides as keywords); closes it afterwards."""
    made: list[GathererSync] = []

    def make(**extra: object) -> GathererSync:
        settings: dict[str, object] = {
            "poll_interval_s": 0.0,  # every round a full one, unless a test says otherwise
            "backoff_cap_s": 0.1,  # the smallest: the first ceiling
            "breaker_failures": 2,
            "breaker_reset_s": 3600.0,
        }
        settings.update(extra)
        cfg = DedupConfig(
            instance_id="dedup-a",
            production=ProductionConfig(Secret(production_db), connect_timeout_s=5.0),
            gatherers=(GathererSource("g1", Secret(gatherer_plain_db), connect_timeout_s=5.0),),
            **settings,  # type: ignore[arg-type]
        )
        sync = GathererSync(cfg, cfg.gatherers[0], leader, DedupMetrics("dedup-a"))
        made.append(sync)
        return sync

    yield make
    for sync in made:
        await sync.close()


async def _run(sync: GathererSync) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(sync.run(stop))


async def _stop(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Stop the loop: it must end at once (well within a poll interval or a breaker's reset)
    and leave no task of its own behind."""
    stop.set()
    await asyncio.wait_for(task, timeout=5.0)
    await _settle()
    assert _others() == set()


@pytest.mark.parametrize("seen_cache_rows", [0, 1000], ids=["whole", "seen-filter"])
async def test_a_round_merges_once_and_moves_the_cursor_in_the_same_transaction(
    make_sync: Factory, production_db: str, gatherer_plain_db: str, seen_cache_rows: int
) -> None:
    insert_trades(gatherer_plain_db, 0, 9)
    sync = make_sync(seen_cache_rows=seen_cache_rows)
    # Production refuses the cursor move: the rows go with it (one transaction).
    _run_sql(production_db, REFUSE_CURSOR_MOVE.format(sqlstate="P0001", message="'no cursor move'"))
    with pytest.raises(asyncpg.RaiseError):
        await sync._attempt()
    assert trade_ids(production_db) == []
    assert _cursor(production_db) == (0, 0, 0)
    _run_sql(production_db, "DROP TRIGGER kd_test_refuse ON sync_cursors")
    await sync.close()

    assert await sync._attempt() is True
    assert trade_ids(production_db) == expected_ids(0, 9)
    end = _last_row_cursor(gatherer_plain_db)
    assert _cursor(production_db) == (*end, 10)  # every row read once
    assert sync.status.tables["trades"].cursor == end
    assert sync.status.tables["trades"].backlog == 0
    # The next round finds nothing new: no merge, the cursor as it was.
    assert await sync._attempt() is False
    assert _cursor(production_db) == (*end, 10)
    assert trade_ids(production_db) == expected_ids(0, 9)


async def test_rows_of_an_open_transaction_are_not_passed(
    make_sync: Factory, production_db: str, gatherer_plain_db: str
) -> None:
    """A transaction still open may commit rows below any later cursor: the round stops below
    its xid (rows committed after it began wait too) and takes everything once it commits."""
    insert_trades(gatherer_plain_db, 0, 9)
    sync = make_sync()
    with psycopg.connect(gatherer_plain_db) as slow:
        slow.execute(TRADES_SQL.encode(), {"lo": 10, "hi": 19})
        row = slow.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert row is not None
        slow_xid = int(row[0])
        insert_trades(gatherer_plain_db, 20, 29)  # commits while the slow one is open
        assert await sync._attempt() is True
        assert trade_ids(production_db) == expected_ids(0, 9)
        assert sync.status.tables["trades"].cursor[0] < slow_xid
        assert _cursor(production_db)[0] < slow_xid
        assert await sync._attempt() is False  # still held back
        assert trade_ids(production_db) == expected_ids(0, 9)
        slow.commit()
    assert await sync._attempt() is True
    assert trade_ids(production_db) == expected_ids(0, 29)
    assert _cursor(production_db) == (*_last_row_cursor(gatherer_plain_db), 30)


async def test_a_gatherer_error_is_masked_and_opens_its_breaker(
    make_sync: Factory,
    gatherer_plain_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's error text holds the gatherer's DSN (with its password): it reaches neither
    the status nor a log line; the failures count against the gatherer's breaker, which opens;
    stop ends the loop while it waits for the breaker."""
    password = _password(gatherer_plain_db)
    _run_sql(
        gatherer_plain_db,
        FAIL_GATHERER.format(message=_literal(f"cannot reach {gatherer_plain_db}"))
        + f'ALTER DATABASE "{_dbname(gatherer_plain_db)}" SET search_path = public, pg_catalog',
    )
    sync = make_sync()
    caplog.set_level(logging.DEBUG)
    stop, task = await _run(sync)
    await _until("the breaker to open", lambda: sync.breaker.state is BreakerState.OPEN, task)
    await _stop(stop, task)
    assert sync.breaker.failures == 2
    assert sync.status.last_error == "gatherer: ConnectionFailureError"
    assert sync.status.up is False
    reg = sync.metrics.registry
    assert reg.get_sample_value("dedup_gatherer_up", {"gatherer": "g1"}) == 0
    assert reg.get_sample_value("dedup_breaker_state", {"dependency": "gatherer-g1"}) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("sync of g1 failed (gatherer: ConnectionFailureError)" in m for m in messages)
    assert not [m for m in messages if password in m]


async def test_a_production_error_is_not_the_gatherers(
    make_sync: Factory,
    production_db: str,
    gatherer_plain_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Production fails every merge (retryably, its text holding the password): the error is
    recorded as production's and counted there, the gatherer's breaker stays closed however
    often it happens, and the rows arrive once production accepts them."""
    password = _password(production_db)
    insert_trades(gatherer_plain_db, 0, 9)
    _run_sql(
        production_db,
        REFUSE_CURSOR_MOVE.format(
            sqlstate="40001", message=_literal(f"conflict on {production_db}")
        ),
    )
    sync = make_sync()
    reg = sync.metrics.registry

    def production_errors() -> float:
        got = reg.get_sample_value("dedup_production_errors_total", {"kind": "SerializationError"})
        return got or 0.0

    caplog.set_level(logging.DEBUG)
    stop, task = await _run(sync)
    try:
        # More failures than the breaker's threshold (2), or the breaker moved (a failure).
        await _until(
            "production failures",
            lambda: production_errors() >= 4 or sync.breaker.failures > 0,
            task,
        )
        assert sync.breaker.failures == 0
        assert sync.breaker.state is BreakerState.CLOSED
        assert sync.status.last_error == "production: SerializationError"
        assert sync.status.up is True
        assert trade_ids(production_db) == []
        _run_sql(production_db, "DROP TRIGGER kd_test_refuse ON sync_cursors")
        await _until("the rows", lambda: trade_ids(production_db) == expected_ids(0, 9), task)
    finally:
        await _stop(stop, task)
    assert reg.get_sample_value("dedup_breaker_state", {"dependency": "gatherer-g1"}) == 0
    assert not [m for r in caplog.records if password in (m := r.getMessage())]


async def test_notify_wakes_a_round_before_the_poll_interval(
    make_sync: Factory, production_db: str, gatherer_plain_db: str
) -> None:
    sync = make_sync(poll_interval_s=3600.0)
    stop, task = await _run(sync)
    try:
        # The first round (a full one) found nothing; the loop now waits up to an hour.
        await _until(
            "the first round", lambda: sync.status.tables["trades"].fresh_until is not None, task
        )
        insert_trades(gatherer_plain_db, 0, 9)  # its commit NOTIFYs kd_ingest
        await _until("the rows", lambda: trade_ids(production_db) == expected_ids(0, 9), task)
    finally:
        await _stop(stop, task)


async def test_stop_ends_an_idle_loop_at_once_and_leaves_no_task(make_sync: Factory) -> None:
    sync = make_sync(poll_interval_s=3600.0)
    stop, task = await _run(sync)
    await _until(
        "the first round", lambda: sync.status.tables["trades"].fresh_until is not None, task
    )
    await _settle()
    assert not task.done()  # waiting for the poll interval (or a wake-up)
    await _stop(stop, task)  # within 5 s of an hour's wait
    assert task.result() is None
