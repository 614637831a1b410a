"""``kalshi-data create-user``: login users that are members of the project's group roles.

The migrations create the group roles (NOLOGIN) and their grants; this command adds a LOGIN user
to one of them. Role-level settings are not inherited through membership, so the read-only
default of the deduplicator's reader is set on the login user itself.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from kalshi_data.errors import KalshiDataError

#: Public role names (the CLI's choices) -> group role in the database.
ROLES: dict[str, str] = {
    "gatherer_writer": "kd_gatherer_writer",
    "dedup_reader": "kd_dedup_reader",
    "dedup_writer": "kd_dedup_writer",
    "exporter": "kd_exporter",
    "analyst": "kd_analyst",
    "auditor": "kd_auditor",
    "retention": "kd_retention",
}
_READ_ONLY = {"dedup_reader", "analyst"}


class UserError(KalshiDataError, RuntimeError):
    """The user cannot be created (unknown role, role missing in this database)."""


def create_user(dsn: str, role: str, user: str, password: str) -> None:
    """Create (or update the password and membership of) ``user`` as a member of ``role``."""
    group = ROLES.get(role)
    if group is None:
        raise UserError(f"unknown role {role!r}: expected one of {', '.join(sorted(ROLES))}")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (group,)).fetchone()
        if exists is None:
            raise UserError(
                f"group role {group} does not exist here: run `kalshi-data migrate` first"
            )
        present = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
        verb = "ALTER" if present else "CREATE"
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL(verb), sql.Identifier(user), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(user)))
        if role in _READ_ONLY:
            conn.execute(
                sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                    sql.Identifier(user)
                )
            )


def read_password_file(path: Path) -> str:
    """The password from a file (first line, stripped); never from the command line."""
    text = path.read_text().splitlines()
    if not text or not text[0].strip():
        raise UserError(f"password file {path} is empty")
    return text[0].strip()
