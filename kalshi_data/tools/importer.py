"""``kalshi-data import``: restore a table × date range from the S3 archive into a database.

The recovery path for data that production no longer holds (dropped by ``production.keep_days``,
or a production database rebuilt from nothing). For each UTC day of the range the importer reads
the manifest beside the day's Parquet object, downloads the object and checks its sha256
and row count against the manifest (a mismatch stops the import before anything is written), makes
the day's partition if it is missing (the same steps as partition upkeep), then loads the rows
through a staging table with ``INSERT ... ON CONFLICT DO NOTHING`` on the table's identity. A rerun
inserts nothing; rows that production already holds are kept as they are. Finally every archived
row is checked to be present in the target. ``synced_at`` of restored rows is the import time (the
archive does not carry it). See docs/archive.md for the runbook.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow.parquet as pq

from kalshi_data.config import load_config
from kalshi_data.errors import ConfigError, KalshiDataError, describe_error
from kalshi_data.tables import BY_NAME, TableSpec
from kalshi_data.tools.export import ExportConfig, manifest_key, object_key, verify_object


class RestoreError(KalshiDataError, RuntimeError):
    """The archive cannot be restored as asked (missing day, object not matching its manifest)."""


@dataclass
class ImportResult:
    """Rows per day: archived (the manifest) and newly inserted."""

    archived: dict[date, int] = field(default_factory=dict)
    inserted: dict[date, int] = field(default_factory=dict)


def _ensure_partition(conn: psycopg.Connection[Any], spec: TableSpec, day: date) -> None:
    """The day's partition, made by upkeep's own steps (migration 0007) when missing."""
    blocks = conn.execute("SELECT kd_part_begin(%s, %s)", (spec.name, day)).fetchone()
    assert blocks is not None
    if blocks[0] < 0:
        return
    if blocks[0] > 0:
        conn.execute("SELECT kd_part_move(%s, %s, 0, NULL)", (spec.name, day))
    for step in ("kd_part_seal", "kd_part_validate", "kd_part_attach"):
        conn.execute(f"SELECT {step}(%s, %s)", (spec.name, day))


def _load_day(conn: psycopg.Connection[Any], spec: TableSpec, path: Path) -> tuple[int, int]:
    """Stage the Parquet file, insert what is missing; returns (inserted, present afterwards)."""
    cols = [*spec.column_names, "gatherer_id"]
    # uuid and jsonb travel as text (the Parquet columns are strings) and are cast on insert.
    pgtypes = [c.pgtype for c in spec.columns] + ["text"]
    types = ["text" if t in ("uuid", "jsonb") else t for t in pgtypes]
    ddl = ", ".join(f"{n} {t}" for n, t in zip(cols, pgtypes, strict=True))
    collist = ", ".join(cols)
    match = " AND ".join(f"t.{c} = s.{c}" for c in spec.production_key)
    parquet = pq.ParquetFile(path)
    with conn.transaction():
        conn.execute(f"CREATE TEMP TABLE kd_import_stage ({ddl}) ON COMMIT DROP")
        with conn.cursor().copy(f"COPY kd_import_stage ({collist}) FROM STDIN") as copy:
            # the server parses the text forms of uuid and jsonb itself
            copy.set_types(types)
            for batch in parquet.iter_batches(batch_size=50_000, columns=cols):
                for row in zip(
                    *(batch.column(i).to_pylist() for i in range(len(cols))), strict=True
                ):
                    copy.write_row(row)
        status = conn.execute(
            f"INSERT INTO {spec.name} ({collist}) SELECT {collist} FROM kd_import_stage "
            f"ON CONFLICT ({', '.join(spec.production_key)}) DO NOTHING"
        )
        inserted = status.rowcount
        present = conn.execute(
            f"SELECT count(*) FROM kd_import_stage s WHERE EXISTS "
            f"(SELECT 1 FROM {spec.name} t WHERE {match})"
        ).fetchone()
    return inserted, int(present[0]) if present else 0


def run_import(
    cfg: ExportConfig,
    table: str,
    first: date,
    last: date,
    *,
    dsn: str | None = None,
    migrate_target: bool = False,
) -> ImportResult:
    """Restore ``table`` for the UTC days ``first``..``last`` (inclusive) into ``dsn`` (default:
    the configured production database)."""
    spec = BY_NAME.get(table)
    if spec is None:
        raise RestoreError(f"unknown table {table!r}")
    if last < first:
        raise RestoreError(f"empty range {first} .. {last}")
    target = dsn or cfg.production.dsn.reveal()
    if migrate_target:
        from kalshi_data.migrate import migrate  # noqa: PLC0415

        migrate(target, "production")
    s3 = boto3.client("s3", region_name=cfg.s3.region, endpoint_url=cfg.s3.endpoint_url)
    result = ImportResult()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        psycopg.connect(target, autocommit=True) as conn,
    ):
        conn.execute("SET lock_timeout = '5s'")
        for day in days:
            key = object_key(cfg.s3.prefix, spec.name, day)
            try:
                body = s3.get_object(Bucket=cfg.s3.bucket, Key=manifest_key(key))["Body"]
                manifest = json.loads(body.read())
            except Exception as exc:
                raise RestoreError(
                    f"no manifest for {spec.name} {day} at s3://{cfg.s3.bucket}/{manifest_key(key)}"
                    f" ({type(exc).__name__})"
                ) from None
            lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if manifest.get("table") != spec.name or manifest.get("range_start") != lo.isoformat():
                raise RestoreError(f"manifest of {key} is for another table or day")
            path = Path(tmp) / f"{spec.name}-{day}.parquet"
            row_count = int(manifest["row_count"])
            problem = verify_object(s3, cfg.s3.bucket, key, manifest["sha256"], row_count, path)
            if problem:
                raise RestoreError(f"{key} does not match its manifest: {problem}")
            if spec.partitioned:
                _ensure_partition(conn, spec, day)
            inserted, present = _load_day(conn, spec, path)
            if present != row_count:
                raise RestoreError(f"{spec.name} {day}: {present} of {row_count} rows present")
            result.archived[day] = row_count
            result.inserted[day] = inserted
            path.unlink()
    return result


def main(argv: list[str]) -> int:
    """``kalshi-data import --config export.yaml --table T --from DAY --to DAY [--dsn DSN]``."""
    parser = argparse.ArgumentParser(prog="kalshi-data import", description=__doc__)
    parser.add_argument("--config", required=True, help="the export configuration (S3, DSN)")
    parser.add_argument("--table", required=True, choices=sorted(BY_NAME))
    parser.add_argument("--from", dest="first", required=True, help="first UTC day, YYYY-MM-DD")
    parser.add_argument("--to", dest="last", required=True, help="last UTC day (inclusive)")
    parser.add_argument("--dsn", help="restore into this database instead of production")
    parser.add_argument(
        "--migrate", action="store_true", help="apply the production schema first (empty DB)"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(ExportConfig, args.config)
        first, last = date.fromisoformat(args.first), date.fromisoformat(args.last)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"kalshi-data import: {describe_error(exc)}", file=sys.stderr)
        return 2
    try:
        result = run_import(cfg, args.table, first, last, dsn=args.dsn, migrate_target=args.migrate)
    except (RestoreError, psycopg.Error) as exc:
        print(f"kalshi-data import: {describe_error(exc)}", file=sys.stderr)
        return 1
    for day, n in result.archived.items():
        print(f"{args.table} {day}: {n} archived rows, {result.inserted[day]} inserted")
    return 0
