"""``kalshi-data restore-gatherer``: rebuild a gatherer database's recent window from production.

The recovery path of the failure catalogue (seed 003, "Local Database Failure → Corruption:
recreate from production"): after a gatherer's disk is lost, create a fresh cluster, migrate it,
then copy the last ``--since`` of every time-series table (and the current metadata) back from
production, so that the gatherer again holds a complete recent copy. Rows are streamed as binary
COPY (both schemas share tables.py's column types) into a staging table and inserted with
``ON CONFLICT DO NOTHING``, so a rerun is harmless.

The deduplicator copes without help: the rebuilt cluster has a new system identifier, so its
cursors are reset and the restored rows are re-read and merged idempotently (nothing doubled).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta

import asyncpg

from kalshi_data.copypipe import CopyPipe
from kalshi_data.dbcheck import check_timescale_preload
from kalshi_data.errors import PermanentError, describe_error
from kalshi_data.tables import (
    EVENTS,
    LIFECYCLE_EVENTS,
    MARKETS,
    SERIES,
    TIMESERIES_TABLES,
    TableSpec,
)

RESTORED: tuple[TableSpec, ...] = (SERIES, EVENTS, MARKETS, *TIMESERIES_TABLES, LIFECYCLE_EVENTS)
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90m``, ``6h``, ``2d``, ``3600s`` → timedelta (ValueError naming the accepted forms)."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"bad duration {text!r}: use a number with s, m, h or d (e.g. 6h)")
    return timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


def _window_filter(spec: TableSpec) -> str:
    if spec.kind == "metadata":
        return "true"  # production keeps only the newest version: restore all of it
    col = "exchange_ts" if spec.partitioned else "received_at"
    return f"{col} >= $1"


def _pipe(prod: asyncpg.Connection, spec: TableSpec, since: datetime) -> CopyPipe:
    query = f"SELECT {', '.join(spec.column_names)} FROM {spec.name} WHERE {_window_filter(spec)}"
    args = [] if spec.kind == "metadata" else [since]
    return CopyPipe(prod, query, *args, name=f"restore-{spec.name}")


async def restore(
    production_dsn: str, gatherer_dsn: str, since: timedelta, *, now: datetime | None = None
) -> dict[str, int]:
    """Copy the window ``[now - since, …)`` into the gatherer; returns rows inserted per table.

    ``now`` defaults to the clock; tests and replays pass their own.
    """
    start = (now or datetime.now(UTC)) - since
    prod = await asyncpg.connect(production_dsn, timeout=10)
    gath = await asyncpg.connect(gatherer_dsn, timeout=10)
    inserted: dict[str, int] = {}
    try:
        # Into a hypertable on a server without the preload, the rows would vanish.
        await check_timescale_preload(gath, "gatherer database")
        await gath.execute("SELECT kd_ensure_partitions($1, 7)", max(2, since.days + 1))
        for spec in RESTORED:
            stage = f"kd_restore_{spec.name}"
            cols = ", ".join(spec.column_names)
            ddl = ", ".join(f"{c.name} {c.pgtype}" for c in spec.columns)
            pipe = _pipe(prod, spec, start)
            async with gath.transaction():
                await gath.execute(f"CREATE TEMP TABLE {stage} ({ddl}) ON COMMIT DROP")
                try:
                    await gath.copy_to_table(
                        stage,
                        source=pipe.chunks(),
                        format="binary",
                        columns=list(spec.column_names),
                    )
                finally:
                    await pipe.close()
                status = await gath.execute(
                    f"INSERT INTO {spec.name} ({cols}) SELECT {cols} FROM {stage} "
                    "ON CONFLICT DO NOTHING"
                )
            inserted[spec.name] = int(status.rsplit(" ", 1)[-1])
    finally:
        await prod.close()
        await gath.close()
    return inserted


def main(argv: list[str]) -> int:
    """``kalshi-data restore-gatherer --production-dsn DSN --gatherer-dsn DSN --since 6h``."""
    parser = argparse.ArgumentParser(prog="kalshi-data restore-gatherer", description=__doc__)
    parser.add_argument("--production-dsn", required=True, help="read access to production")
    parser.add_argument("--gatherer-dsn", required=True, help="the rebuilt, migrated gatherer DB")
    parser.add_argument("--since", required=True, help="window to restore, e.g. 6h or 2d")
    args = parser.parse_args(argv)
    try:
        window = parse_duration(args.since)
    except ValueError as exc:
        print(f"kalshi-data restore-gatherer: {describe_error(exc)}", file=sys.stderr)
        return 2
    try:
        counts = asyncio.run(restore(args.production_dsn, args.gatherer_dsn, window))
    except PermanentError as exc:
        print(f"kalshi-data restore-gatherer: {describe_error(exc)}", file=sys.stderr)
        return 2
    for table, n in counts.items():
        print(f"{table}: {n} rows restored")
    return 0
