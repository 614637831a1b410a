"""SQL text for reading gatherer batches and merging them into production, built from tables.py.

Pure functions of a :class:`~kalshi_data.tables.TableSpec`: no I/O, unit-tested on their own.

Reading (DESIGN §4.1, reliability-notes §1.1). A batch is the rows whose poll cursor
``(ingest_xid, ingest_id)`` is above the stored cursor and whose ``ingest_xid`` is below a horizon
``H = pg_snapshot_xmin(pg_current_snapshot())`` taken *before* the rows are read. Every
transaction with an xid below H had finished when H was taken, so the set of rows below H never
grows afterwards: reading it in a later statement cannot miss a row, and the cursor can move to
the last row read. (The order matters: a horizon taken after reading could admit a transaction
that committed in between, whose rows the read did not see — Marten 9.16.1's bug.)

Merging (DESIGN §4.2). Rows are COPYed into a temporary staging table and inserted with
``ON CONFLICT`` on the table's identity, so a batch replayed after a crash or an unknown COMMIT
outcome changes nothing. Suspect rows (received between a sequence gap and the resync) are
inserted when nobody else has the row, and a clean copy from another gatherer clears the flag:
suspect rows are used only where no clean gatherer covers them.
"""

from __future__ import annotations

from kalshi_data.tables import TableSpec

#: Cursor columns as bigint (xid8 is 64-bit and never wraps; asyncpg has no xid8 codec).
CURSOR_SELECT = "ingest_xid::text::bigint, ingest_id"


#: The cursor bounds repeated on ``ingest_xid`` alone (the row comparisons imply them). On a
#: TimescaleDB hypertable a compressed chunk has no b-tree index; a bound on a plain column is
#: tested against each compressed batch's min/max metadata (the chunks are ordered by the
#: cursor, gatherer migration 0007), so batches outside the range are skipped, not decompressed.
#: A row comparison cannot be. On plain tables the index condition simply carries both.
XID_AFTER = " AND ingest_xid >= $1::text::xid8"
XID_UPTO = " AND ingest_xid <= $3::text::xid8"


def horizon_query() -> str:
    """One statement: the xid below which every transaction has completed."""
    return "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


_WIDE_TYPES = ("jsonb", "bytea", "[]")


def is_wide(spec: TableSpec) -> bool:
    """True when a row's size is unbounded (jsonb, bytea, arrays): batches then count bytes."""
    return any(t in c.pgtype for c in spec.columns for t in _WIDE_TYPES)


def batch_end_query(spec: TableSpec) -> str:
    """The cursor of the last row of the next batch, and the batch's row count.

    Parameters: ``$1,$2`` current cursor, ``$3`` horizon, ``$4`` max rows, ``$5`` max bytes.
    Returns no row when nothing is pending below the horizon. Narrow tables (fixed-width rows)
    are bounded by rows, which bounds bytes too, and use an index-only scan; wide tables add a
    running sum of row sizes so one batch never exceeds ``$5`` bytes (at least one row).
    """
    pending = (
        f"FROM {spec.name} t WHERE (ingest_xid, ingest_id) > ($1::text::xid8, $2::bigint)"
        f"{XID_AFTER} AND ingest_xid < $3::text::xid8 ORDER BY ingest_xid, ingest_id "
        "LIMIT $4::bigint"
    )
    # Fixed-width rows: the size column is constant, so $5 is referenced but the row bound
    # (and an index-only scan) decides; both shapes take the same parameters.
    size = "pg_column_size(t.*)" if is_wide(spec) else "0"
    # The window orders by the same columns as the LIMITed scan, so no second sort.
    return (
        "SELECT xid, id, n FROM (SELECT ingest_xid::text::bigint AS xid, ingest_id AS id, "
        "row_number() OVER w AS n, sum(size) OVER w AS bytes FROM (SELECT ingest_xid, "
        f"ingest_id, {size} AS size {pending}) p "
        "WINDOW w AS (ORDER BY ingest_xid, ingest_id)) s "
        "WHERE bytes <= $5::bigint OR n = 1 ORDER BY n DESC LIMIT 1"
    )


def copy_out_query(spec: TableSpec, *, only_ids: bool = False, gatherer: bool = False) -> str:
    """The data columns of the rows in ``($1,$2) < cursor <= ($3,$4)``, for binary COPY out;
    with ``only_ids``, just the rows whose ``ingest_id`` is in ``$5``; with ``gatherer``, one
    more column, the gatherer id (the next parameter), for a COPY straight into production.

    Every row in that range is below the horizon (the end cursor was found below it), so the
    range is closed and stable.
    """
    cols = ", ".join(spec.column_names)
    n = 5
    ids = ""
    if only_ids:
        ids, n = f" AND ingest_id = ANY(${n}::bigint[])", n + 1
    extra = f", ${n}::text" if gatherer else ""
    return (
        f"SELECT {cols}{extra} FROM {spec.name} "
        "WHERE (ingest_xid, ingest_id) > ($1::text::xid8, $2::bigint) "
        f"AND (ingest_xid, ingest_id) <= ($3::text::xid8, $4::bigint){XID_AFTER}{XID_UPTO}{ids}"
    )


