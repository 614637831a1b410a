"""Retention as the least-privilege kd_retention role, on plain PostgreSQL and on TimescaleDB.

The deduplicator host runs `kalshi-data retention` as a member of kd_retention (gatherer
migration 0008). It may drop old, fully synced partitions or chunks through kd_retention_drop and
nothing else; the job stays gated on the production cursor. Every case ends comparing what is
left in the gatherer with what was written, row for row.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from kalshi_data.migrate import MigrationError, migrate
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.retention import run_retention
from kalshi_data.tools.users import create_user

INSERT = (
    "INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, "
    "is_block_trade, suspect, received_at) SELECT gen_random_uuid(), 'MKT', "
    "%(day)s::timestamptz + i * interval '1 s', 1, 1, 1, false, false, "
    "now() FROM generate_series(1, 10) AS i RETURNING trade_id::text"
)
TABLES = ("trades", "orderbook_deltas", "orderbook_snapshots", "tickers")


def _timescale_available() -> bool:
    from kalshi_data.testing.pgcluster import find_bindir

    try:
        bindir = find_bindir()
    except Exception:
        return False
    share = subprocess.run(
        [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return bool(share) and Path(share, "extension", "timescaledb.control").is_file()


BACKENDS = [
    "postgres",
    pytest.param(
        "timescaledb",
        marks=pytest.mark.skipif(
            not _timescale_available(),
            reason="TimescaleDB variant skipped: the timescaledb extension is not installed "
            "in this PostgreSQL",
        ),
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, pg_template: PgCluster
) -> Iterator[tuple[str, PgCluster]]:
    """A started cluster: a copy of the template, or a TimescaleDB-preloaded one of its own."""
    base = Path(tempfile.mkdtemp(prefix="kd-ret-"))
    cluster = PgCluster(base)
    if request.param == "timescaledb":
        cluster.init({"shared_preload_libraries": "'timescaledb'"})
    else:
        cluster.clone_from(pg_template)
    cluster.start()
    yield request.param, cluster
    cluster.destroy()


def _midnight(now: datetime, days_ago: int) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=days_ago)


async def test_retention_role_drops_only_synced_old_partitions(
    backend: tuple[str, PgCluster],
) -> None:
    """kd_retention drops an old synced partition/chunk, keeps an unsynced one, and can do
    nothing else: no read, no delete, no drop of a table, a default or a recent partition."""
    name, cluster = backend
    gath = cluster.create_database("gath")
    prod = cluster.create_database("prod")
    now = datetime.now(UTC)
    try:
        migrate(gath, "gatherer")
    except MigrationError as exc:
        if name == "timescaledb" and "_compressed_hypertable" in str(exc):
            pytest.xfail(f"gatherer migrations fail on TimescaleDB until issue 10's fix: {exc}")
        raise
    migrate(prod, "production")
    password = secrets.token_urlsafe(16)
    create_user(gath, "retention", "kalshi_retention", password)
    ret_dsn = cluster.dsn("gath", user="kalshi_retention", password=password)
    with psycopg.connect(gath, autocommit=True) as conn:
        timescale = conn.execute("SELECT kd_timescale_enabled()").fetchone() == (True,)
        assert timescale == (name == "timescaledb")
        if not timescale:
            conn.execute("SELECT kd_ensure_partitions(20, 2)")
        synced = {r[0] for r in conn.execute(INSERT, {"day": _midnight(now, 10)}).fetchall()}
        cursor = conn.execute("SELECT max(ingest_xid)::text, max(ingest_id) FROM trades").fetchone()
        unsynced = {r[0] for r in conn.execute(INSERT, {"day": _midnight(now, 9)}).fetchall()}
        recent = {r[0] for r in conn.execute(INSERT, {"day": now - timedelta(hours=2)}).fetchall()}
        if timescale:  # the synced chunk is compressed, as it would be past compress_after
            conn.execute(
                "SELECT compress_chunk(c) FROM show_chunks('trades', older_than => %s) AS c",
                (_midnight(now, 9),),
            )
        sysid = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert cursor is not None
    assert sysid is not None
    with psycopg.connect(prod, autocommit=True) as conn:
        for t in TABLES:
            xid, iid = (cursor[0], cursor[1]) if t == "trades" else ("0", 0)
            conn.execute(
                "INSERT INTO sync_cursors (gatherer_id, table_name, system_identifier, "
                "last_xid, last_id) VALUES ('g1', %s, %s, %s::xid8, %s)",
                (t, sysid[0], xid, iid),
            )

    # What the role cannot do.
    with psycopg.connect(ret_dsn, autocommit=True) as conn:
        part = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'trades'::regclass ORDER BY 1 LIMIT 1"
        ).fetchone()
        assert part is not None
        for statement in (
            "SELECT count(*) FROM trades",
            "DELETE FROM trades",
            "TRUNCATE trades",
            f"DROP TABLE {part[0]}",
            "DROP TABLE markets",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        bound = now - timedelta(days=5)
        for target, before, match in (
            ("markets", bound, "not a partition"),
            ("trades", bound, "not a partition"),
            ("trades_default" if not timescale else "markets", bound, "default|not a partition"),
            (part[0], now - timedelta(hours=1), "less than one day"),
        ):
            with pytest.raises(psycopg.errors.RaiseException, match=match):
                conn.execute(
                    "SELECT kd_retention_drop(%s::regclass, %s, '0'::xid8, 0)", (target, before)
                )

    # The job itself, as the role: dry run, then for real.
    dry = await run_retention(ret_dsn, prod, "g1", timedelta(days=5), dry_run=True, now=now)
    actions = sorted(d.action for d in dry if d.table == "trades")
    assert "would drop" in actions, actions
    assert "kept: unsynced rows" in actions, actions
    done = await run_retention(ret_dsn, prod, "g1", timedelta(days=5), dry_run=False, now=now)
    assert [d.action for d in done if d.table == "trades"].count("dropped") >= 1

    # Ground truth: exactly the unsynced and the recent rows remain, row for row.
    with psycopg.connect(gath) as conn:
        left = {r[0] for r in conn.execute("SELECT trade_id::text FROM trades").fetchall()}
    assert left == unsynced | recent
    assert not left & synced


def test_retention_cli_reads_dsns_from_files(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """`kalshi-data retention --gatherer-dsn file:...`: no password on the command line; a
    foreign cursor still refuses (exit 2, the reason on stderr, no DSN echoed)."""
    gath = pg_cluster.create_database("gath")
    prod = pg_cluster.create_database("prod")
    migrate(gath, "gatherer")
    migrate(prod, "production")
    password = secrets.token_urlsafe(16)
    create_user(gath, "retention", "kalshi_retention", password)
    with psycopg.connect(prod, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sync_cursors (gatherer_id, table_name, system_identifier) "
            "SELECT 'g1', t, '1' FROM unnest(%s::text[]) AS t",
            (list(TABLES),),
        )
    gfile = tmp_path / "gatherer-dsn"
    gfile.write_text(pg_cluster.dsn("gath", user="kalshi_retention", password=password) + "\n")
    pfile = tmp_path / "production-dsn"
    pfile.write_text(prod)
    cmd = [sys.executable, "-m", "kalshi_data.cli", "retention", "--gatherer-id", "g1"]
    result = subprocess.run(
        [*cmd, "--gatherer-dsn", f"file:{gfile}", "--production-dsn", f"file:{pfile}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to drop" in result.stderr
    assert password not in result.stderr + result.stdout
    missing = subprocess.run(
        [*cmd, "--gatherer-dsn", f"file:{tmp_path}/nope", "--production-dsn", f"file:{pfile}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert "--gatherer-dsn" in missing.stderr
