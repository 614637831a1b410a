"""Start-up checks shared by every service that reads or writes a gatherer database."""

from __future__ import annotations

import asyncpg

from kalshi_data.errors import PermanentError


async def check_timescale_preload(conn: asyncpg.Connection, what: str) -> None:
    """Refuse to run against a database whose timescaledb extension is not preloaded.

    On a server started without ``shared_preload_libraries = 'timescaledb'``, a database that
    has the extension silently hides rows of compressed chunks and sends plain INSERTs into the
    hypertable's root table, where they later vanish (DESIGN.md §3a). The answer comes from
    ``kd_timescale_status()`` (migration 0005): the setting itself is superuser-only.
    """
    row = await conn.fetchrow("SELECT installed, preloaded FROM kd_timescale_status()")
    assert row is not None
    if row["installed"] and not row["preloaded"]:
        raise PermanentError(
            f"{what}: the timescaledb extension is installed but not in "
            "shared_preload_libraries; reads would silently miss compressed rows. Add it to "
            "postgresql.conf and restart PostgreSQL."
        )