def backlog_query(spec: TableSpec) -> str:
    """Approximate rows not yet synced: the ingest sequence's high-water mark minus ``$1``."""
    return f"SELECT greatest(last_value - $1::bigint, 0) FROM {spec.name}_ingest_id_seq"


def stage_name(spec: TableSpec) -> str:
    """The per-connection temporary staging table for ``spec``."""
    return f"kd_stage_{spec.name}"


def create_stage(spec: TableSpec) -> str:
    """DDL for the staging table: the data columns only, emptied at every commit."""
    cols = ", ".join(f"{c.name} {c.pgtype}" for c in spec.columns)
    return f"CREATE TEMP TABLE IF NOT EXISTS {stage_name(spec)} ({cols}) ON COMMIT DELETE ROWS"


def _has_suspect(spec: TableSpec) -> bool:
    return "suspect" in spec.column_names


def merge_insert(spec: TableSpec) -> str:
    """Insert staged rows into production, idempotently; ``$1`` is the gatherer id.

    Returns one row ``(inserted, touched)``: rows new to production (this gatherer's unique
    contribution) and rows that changed at all (new, a suspect flag cleared, or newer metadata).
    """
    cols = ", ".join(spec.column_names)
    stage = stage_name(spec)
    target = spec.name
    if spec.kind == "metadata":
        key = ", ".join(spec.production_key)
        # One version per key from this batch (ON CONFLICT DO UPDATE cannot touch a row twice),
        # the newest first; then replace the stored row only when the incoming one is newer.
        newer = (
            f"(coalesce(EXCLUDED.updated_time, '-infinity'), EXCLUDED.received_at) > "
            f"(coalesce({target}.updated_time, '-infinity'), {target}.received_at) "
            f"AND EXCLUDED.content_hash <> {target}.content_hash"
        )
        sets = (
            ", ".join(f"{c} = EXCLUDED.{c}" for c in (*spec.column_names, "gatherer_id"))
            + ", synced_at = now()"
        )
        body = (
            f"INSERT INTO {target} ({cols}, gatherer_id) "
            f"SELECT DISTINCT ON ({key}) {cols}, $1::text FROM {stage} "
            f"ORDER BY {key}, updated_time DESC NULLS LAST, received_at DESC "
            f"ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {newer} "
            "RETURNING (xmax = 0) AS inserted"
        )
    else:
        key = ", ".join(spec.production_key)
        # Sorted by identity so concurrent merges from several gatherers lock in one order.
        # (RETURNING cannot read xmax on a partitioned table, so suspect rows that a clean copy
        # upgrades are handled by clear_suspect(), a separate statement.)
        body = (
            f"INSERT INTO {target} ({cols}, gatherer_id) "
            f"SELECT {cols}, $1::text FROM {stage} ORDER BY {key} "
            f"ON CONFLICT ON CONSTRAINT {target}_identity DO NOTHING RETURNING true AS inserted"
        )
    return f"WITH merged AS ({body}) SELECT count(*) FILTER (WHERE inserted), count(*) FROM merged"


def has_suspect(spec: TableSpec) -> bool:
    """True for tables whose rows may be flagged suspect (received between a gap and a resync)."""
    return _has_suspect(spec)


def any_suspect(spec: TableSpec) -> str:
    """Does production hold any suspect row of this table? (partial index: instant)"""
    return f"SELECT EXISTS (SELECT 1 FROM {spec.name} WHERE suspect)"


def clear_suspect(spec: TableSpec) -> str:
    """A clean staged copy clears the suspect flag of the same row in production (``$1`` = id).

    Suspect rows are used only where no clean gatherer covers them: as soon as one does, the
    row is no longer suspect.
    """
    match = " AND ".join(f"t.{c} = s.{c}" for c in spec.production_key)
    return (
        f"UPDATE {spec.name} t SET suspect = false, gatherer_id = $1::text, synced_at = now() "
        f"FROM {stage_name(spec)} s WHERE t.suspect AND NOT s.suspect AND {match}"
    )


def stage_newest(spec: TableSpec) -> str:
    """The newest ``received_at`` among the staged rows (for lag), as epoch seconds."""
    return f"SELECT extract(epoch FROM max(received_at))::float8 FROM {stage_name(spec)}"


#: Binary output functions of fixed-width key types (the bytes do not depend on any setting).
_SEND = {
    "uuid": "uuid_send",
    "timestamptz": "timestamptz_send",
    "smallint": "int2send",
    "integer": "int4send",
    "bigint": "int8send",
    "boolean": "boolsend",
}


