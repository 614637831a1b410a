"""restore-gatherer: a rebuilt gatherer database gets production's recent window back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from kalshi_data.migrate import migrate
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.restore import parse_duration, restore


def test_parse_duration() -> None:
    """Durations take s/m/h/d suffixes; anything else is refused with the accepted forms."""
    assert parse_duration("6h") == timedelta(hours=6)
    assert parse_duration("2d") == timedelta(days=2)
    with pytest.raises(ValueError, match="s, m, h or d"):
        parse_duration("6 hours")


@pytest.mark.both_backends
async def test_restore_copies_the_recent_window_once(
    gatherer_shared_pg: PgCluster, gatherer_backend: str
) -> None:
    """Rows inside the window are restored once; older rows are not; a rerun adds nothing (on
    TimescaleDB, into chunks compressed in between)."""
    shared_pg = gatherer_shared_pg
    prod = shared_pg.create_database("restore_prod")
    gath = shared_pg.create_database("restore_gath")
    now = datetime.now(UTC)  # the rows and the window derive from this one reading
    try:
        migrate(prod, "production")
        migrate(gath, "gatherer")
        with psycopg.connect(prod, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, "
                "is_block_trade, suspect, received_at, gatherer_id) SELECT md5('r' || i)::uuid, "
                "'MKT-1', %s::timestamptz - i * interval '1 minute', 4200, 5800, 100, false, "
                "false, now(), 'g1' FROM generate_series(0, 599) AS i",
                (now,),
            )
            conn.execute(
                "INSERT INTO markets (ticker, event_ticker, status, updated_time, data, "
                "content_hash, received_at, gatherer_id) VALUES "
                "('MKT-1', 'EV-1', 'active', now(), '{}', 7, now(), 'g1')"
            )
        counts = await restore(prod, gath, timedelta(hours=5), now=now)
        assert counts["trades"] == 301  # minutes 0..300 of the 600: the window includes its start
        assert counts["markets"] == 1
        if gatherer_backend == "timescaledb":
            with psycopg.connect(gath, autocommit=True) as conn:
                done = conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('trades') c")
                assert done.fetchone() != (0,)
        again = await restore(prod, gath, timedelta(hours=5), now=now)
        assert again["trades"] == 0
        with psycopg.connect(gath) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT trade_id), min(ingest_id) > 0 FROM trades"
            ).fetchone()
        assert row == (301, 301, True)
    finally:
        shared_pg.execute('DROP DATABASE "restore_prod" WITH (FORCE)')
        shared_pg.execute('DROP DATABASE "restore_gath" WITH (FORCE)')
