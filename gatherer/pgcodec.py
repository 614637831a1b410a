"""How the writer's rows meet PostgreSQL: codecs, staging-table SQL, dead-letter rendering.

Rows are tuples in :mod:`kalshi_data.tables` column order with times as integer microseconds since
the Unix epoch. asyncpg's ``tuple`` codec format for ``timestamptz`` is the wire value itself,
microseconds since 2000-01-01 UTC (PostgreSQL's epoch), so a row's times go onto the binary COPY
stream with one subtraction each and no ``datetime`` is ever built.

Everything here is pure (string building, arithmetic) except :func:`register_codecs`, which
installs the codec on one connection.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson

from kalshi_data.tables import TableSpec

#: Microseconds between 1970-01-01 and 2000-01-01 UTC (PostgreSQL's timestamp epoch).
PG_EPOCH_OFFSET_US = 946_684_800_000_000
#: Prefix of the per-session TEMP tables the staging path copies into.
STAGE_PREFIX = "kd_stage_"


def encode_timestamptz(us: int) -> tuple[int]:
    """Unix microseconds -> asyncpg's tuple form (microseconds since 2000-01-01 UTC)."""
    return (us - PG_EPOCH_OFFSET_US,)


def decode_timestamptz(value: tuple[int]) -> int:
    """asyncpg's tuple form -> Unix microseconds (exact inverse of :func:`encode_timestamptz`)."""
    return value[0] + PG_EPOCH_OFFSET_US


async def register_codecs(conn: Any) -> None:
    """Make ``conn`` (an asyncpg connection) take and return ``timestamptz`` as Unix µs ints."""
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=encode_timestamptz,
        decoder=decode_timestamptz,
        format="tuple",
    )


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (table specs are fixed, but ``count`` is a keyword)."""
    return '"' + name.replace('"', '""') + '"'


def stage_name(spec: TableSpec) -> str:
    """The TEMP staging table for ``spec``."""
    return STAGE_PREFIX + spec.name


def stage_ddl(spec: TableSpec) -> str:
    """CREATE a session TEMP table with the data columns of ``spec`` (no constraints).

    Built from the table contract rather than ``LIKE``: the writer role may not read the target's
    data columns. ``ON COMMIT DELETE ROWS`` empties it at every commit; a rollback empties it too.
    """
    cols = ", ".join(f"{quote_ident(c.name)} {c.pgtype}" for c in spec.columns)
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {quote_ident(stage_name(spec))} ({cols}) "
        "ON COMMIT DELETE ROWS"
    )


def insert_from_stage_sql(spec: TableSpec) -> str:
    """Move the staged rows into the real table, skipping rows whose identity already exists."""
    cols = ", ".join(quote_ident(c) for c in spec.column_names)
    return (
        f"INSERT INTO {quote_ident(spec.name)} ({cols}) SELECT {cols} "
        f"FROM {quote_ident(stage_name(spec))} ON CONFLICT DO NOTHING"
    )


def inserted_count(status: str) -> int:
    """Rows inserted, from a command tag such as ``INSERT 0 42``."""
    parts = status.split()
    if len(parts) == 3 and parts[0] == "INSERT" and parts[2].isdigit():
        return int(parts[2])
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):  # a subclass (asyncpg's C UUID); orjson takes only the base
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (set, frozenset)):
        return sorted(repr(v) for v in value)
    return repr(value)


def render_raw(table: str, row: tuple[Any, ...]) -> bytes:
    """A JSON rendering of a rejected row for ``dead_letters.raw`` (never raises)."""
    doc = {"table": table, "row": list(row)}
    try:
        return orjson.dumps(doc, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        # e.g. an int beyond 64 bits: orjson refuses it, repr never does.
        return orjson.dumps({"table": table, "row_repr": repr(row)})


def error_reason(exc: BaseException) -> str:
    """``dead_letters.reason`` for a row PostgreSQL (or the encoder) refused.

    SQLSTATE plus the constraint name when the server names one (``23514 trades_yes_price_check``);
    otherwise SQLSTATE plus the message, or the client-side exception type and message.
    """
    sqlstate = getattr(exc, "sqlstate", None)
    constraint = getattr(exc, "constraint_name", None)
    if isinstance(sqlstate, str) and sqlstate:
        detail = constraint if isinstance(constraint, str) and constraint else str(exc)
        return f"{sqlstate} {detail}"[:500]
    return f"encode {type(exc).__name__}: {exc}"[:500]
