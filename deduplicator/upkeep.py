"""Production partition upkeep, run by the deduplicator leader on a connection of its own.

Every ``interval_s`` (and at once on becoming leader) each time-series table gets one partition
per UTC day from ``now - days_back`` to ``now + days_ahead``, and every day found in the default
partition is repaired: its rows move into the day's new partition in bounded batches, which is
then attached. The steps and their lock levels are described in migration
``0007_partition_upkeep.sql``; each is a short transaction with ``lock_timeout`` set, so a step
that cannot get its lock fails fast, leaves nothing half done, and is retried on the next run.

While a day is being repaired, its rows already moved are readable only after the attach (the
new table is not yet a partition); the exporter skips such a day (kalshi_data/tools/export.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from deduplicator.metrics import DedupMetrics
from kalshi_data.resilience import ErrorClass, RetryPolicy, Supervisor, classify, retry
from kalshi_data.tables import TIMESERIES_TABLES, TableSpec

log = logging.getLogger("deduplicator.upkeep")

#: Blocks of the default partition swept per move transaction (8 KiB each: 2,048 = 16 MiB).
BATCH_BLOCKS = 2048
INTERVAL_S = 3600.0
DAYS_BACK = 2
DAYS_AHEAD = 7
LOCK_TIMEOUT_S = 2.0
#: A step that cannot get its lock: tried this many times with backoff 0.2 s .. 5 s.
STEP_RETRY = RetryPolicy(base_s=0.2, cap_s=5.0, max_attempts=5)
#: A failed upkeep run is tried again after Full-Jitter backoff, 1 s .. 60 s.
UPKEEP_BACKOFF_BASE_S = 1.0
UPKEEP_BACKOFF_CAP_S = 60.0


@dataclass
class UpkeepReport:
    """What one upkeep run did."""

    created: list[tuple[str, date]] = field(default_factory=list)
    repaired: list[tuple[str, date]] = field(default_factory=list)
    moved_rows: dict[str, int] = field(default_factory=dict)
    default_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def publish(metrics: DedupMetrics, report: UpkeepReport) -> None:
    """Set the upkeep gauges from a finished run."""
    for table, n in report.default_rows.items():
        metrics.partition_default_rows.labels(table).set(n)
    metrics.partition_upkeep_last_success.set(time.time())


def _lock_timeout_only(exc: BaseException) -> ErrorClass:
    # A step runs inside the upkeep's own connection: anything but a lock it could not get
    # (a lost connection included) ends this upkeep run, and the next run starts afresh.
    if isinstance(exc, asyncpg.exceptions.LockNotAvailableError):
        return ErrorClass.RETRYABLE
    return ErrorClass.PERMANENT


async def _step(conn: asyncpg.Connection, query: str, *args: object) -> object:
    """One upkeep statement; a lock it cannot get within the timeout is retried a few times."""
    return await retry(
        lambda: conn.fetchval(query, *args),
        policy=STEP_RETRY,
        name="partition upkeep step",
        classify_fn=_lock_timeout_only,
    )


async def ensure_day(
    conn: asyncpg.Connection, spec: TableSpec, day: date, *, batch_blocks: int = BATCH_BLOCKS
) -> int | None:
    """Make ``day`` a partition of ``spec``; returns rows moved out of the default, or None
    when the partition was already attached."""
    blocks = await _step(conn, "SELECT kd_part_begin($1, $2)", spec.name, day)
    assert isinstance(blocks, int)
    if blocks < 0:
        return None
    moved = 0
    if blocks > 0:
        for start in range(0, blocks, batch_blocks):
            n = await _step(
                conn, "SELECT kd_part_move($1, $2, $3, $4)", spec.name, day, start, batch_blocks
            )
            moved += int(n)  # type: ignore[call-overload]
        # Rows a concurrent update rewrote past the swept range (new versions go anywhere).
        n = await _step(conn, "SELECT kd_part_move($1, $2, 0, NULL)", spec.name, day)
        moved += int(n)  # type: ignore[call-overload]
    await _step(conn, "SELECT kd_part_seal($1, $2)", spec.name, day)
    await _step(conn, "SELECT kd_part_validate($1, $2)", spec.name, day)
    await _step(conn, "SELECT kd_part_attach($1, $2)", spec.name, day)
    return moved


async def run_upkeep(
    conn: asyncpg.Connection,
    *,
    now: datetime,
    days_back: int = DAYS_BACK,
    days_ahead: int = DAYS_AHEAD,
    tables: Sequence[TableSpec] = TIMESERIES_TABLES,
    batch_blocks: int = BATCH_BLOCKS,
) -> UpkeepReport:
    """One upkeep pass over ``tables`` (days relative to ``now``, a UTC datetime)."""
    started = time.perf_counter()
    await conn.execute(f"SET lock_timeout = '{int(LOCK_TIMEOUT_S * 1000)}ms'")
    today = now.astimezone(UTC).date()
    ahead = [today + timedelta(days=i) for i in range(-days_back, days_ahead + 1)]
    report = UpkeepReport()
    for spec in tables:
        busy = {
            r[0]: int(r[1])
            for r in await conn.fetch("SELECT * FROM kd_default_days($1)", spec.name)
        }
        # Repair before creating: an empty default makes every later attach instant.
        for day in sorted(busy) + [d for d in ahead if d not in busy]:
            moved = await ensure_day(conn, spec, day, batch_blocks=batch_blocks)
            if moved is None:
                continue
            if day in busy:
                report.repaired.append((spec.name, day))
                report.moved_rows[spec.name] = report.moved_rows.get(spec.name, 0) + moved
                log.info("repaired %s %s: %d rows moved out of the default", spec.name, day, moved)
            else:
                report.created.append((spec.name, day))
        left = await conn.fetch("SELECT * FROM kd_default_days($1)", spec.name)
        report.default_rows[spec.name] = sum(int(r[1]) for r in left)
    report.seconds = time.perf_counter() - started
    return report


async def _upkeep_once(dsn: str, connect_timeout_s: float) -> UpkeepReport:
    conn = await asyncpg.connect(
        dsn,
        timeout=connect_timeout_s,
        server_settings={"application_name": "kalshi-dedup-upkeep", "jit": "off"},
    )
    try:
        return await run_upkeep(conn, now=datetime.now(UTC))
    finally:
        await conn.close()


def _upkeep_failed(exc: BaseException, _verdict: ErrorClass, _delay: float) -> None:
    if classify(exc) is ErrorClass.PERMANENT:
        log.error("partition upkeep failed: %s", type(exc).__name__)
    else:
        log.warning("partition upkeep failed (%s); retrying", type(exc).__name__)


async def run_periodic(
    dsn: str,
    metrics: DedupMetrics,
    stop: asyncio.Event,
    *,
    interval_s: float = INTERVAL_S,
    connect_timeout_s: float = 5.0,
) -> None:
    """Upkeep every ``interval_s`` until ``stop`` (or cancellation at step-down).

    A failed run, whatever the cause, is retried with backoff (never later than ``interval_s``):
    a permanent fault is logged as an error and tried again, since the service goes on.
    """
    sup = Supervisor(
        "partition upkeep",
        policy=RetryPolicy(
            min(UPKEEP_BACKOFF_BASE_S, interval_s), min(UPKEEP_BACKOFF_CAP_S, interval_s)
        ),
        stop=stop,
        classify_fn=lambda _exc: ErrorClass.RETRYABLE,
        on_failure=_upkeep_failed,
    )
    while not stop.is_set():
        report = await sup.run(lambda: _upkeep_once(dsn, connect_timeout_s))
        if report is None:
            return
        publish(metrics, report)
        log.info(
            "partition upkeep: %d created, %d repaired, default rows %s, %.2f s",
            len(report.created),
            len(report.repaired),
            report.default_rows,
            report.seconds,
        )
        await sup.sleep(interval_s)