def identity_key_expr(spec: TableSpec) -> str:
    """A row's production key as one ``bytea``, exactly (no hash, so no collisions).

    Fixed-width columns contribute their binary output; any other column its length (4 bytes)
    and its UTF-8 text, so two keys are equal bytes only when their columns are equal. Another
    spelling of an equal value (possible only through the text fallback) just misses the
    seen-identity filter and goes through ON CONFLICT.
    """
    types = {c.name: c.pgtype for c in spec.columns}
    parts = []
    for name in spec.production_key:
        send = _SEND.get(types[name])
        if send is not None:
            parts.append(f"{send}({name})")
        else:
            text = f"convert_to({name}::text, 'UTF8')"
            parts.append(f"int4send(octet_length({text})) || {text}")
    return " || ".join(parts)


def _suspect_ids(spec: TableSpec) -> str:
    return (
        "coalesce(array_agg(ingest_id) FILTER (WHERE suspect), '{}')"
        if _has_suspect(spec)
        else "'{}'::bigint[]"
    )


def keyed_batch_query(spec: TableSpec) -> str:
    """The next batch of a narrow table *and* its rows' identity keys, in one statement.

    Parameters: ``$1,$2`` current cursor, ``$3`` horizon, ``$4`` max rows. Returns one row:
    the end cursor (xid, id), the row count (0: nothing pending), the ingest ids and identity
    keys (one aggregate node feeds both arrays, so they are aligned), the suspect rows' ids and
    the newest ``received_at`` (epoch seconds). The end cursor is the largest ``(xid, id)`` of
    the batch, computed without relying on the aggregation order.
    """
    suspect = " suspect," if _has_suspect(spec) else ""
    return (
        f"WITH b AS MATERIALIZED (SELECT ingest_xid, ingest_id,{suspect} received_at, "
        f"{identity_key_expr(spec)} AS key FROM {spec.name} "
        f"WHERE (ingest_xid, ingest_id) > ($1::text::xid8, $2::bigint){XID_AFTER} "
        "AND ingest_xid < $3::text::xid8 ORDER BY ingest_xid, ingest_id LIMIT $4::bigint), "
        "e AS (SELECT max(ingest_xid) AS x FROM b) "
        "SELECT (SELECT x::text::bigint FROM e), "
        "(SELECT max(b.ingest_id) FROM b, e WHERE b.ingest_xid = e.x), count(*), "
        "coalesce(array_agg(ingest_id), '{}'), coalesce(array_agg(key), '{}'), "
        f"{_suspect_ids(spec)}, extract(epoch FROM max(received_at))::float8 FROM b"
    )


def range_keys_query(spec: TableSpec) -> str:
    """Identity keys of the rows in ``($1,$2) < cursor <= ($3,$4)`` (a batch of a wide table,
    whose bounds came from :func:`batch_end_query`); same columns as :func:`keyed_batch_query`
    without the bounds."""
    return (
        "SELECT coalesce(array_agg(ingest_id), '{}'), "
        f"coalesce(array_agg({identity_key_expr(spec)}), '{{}}'), {_suspect_ids(spec)}, "
        f"extract(epoch FROM max(received_at))::float8 FROM {spec.name} "
        "WHERE (ingest_xid, ingest_id) > ($1::text::xid8, $2::bigint) "
        f"AND (ingest_xid, ingest_id) <= ($3::text::xid8, $4::bigint){XID_AFTER}{XID_UPTO}"
    )


FENCE = (
    "SELECT epoch FROM dedup_lease WHERE name = 'dedup' AND epoch = $1 AND holder = $2 FOR SHARE"
)
"""Fencing check, first statement of every write transaction (reliability-notes §6).

FOR SHARE lets the leader's concurrent writers proceed while blocking a takeover until they
commit; after a takeover the epoch differs and the check returns no row."""

CURSOR_LOCK = (
    "SELECT last_xid::text::bigint, last_id, system_identifier FROM sync_cursors "
    "WHERE gatherer_id = $1 AND table_name = $2 FOR UPDATE"
)
CURSOR_ENSURE = (
    "INSERT INTO sync_cursors (gatherer_id, table_name) VALUES ($1, $2) ON CONFLICT DO NOTHING"
)
CURSOR_READ = (
    "SELECT table_name, last_xid::text::bigint, last_id, system_identifier, "
    "extract(epoch FROM newest_received_at)::float8 FROM sync_cursors WHERE gatherer_id = $1"
)
CURSOR_ADVANCE = (
    "UPDATE sync_cursors SET last_xid = $3::text::xid8, last_id = $4, rows_read = rows_read + $5, "
    "newest_received_at = greatest(newest_received_at, to_timestamp($6)), updated_at = now() "
    "WHERE gatherer_id = $1 AND table_name = $2 AND last_xid = $7::text::xid8 AND last_id = $8"
)
CURSOR_PIN = (
    "UPDATE sync_cursors SET system_identifier = $3, updated_at = now() "
    "WHERE gatherer_id = $1 AND table_name = $2 AND system_identifier IS NULL"
)
"""First contact: remember which gatherer cluster the cursor belongs to."""
CURSOR_RESET = (
    "UPDATE sync_cursors SET last_xid = '0', last_id = 0, system_identifier = $3, "
    "rescans = rescans + 1, updated_at = now() WHERE gatherer_id = $1 AND table_name = $2"
)
"""Safe rescan from the start (idempotent merges make re-reading harmless)."""
