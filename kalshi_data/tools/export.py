"""``kalshi-data export --config FILE``: production partitions to S3 as Parquet, with manifests.

One Parquet file per (table, UTC day), written only once the day has settled (``settle_s`` after
its end, so late rows from a gatherer catching up are included). Write-then-commit: the file and
its manifest (``_<file>.manifest.json`` beside it: row count, sha256, time range; the leading
underscore makes Athena, Trino, Spark and Hive skip it when they read the day's folder) are
uploaded first, then one production
transaction records the manifest row and advances the table's watermark. A crash between the two
re-uploads the same deterministic key on the next run; reruns are idempotent.

Archive, then drop (``production.keep_days``, off by default): after exporting, each attached
daily partition older than ``keep_days`` whose export is committed is verified (the object read
back from S3: its sha256 and Parquet row count against the manifest, and the partition's row
count too), marked verified, and detached and dropped in one transaction (``kd_drop_day``, which
re-checks the verified manifest). Any failed check keeps the partition. A crash leaves the day in
production, in S3, or both; never in neither. See docs/archive.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress

from kalshi_data.config import Secret, load_config
from kalshi_data.errors import ConfigError, describe_error
from kalshi_data.tables import BY_NAME, LIFECYCLE_EVENTS, TIMESERIES_TABLES, TableSpec

log = logging.getLogger("kalshi_data.export")

DEFAULT_TABLES: tuple[str, ...] = (*(t.name for t in TIMESERIES_TABLES), LIFECYCLE_EVENTS.name)
_FETCH = 50_000
#: Rows per Parquet row group: large enough for scan engines (Athena, Trino, DuckDB read a row
#: group per task), small enough to buffer (about 50-100 MB of Arrow data for the widest table).
ROW_GROUP_ROWS = 500_000

_ARROW: dict[str, pa.DataType] = {
    "uuid": pa.string(),
    "text": pa.string(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "boolean": pa.bool_(),
    "integer[]": pa.list_(pa.int32()),
    "bigint[]": pa.list_(pa.int64()),
    "jsonb": pa.string(),
    "bytea": pa.binary(),
    "text[]": pa.list_(pa.string()),
}


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """The production database (a role with SELECT on data and write on export tables).

    ``keep_days``: drop a day's partitions once the day is older than this many days and its
    export is verified (None, the default, keeps everything).
    """

    dsn: Secret
    keep_days: int | None = None

    def __post_init__(self) -> None:
        if self.keep_days is not None and self.keep_days < 1:
            raise ConfigError("production.keep_days", "must be a whole number of days >= 1")


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where the archive goes. ``endpoint_url`` is for S3-compatible servers (tests)."""

    bucket: str
    prefix: str = "kalshi-data"
    region: str = "us-east-1"
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """The export job's configuration (see examples/export.yaml)."""

    production: DatabaseConfig
    s3: S3Config
    tables: tuple[str, ...] = DEFAULT_TABLES
    settle_s: float = 6 * 3600.0
    max_days_per_run: int = 31
    metrics_textfile: str | None = None
    log_level: str = "INFO"


@dataclass
class ExportResult:
    """What one run wrote."""

    files: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def arrow_schema(spec: TableSpec) -> pa.Schema:
    """The Parquet schema of a table, from tables.py (exact integers, UTC microseconds)."""
    return pa.schema(
        [pa.field(c.name, _ARROW[c.pgtype], nullable=c.nullable) for c in spec.columns]
        + [pa.field("gatherer_id", pa.string(), nullable=False)]
    )


def _select(spec: TableSpec, time_col: str) -> str:
    cols = []
    for c in spec.columns:
        if c.pgtype in ("uuid", "jsonb"):
            cols.append(f"{c.name}::text")
        else:
            cols.append(c.name)
    key = ", ".join(spec.production_key)
    return (
        f"SELECT {', '.join(cols)}, gatherer_id FROM {spec.name} "
        f"WHERE {time_col} >= %s AND {time_col} < %s ORDER BY {key}"
    )


def _time_column(spec: TableSpec) -> str:
    return "exchange_ts" if spec.partitioned else "received_at"


