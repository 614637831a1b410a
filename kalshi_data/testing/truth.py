"""Compare a database with the simulator's ground truth, row for row.

The truth file holds one JSON line per event the exchange emitted (``{"type", "msg"}``). Each
line goes through the same parser the gatherer uses (``kalshi_data.kalshi.parse``), becomes the
row the gatherer would write, and is reduced to the table's identity (tables.py). Order-book
deltas get their occurrence index ``k`` from their position in the stream, exactly as a gap-free
gatherer numbers them. The database side is read with the same identity columns; the result is
a multiset difference per table: missing (in truth, not in the database) and extra (in the
database, not in truth). Exactly once means both are empty.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from kalshi_data.kalshi.parse import DeadLetter, Frame, parse_frame
from kalshi_data.records import DeltaRec
from kalshi_data.tables import (
    BY_NAME,
    LIFECYCLE_EVENTS,
    ORDERBOOK_DELTAS,
    TICKERS,
    TRADES,
    TableSpec,
)

COMPARED: tuple[TableSpec, ...] = (TRADES, ORDERBOOK_DELTAS, TICKERS, LIFECYCLE_EVENTS)

Identity = tuple[Any, ...]


@dataclass
class TableDiff:
    """One table's comparison."""

    expected: int
    found: int
    missing: Counter[Identity] = field(default_factory=Counter)
    extra: Counter[Identity] = field(default_factory=Counter)

    @property
    def exact(self) -> bool:
        """True when the database holds exactly the truth's multiset."""
        return not self.missing and not self.extra


@dataclass
class Truth:
    """The identities of every event in a truth file, per table."""

    tables: dict[str, Counter[Identity]]
    unparsed: int


def _norm(value: Any, pgtype: str) -> Any:
    if pgtype == "uuid" and isinstance(value, uuid.UUID):
        return str(value)
    return value


def _identity(spec: TableSpec, row: tuple[Any, ...]) -> Identity:
    names = spec.column_names
    types = {c.name: c.pgtype for c in spec.columns}
    return tuple(_norm(row[names.index(c)], types[c]) for c in spec.identity)


def load_truth(
    path: Path,
    *,
    since_us: int | None = None,
    until_us: int | None = None,
    skip_lines: int = 0,
) -> Truth:
    """Identities of the truth file's events: optionally only exchange times in a window, or
    only the lines after the first ``skip_lines`` (occurrence indexes still count from the
    start of the stream)."""
    tables: dict[str, Counter[Identity]] = {s.name: Counter() for s in COMPARED}
    occurrences: Counter[Identity] = Counter()
    unparsed = 0
    with path.open("rb") as f:
        for lineno, line in enumerate(f):
            if not line.strip():
                continue
            obj = orjson.loads(line)
            raw = orjson.dumps({"type": obj["type"], "sid": 1, "seq": 1, "msg": obj["msg"]})
            rec = parse_frame(raw)
            if isinstance(rec, DeadLetter | Frame):
                unparsed += 1
                continue
            spec = BY_NAME.get(rec.table)
            if spec is None or spec.name not in tables:
                continue
            if isinstance(rec, DeltaRec):
                row = rec.row(0, k=0)
                base = _identity(spec, row)[:-1]
                k = occurrences[base]
                occurrences[base] += 1
                ident = (*base, k)
            else:
                row = rec.row(0)
                ident = _identity(spec, row)
            if lineno < skip_lines:
                continue
            if spec.partitioned and (since_us is not None or until_us is not None):
                ts = row[spec.column_names.index("exchange_ts")]
                if (since_us is not None and ts < since_us) or (
                    until_us is not None and ts > until_us
                ):
                    continue
            tables[spec.name][ident] += 1
    return Truth(tables, unparsed)


def _select(spec: TableSpec) -> str:
    cols = []
    types = {c.name: c.pgtype for c in spec.columns}
    for c in spec.identity:
        if types[c] == "timestamptz":
            cols.append(f"(extract(epoch FROM {c}) * 1000000)::bigint")
        elif types[c] == "uuid":
            cols.append(f"{c}::text")
        else:
            cols.append(c)
    return f"SELECT {', '.join(cols)} FROM {spec.name}"


def database_identities(
    dsn: str, *, since_us: int | None = None, until_us: int | None = None
) -> dict[str, Counter[Identity]]:
    """Identities of the rows in a production or gatherer database, per compared table."""
    out: dict[str, Counter[Identity]] = {}
    with psycopg.connect(dsn) as conn:
        for spec in COMPARED:
            query = _select(spec)
            params: list[Any] = []
            if spec.partitioned and since_us is not None:
                query += " WHERE exchange_ts >= to_timestamp(%s / 1e6)"
                params.append(since_us)
            if spec.partitioned and until_us is not None:
                query += " AND" if params else " WHERE"
                query += " exchange_ts <= to_timestamp(%s / 1e6)"
                params.append(until_us)
            rows = conn.execute(query.encode(), params).fetchall()
            out[spec.name] = Counter(tuple(r) for r in rows)
    return out


def diff(truth: Truth, found: dict[str, Counter[Identity]]) -> dict[str, TableDiff]:
    """Per-table multiset difference (sets for state tables: identical states are one fact)."""
    report = {}
    for spec in COMPARED:
        want, have = truth.tables[spec.name], found[spec.name]
        if spec.kind == "state":
            want, have = Counter(set(want)), Counter(set(have))
        report[spec.name] = TableDiff(
            expected=sum(want.values()),
            found=sum(have.values()),
            missing=want - have,
            extra=have - want,
        )
    return report


def compare(
    dsn: str, truth_path: Path, *, since_us: int | None = None, until_us: int | None = None
) -> dict[str, TableDiff]:
    """Multiset difference between the truth file and the database, per table."""
    truth = load_truth(truth_path, since_us=since_us, until_us=until_us)
    found = database_identities(dsn, since_us=since_us, until_us=until_us)
    return diff(truth, found)
