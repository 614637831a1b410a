"""``kalshi-data retention``: drop old gatherer partitions, but only those fully synced.

TimescaleDB's retention policy would drop chunks by age alone and could delete rows the
deduplicator has not read yet (reliability-notes G6), so the gatherer schema has none. This job
drops a partition (native) or chunk (hypertable) older than ``--keep`` only when no row in it is
above the production cursor of that gatherer and table, and only when the cursor belongs to this
very cluster (same system identifier): a cursor of another cluster proves nothing.

Each candidate is locked (ACCESS EXCLUSIVE, which DROP takes anyway) before its rows are checked,
in the transaction that drops it, so no row can reach it between the check and the drop. A
compressed TimescaleDB chunk is read through TimescaleDB (the check skips its batches below the
cursor by their metadata); a server that does not preload the extension would show it empty, so
such a database is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from kalshi_data.config import resolve_secret
from kalshi_data.dbcheck import check_timescale_preload
from kalshi_data.errors import ConfigError, KalshiDataError, PermanentError, describe_error
from kalshi_data.tables import TIMESERIES_TABLES
from kalshi_data.tools.restore import parse_duration


@dataclass(frozen=True, slots=True)
class Decision:
    """What retention did (or would do) with one partition."""

    table: str
    partition: str
    action: str  # "dropped", "kept: unsynced rows", "kept: newer than the bound", "would drop"


class RetentionError(KalshiDataError, RuntimeError):
    """Retention refuses to drop anything: no sync cursor, or a cursor of another cluster."""


async def _cursor(prod: asyncpg.Connection, gatherer_id: str, table: str) -> tuple[int, int, str]:
    row = await prod.fetchrow(
        "SELECT last_xid::text::bigint, last_id, system_identifier FROM sync_cursors "
        "WHERE gatherer_id = $1 AND table_name = $2",
        gatherer_id,
        table,
    )
    if row is None or row[2] is None:
        raise RetentionError(
            f"no cursor for gatherer {gatherer_id} table {table}: nothing is synced"
        )
    return int(row[0]), int(row[1]), str(row[2])


async def _old_partitions(gath: asyncpg.Connection, table: str, before: datetime) -> list[str]:
    """Partitions (native) or chunks (TimescaleDB) entirely older than ``before``."""
    timescale = await gath.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
    )
    if timescale:
        rows = await gath.fetch(
            "SELECT c::text FROM show_chunks($1::regclass, older_than => $2::timestamptz) AS c",
            table,
            before,
        )
        return [str(r[0]) for r in rows]
    rows = await gath.fetch(
        "SELECT c.oid::regclass::text, "
        "(regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1] "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        table,
    )
    out = []
    for name, upper in rows:
        if upper is None:  # the default partition: never dropped whole
            continue
        if datetime.fromisoformat(str(upper)).astimezone(UTC) <= before:
            out.append(str(name))
    return out


async def run_retention(
    gatherer_dsn: str,
    production_dsn: str,
    gatherer_id: str,
    keep: timedelta,
    *,
    dry_run: bool,
    now: datetime | None = None,
) -> list[Decision]:
    """Drop fully synced partitions older than ``now - keep``; one decision per candidate.

    ``now`` defaults to the clock; tests pass their own so that the day is computed once.
    """
    before = (now or datetime.now(UTC)) - keep
    gath = await asyncpg.connect(gatherer_dsn, timeout=10)
    prod = await asyncpg.connect(production_dsn, timeout=10)
    decisions: list[Decision] = []
    try:
        await check_timescale_preload(gath, "gatherer database")
        sysid = str(await gath.fetchval("SELECT system_identifier::text FROM pg_control_system()"))
        for spec in TIMESERIES_TABLES:
            last_xid, last_id, cursor_sysid = await _cursor(prod, gatherer_id, spec.name)
            if cursor_sysid != sysid:
                raise RetentionError(
                    f"cursor of {gatherer_id}/{spec.name} belongs to cluster {cursor_sysid}, "
                    f"this database is {sysid}: refusing to drop anything"
                )
            for part in await _old_partitions(gath, spec.name, before):
                # kd_retention_drop (gatherer migration 0008) re-checks the bound and the
                # cursor under a lock and drops; the caller needs no table privilege at all.
                action = await gath.fetchval(
                    "SELECT kd_retention_drop($1::regclass, $2, $3::text::xid8, $4, $5)",
                    part,
                    before,
                    str(last_xid),
                    last_id,
                    dry_run,
                )
                decisions.append(Decision(spec.name, part, str(action)))
    finally:
        await gath.close()
        await prod.close()
    return decisions


def main(argv: list[str]) -> int:
    """``kalshi-data retention --gatherer-dsn D --production-dsn D --gatherer-id g1 --keep 7d``."""
    parser = argparse.ArgumentParser(prog="kalshi-data retention", description=__doc__)
    parser.add_argument(
        "--gatherer-dsn",
        required=True,
        help="a member of kd_retention (create-user --role retention); file:/path reads the DSN "
        "from that file, so no password is on the command line",
    )
    parser.add_argument(
        "--production-dsn",
        required=True,
        help="read access to sync_cursors (file:/path as for --gatherer-dsn)",
    )
    parser.add_argument("--gatherer-id", required=True)
    parser.add_argument("--keep", default="7d", help="keep at least this much (default 7d)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        keep = parse_duration(args.keep)
        gatherer_dsn = resolve_secret(args.gatherer_dsn, "--gatherer-dsn")
        production_dsn = resolve_secret(args.production_dsn, "--production-dsn")
        decisions = asyncio.run(
            run_retention(
                gatherer_dsn,
                production_dsn,
                args.gatherer_id,
                keep,
                dry_run=args.dry_run,
            )
        )
    except (ValueError, RuntimeError, ConfigError, PermanentError, asyncpg.PostgresError) as exc:
        print(f"kalshi-data retention: {describe_error(exc)}", file=sys.stderr)
        return 2
    for d in decisions:
        print(f"{d.table} {d.partition}: {d.action}")
    return 0