def object_key(prefix: str, table: str, day: date) -> str:
    """Deterministic key: a rerun overwrites the same object instead of adding one."""
    d = day.isoformat()
    return f"{prefix.strip('/')}/{table}/date={d}/{table}-{d}.parquet"


def manifest_key(key: str) -> str:
    """The manifest beside an object; ``_`` first, so query engines skip it as a hidden file."""
    folder, _, name = key.rpartition("/")
    return f"{folder}/_{name}.manifest.json"


def _batches(
    conn: psycopg.Connection[Any], spec: TableSpec, lo: datetime, hi: datetime, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    with conn.cursor(name=f"kd_export_{spec.name}") as cur:
        cur.execute(_select(spec, _time_column(spec)).encode(), (lo, hi))
        while True:
            rows = cur.fetchmany(_FETCH)
            if not rows:
                return
            columns = list(zip(*rows, strict=True))
            yield pa.record_batch(
                [pa.array(col, type=schema.field(i).type) for i, col in enumerate(columns)],
                schema=schema,
            )


def _write_day(
    conn: psycopg.Connection[Any], spec: TableSpec, day: date, path: Path
) -> tuple[int, datetime | None, datetime | None]:
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    hi = lo + timedelta(days=1)
    schema = arrow_schema(spec)
    rows = 0
    tmin: datetime | None = None
    tmax: datetime | None = None
    tcol = schema.get_field_index(_time_column(spec))
    # A server-side cursor needs a transaction; REPEATABLE READ would not matter here: the day
    # is settled, so no row for it is still being written.
    buffered: list[pa.RecordBatch] = []
    with (
        conn.transaction(),
        pq.ParquetWriter(path, schema, compression="zstd") as writer,
    ):
        for batch in _batches(conn, spec, lo, hi, schema):
            buffered.append(batch)
            if sum(b.num_rows for b in buffered) >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(buffered), row_group_size=ROW_GROUP_ROWS)
                buffered = []
            rows += batch.num_rows
            col = batch.column(tcol).to_pylist()
            bmin, bmax = min(col), max(col)
            tmin = bmin if tmin is None or bmin < tmin else tmin
            tmax = bmax if tmax is None or bmax > tmax else tmax
        if buffered:
            writer.write_table(pa.Table.from_batches(buffered), row_group_size=ROW_GROUP_ROWS)
    return rows, tmin, tmax


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _start_day(conn: psycopg.Connection[Any], spec: TableSpec) -> date | None:
    row = conn.execute(
        "SELECT exported_until FROM export_watermarks WHERE table_name = %s", (spec.name,)
    ).fetchone()
    if row is not None:
        return row[0].astimezone(UTC).date()  # type: ignore[no-any-return]
    row = conn.execute(f"SELECT min({_time_column(spec)}) FROM {spec.name}".encode()).fetchone()
    if row is None or row[0] is None:
        return None
    return row[0].astimezone(UTC).date()  # type: ignore[no-any-return]


