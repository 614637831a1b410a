"""``kalshi-data export --config FILE``: production partitions to S3 as Parquet, with manifests.

One Parquet file per (table, UTC day), written only once the day has settled (``settle_s`` after
its end, so late rows from a gatherer catching up are included). Write-then-commit: the file and
its ``.manifest.json`` (row count, sha256, time range) are uploaded first, then one production
transaction records the manifest row and advances the table's watermark. A crash between the two
re-uploads the same deterministic key on the next run; reruns are idempotent.
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
from kalshi_data.errors import ConfigError
from kalshi_data.tables import BY_NAME, LIFECYCLE_EVENTS, TIMESERIES_TABLES, TableSpec

log = logging.getLogger("kalshi_data.export")

DEFAULT_TABLES: tuple[str, ...] = (*(t.name for t in TIMESERIES_TABLES), LIFECYCLE_EVENTS.name)
_FETCH = 50_000

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
    """The production database (a role with SELECT on data and write on export tables)."""

    dsn: Secret


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
    with (
        conn.transaction(),
        pq.ParquetWriter(path, schema, compression="zstd") as writer,
    ):
        for batch in _batches(conn, spec, lo, hi, schema):
            writer.write_batch(batch)
            rows += batch.num_rows
            col = batch.column(tcol).to_pylist()
            bmin, bmax = min(col), max(col)
            tmin = bmin if tmin is None or bmin < tmin else tmin
            tmax = bmax if tmax is None or bmax > tmax else tmax
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
                    Key=key + ".manifest.json",
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
    if cfg.metrics_textfile:
        _write_textfile(Path(cfg.metrics_textfile), result)
    return result


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
        print(f"kalshi-data export: {exc}", file=sys.stderr)
        return 2
    unknown = [t for t in cfg.tables if t not in BY_NAME]
    if unknown:
        print(f"kalshi-data export: {ConfigError('tables', f'unknown {unknown}')}", file=sys.stderr)
        return 2
    from kalshi_data.jsonlog import setup_logging  # noqa: PLC0415

    setup_logging("export", cfg.log_level)
    result = run_export(cfg, show_progress=sys.stderr.isatty())
    print(json.dumps({"files": len(result.files), "rows": result.rows}))
    return 0
