"""Start-up checks shared by every service and tool that reads or writes a gatherer database."""

from __future__ import annotations

import asyncpg

from kalshi_data.errors import PermanentError

#: (installed, preloaded) for any role: ``kd_timescale_status()`` is gatherer migration 0005.
STATUS_QUERY = "SELECT installed, preloaded FROM kd_timescale_status()"
#: The same before 0005 exists (a database being migrated). Where the extension is installed,
#: only a superuser may read the setting: anyone else gets an error rather than a guess.
STATUS_QUERY_UNMIGRATED = (
    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), "
    "CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') "
    "THEN current_setting('shared_preload_libraries') ~ '(^|[\\s,])\"?timescaledb\"?($|[\\s,])' "
    "ELSE true END"
)
HAS_STATUS_QUERY = "SELECT to_regprocedure('kd_timescale_status()') IS NOT NULL"


def not_preloaded_message(what: str) -> str:
    """Why ``what`` refuses a database whose timescaledb extension is not preloaded."""
    return (
        f"{what}: the timescaledb extension is installed in this database but not in the "
        "server's shared_preload_libraries; reads would silently miss compressed rows and "
        "inserts would vanish. Add shared_preload_libraries = 'timescaledb' to postgresql.conf "
        "and restart PostgreSQL (docs/timescaledb.md)."
    )


async def check_timescale_preload(conn: asyncpg.Connection, what: str) -> None:
    """Refuse to run against a database whose timescaledb extension is not preloaded.

    On a server started without ``shared_preload_libraries = 'timescaledb'``, a database that
    has the extension silently hides rows of compressed chunks and sends plain INSERTs into the
    hypertable's root table, where they later vanish (DESIGN.md §3a). The answer comes from
    ``kd_timescale_status()`` (migration 0005): the setting itself is superuser-only.

    Raises:
        PermanentError: installed but not preloaded (the message names the fix).
    """
    row = await conn.fetchrow(STATUS_QUERY)
    assert row is not None
    if row[0] and not row[1]:
        raise PermanentError(not_preloaded_message(what))