def run_export(
    cfg: ExportConfig, *, now: datetime | None = None, show_progress: bool = False
) -> ExportResult:
    """Export every settled day after each table's watermark; returns what was written."""
    now = now or datetime.now(UTC)
    s3 = boto3.client("s3", region_name=cfg.s3.region, endpoint_url=cfg.s3.endpoint_url)
    result = ExportResult()
    with psycopg.connect(cfg.production.dsn.reveal(), autocommit=True) as conn:
        plan: list[tuple[TableSpec, date]] = []
        for name in cfg.tables:
            spec = BY_NAME[name]
            start = _start_day(conn, spec)
            if start is None:
                continue
            day = start
            while len([p for p in plan if p[0] is spec]) < cfg.max_days_per_run:
                end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
                if end + timedelta(seconds=cfg.settle_s) > now:
                    break
                if spec.partitioned and _under_repair(conn, spec, day):
                    log.info("%s %s: partition upkeep is moving this day; later", spec.name, day)
                    break
                plan.append((spec, day))
                day += timedelta(days=1)
        with Progress(disable=not show_progress) as progress, tempfile.TemporaryDirectory() as tmp:
            task = progress.add_task("exporting", total=len(plan))
            for spec, day in plan:
                path = Path(tmp) / f"{spec.name}-{day}.parquet"
                rows, tmin, tmax = _write_day(conn, spec, day, path)
                digest = _sha256(path)
                key = object_key(cfg.s3.prefix, spec.name, day)
                lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
                manifest = {
                    "table": spec.name,
                    "key": key,
                    "range_start": lo.isoformat(),
                    "range_end": (lo + timedelta(days=1)).isoformat(),
                    "row_count": rows,
                    "sha256": digest,
                    "min_ts": tmin.isoformat() if tmin else None,
                    "max_ts": tmax.isoformat() if tmax else None,
                    "schema": [f.name for f in arrow_schema(spec)],
                }
                s3.upload_file(str(path), cfg.s3.bucket, key)
                s3.put_object(
                    Bucket=cfg.s3.bucket,
                    Key=manifest_key(key),
                    Body=json.dumps(manifest, indent=2).encode(),
                    ContentType="application/json",
                )
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO export_manifests (s3_key, table_name, range_start, "
                        "range_end, row_count, sha256, min_ts, max_ts) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (s3_key) DO UPDATE SET row_count = EXCLUDED.row_count, "
                        "sha256 = EXCLUDED.sha256, min_ts = EXCLUDED.min_ts, "
                        "max_ts = EXCLUDED.max_ts, created_at = now()",
                        (key, spec.name, lo, lo + timedelta(days=1), rows, digest, tmin, tmax),
                    )
                    conn.execute(
                        "INSERT INTO export_watermarks (table_name, exported_until) "
                        "VALUES (%s, %s) "
                        "ON CONFLICT (table_name) DO UPDATE SET exported_until = "
                        "greatest(export_watermarks.exported_until, EXCLUDED.exported_until), "
                        "updated_at = now()",
                        (spec.name, lo + timedelta(days=1)),
                    )
                result.files.append(key)
                result.rows[spec.name] = result.rows.get(spec.name, 0) + rows
                log.info(
                    "exported %s %s: %d rows to s3://%s/%s",
                    spec.name,
                    day,
                    rows,
                    cfg.s3.bucket,
                    key,
                )
                progress.advance(task)
        if cfg.production.keep_days is not None:
            result.dropped = drop_archived(conn, s3, cfg, now=now)
    if cfg.metrics_textfile:
        _write_textfile(Path(cfg.metrics_textfile), result)
    return result


def _under_repair(conn: psycopg.Connection[Any], spec: TableSpec, day: date) -> bool:
    """The day's table exists but is not attached yet: some of its rows are not visible."""
    row = conn.execute(
        "SELECT NOT c.relispartition FROM pg_class c WHERE c.oid = to_regclass(%s)",
        (f"{spec.name}_p{day:%Y%m%d}",),
    ).fetchone()
    return bool(row and row[0])


def verify_object(s3: Any, bucket: str, key: str, sha256: str, row_count: int, path: Path) -> str:
    """Download ``key`` to ``path`` and check it against the manifest; returns "" when it
    matches, else what differs (never raises for a mismatch)."""
    try:
        s3.download_file(bucket, key, str(path))
    except Exception as exc:  # missing object, no permission: not verified
        return f"cannot read s3://{bucket}/{key} ({type(exc).__name__})"
    digest = _sha256(path)
    if digest != sha256:
        return f"sha256 {digest[:12]}… is not the manifest's {sha256[:12]}…"
    n = pq.ParquetFile(path).metadata.num_rows
    if n != row_count:
        return f"{n} rows in the object, {row_count} in the manifest"
    return ""


def _attached_days(conn: psycopg.Connection[Any], spec: TableSpec) -> list[date]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass AND c.relname ~ '_p[0-9]{8}$'",
        (spec.name,),
    ).fetchall()
    return sorted(datetime.strptime(r[0][-8:], "%Y%m%d").date() for r in rows)


