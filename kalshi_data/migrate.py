"""Numbered SQL migrations with checksums, applied under an advisory lock.

``kalshi-data migrate gatherer|production --dsn DSN`` applies the package's
``kalshi_data/migrations/<target>/NNNN_*.sql`` in order. Each file runs in its own
transaction together with its ``schema_migrations`` row, so a file is either fully applied or
not at all. A session advisory lock serialises concurrent
runs (the second waits, then finds nothing to do). A file whose checksum differs from the one
recorded when it was applied stops the run: applied migrations are history, never edited.

The one exception is explicit: :data:`ACCEPTED_CHECKSUMS` names, per target and version, earlier
contents of a file that was changed on purpose (each with the reason and the migration that
brings such databases to the same schema). A database that recorded one of those checksums
migrates on; any other difference is still refused.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import psycopg

from kalshi_data.dbcheck import (
    HAS_STATUS_QUERY,
    STATUS_QUERY,
    STATUS_QUERY_UNMIGRATED,
    not_preloaded_message,
)
from kalshi_data.errors import KalshiDataError

Target = Literal["gatherer", "production"]
TARGETS: tuple[Target, ...] = ("gatherer", "production")
#: pg_advisory_lock key: hashtext('kalshi_data.migrate') computed once, fixed forever.
LOCK_KEY = 0x6B64_6D69  # "kdmi"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

#: (target, version) -> {sha256 of an earlier content of that file: why it changed}. A database
#: that applied one of these versions is not "edited history": the later migration named in the
#: reason converges it with databases that applied the current file.
ACCEPTED_CHECKSUMS: dict[tuple[str, str], dict[str, str]] = {
    ("gatherer", "0004"): {
        "327eeb9a7bac18e0f19ca93bf86e2e862bbbe886028b36fcf500f26f190c3d91": (
            "granted the writer column-level SELECT on identity columns, which fails on "
            "TimescaleDB hypertables with compression enabled and is not needed by a bare "
            "ON CONFLICT DO NOTHING; gatherer 0007 revokes those grants"
        ),
    },
}


class MigrationError(KalshiDataError, RuntimeError):
    """A migration cannot be applied (edited file, wrong target, bad SQL)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """Where the SQL files live: the env override, else the package's own ``migrations`` data.

    The files ship inside the package (wheel or checkout alike) and are found with
    ``importlib.resources``, so an installed wheel migrates exactly like the source tree.
    """
    env = os.environ.get("KALSHI_DATA_MIGRATIONS_DIR")
    if env:
        return Path(env)
    root = resources.files("kalshi_data") / "migrations"
    # A wheel installs as plain files: the Traversable is a real directory on disk.
    return Path(str(root))


def load(target: Target, base: Path | None = None) -> list[Migration]:
    """The target's migrations in version order."""
    folder = (base or migrations_dir()) / target
    if not folder.is_dir():
        raise MigrationError(f"no migrations folder for {target!r} at {folder}")
    out: list[Migration] = []
    for path in sorted(folder.iterdir()):
        m = _NAME.match(path.name)
        if m is None:
            continue
        out.append(Migration(m.group(1), path.name, path.read_text()))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {folder}")
    return out


_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY,
    name text NOT NULL,
    target text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _check_preload(conn: psycopg.Connection[tuple[object, ...]], target: Target) -> None:
    """Refuse a database whose timescaledb extension the server does not preload: DDL on its
    hypertables would run without TimescaleDB's hooks (DESIGN.md §3a)."""
    has_status = conn.execute(HAS_STATUS_QUERY).fetchone()
    row = conn.execute(
        STATUS_QUERY if has_status and has_status[0] else STATUS_QUERY_UNMIGRATED
    ).fetchone()
    if row is not None and row[0] and not row[1]:
        raise MigrationError(not_preloaded_message(f"migrate {target}"))


def migrate(dsn: str, target: Target, *, base: Path | None = None) -> list[str]:
    """Apply pending migrations of ``target``; return the names applied (empty when current).

    Raises:
        MigrationError: an applied file was edited, the database belongs to the other target,
            its timescaledb extension is installed but not preloaded, or a file failed (its
            transaction is rolled back; earlier files stay applied).
    """
    if target not in TARGETS:
        raise MigrationError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    wanted = load(target, base)
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            _check_preload(conn, target)
            conn.execute(_BOOTSTRAP)
            rows = conn.execute(
                "SELECT version, name, target, checksum FROM schema_migrations"
            ).fetchall()
            done = {r[0]: r for r in rows}
            other = {r[2] for r in rows} - {target}
            if other:
                raise MigrationError(
                    f"this database holds {sorted(other)[0]} migrations; refusing to apply "
                    f"{target} migrations to it"
                )
            for mig in wanted:
                prior = done.get(mig.version)
                if prior is not None:
                    accepted = ACCEPTED_CHECKSUMS.get((target, mig.version), {})
                    if prior[3] != mig.checksum and prior[3] not in accepted:
                        raise MigrationError(
                            f"migration {mig.name} was edited after it was applied "
                            f"(recorded sha256 {prior[3][:12]}…, file {mig.checksum[:12]}…); "
                            "add a new numbered migration instead"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(mig.sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, target, checksum) "
                            "VALUES (%s, %s, %s, %s)",
                            (mig.version, mig.name, target, mig.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {mig.name} failed: {exc}") from exc
                applied_now.append(mig.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now