def drop_archived(
    conn: psycopg.Connection[Any], s3: Any, cfg: ExportConfig, *, now: datetime
) -> list[str]:
    """Drop the partitions older than ``keep_days`` whose export verifies; returns them."""
    assert cfg.production.keep_days is not None
    cutoff = now.astimezone(UTC).date() - timedelta(days=cfg.production.keep_days)
    dropped: list[str] = []
    # DETACH takes ACCESS EXCLUSIVE on the parent: wait briefly, never queue writers for long.
    conn.execute("SET lock_timeout = '5s'")
    with tempfile.TemporaryDirectory() as tmp:
        for name in cfg.tables:
            spec = BY_NAME[name]
            if not spec.partitioned:
                continue
            for day in _attached_days(conn, spec):
                if day >= cutoff:
                    break
                lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
                key = object_key(cfg.s3.prefix, spec.name, day)
                row = conn.execute(
                    "SELECT row_count, sha256 FROM export_manifests "
                    "WHERE s3_key = %s AND table_name = %s AND range_start = %s",
                    (key, spec.name, lo),
                ).fetchone()
                if row is None:
                    log.info("%s %s: not exported yet; kept", spec.name, day)
                    continue
                row_count, sha256 = int(row[0]), str(row[1])
                problem = verify_object(
                    s3, cfg.s3.bucket, key, sha256, row_count, Path(tmp) / "check.parquet"
                )
                if not problem:
                    problem = _manifest_problem(s3, cfg.s3.bucket, key, sha256, row_count)
                if problem:
                    log.error("%s %s: export does not verify (%s); kept", spec.name, day, problem)
                    continue
                conn.execute(
                    "UPDATE export_manifests SET verified_at = now() WHERE s3_key = %s", (key,)
                )
                try:
                    done = conn.execute(
                        "SELECT kd_drop_day(%s, %s, %s)", (spec.name, day, key)
                    ).fetchone()
                except psycopg.Error as exc:
                    log.error("%s %s: not dropped (%s)", spec.name, day, str(exc).splitlines()[0])  # noqa: TRY400
                    continue
                if done and done[0]:
                    dropped.append(f"{spec.name}_p{day:%Y%m%d}")
                    log.info("%s %s: verified in S3, partition dropped", spec.name, day)
    return dropped


def _manifest_problem(s3: Any, bucket: str, key: str, sha256: str, row_count: int) -> str:
    """The manifest object beside the Parquet file must agree (the importer trusts it)."""
    try:
        doc = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read())
    except Exception as exc:
        return f"cannot read the manifest object ({type(exc).__name__})"
    if doc.get("sha256") != sha256 or doc.get("row_count") != row_count:
        return "the manifest object differs from production's manifest row"
    return ""


def _write_textfile(path: Path, result: ExportResult) -> None:
    """Metrics for node-exporter's textfile collector (the job is not a long-lived server)."""
    lines = [
        "# HELP export_last_success_timestamp_seconds End of the last successful export run.",
        "# TYPE export_last_success_timestamp_seconds gauge",
        f"export_last_success_timestamp_seconds {time.time():.0f}",
        "# HELP export_rows_total Rows exported by the last run.",
        "# TYPE export_rows_total gauge",
    ]
    lines += [f'export_rows_total{{table="{t}"}} {n}' for t, n in sorted(result.rows.items())]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    """``kalshi-data export --config FILE``; exit 2 on bad config."""
    parser = argparse.ArgumentParser(prog="kalshi-data export", description=__doc__)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(ExportConfig, args.config)
    except (ConfigError, OSError) as exc:
        print(f"kalshi-data export: {describe_error(exc)}", file=sys.stderr)
        return 2
    unknown = [t for t in cfg.tables if t not in BY_NAME]
    if unknown:
        print(f"kalshi-data export: {ConfigError('tables', f'unknown {unknown}')}", file=sys.stderr)
        return 2
    from kalshi_data.jsonlog import setup_logging  # noqa: PLC0415

    setup_logging("export", cfg.log_level)
    result = run_export(cfg, show_progress=sys.stderr.isatty())
    print(json.dumps({"files": len(result.files), "rows": result.rows, "dropped": result.dropped}))
    return 0
