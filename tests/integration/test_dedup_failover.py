"""Production killed with kill -9 and restarted while batches are in flight (issue 16).

Real ``python -m deduplicator`` processes (one, then two) sync three gatherer clusters that are
fed continuously; the production cluster is SIGKILLed mid-transaction of a merge and restarted,
several times. Every deduplicator process must stay up (no exit, no permanent-error line, no
"exception was never retrieved"), the leader must resume by itself, and production must end
equal to the truth (the union of the gatherers: every index once), row for row.
"""

from __future__ import annotations

import functools
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from kalshi_data.pgcluster import PgCluster, free_port
from tests.integration.dedup_support import (
    DedupProcess,
    Topology,
    build_topology,
    expected_deltas,
    expected_trades,
    load_rows,
    production_deltas,
    production_trades,
    set_scratch,
    wait_for,
)

#: Log text that means the process lost track of a task or future (issue 16).
NEVER_RETRIEVED = ("exception was never retrieved", "Task was destroyed but it is pending")
CHUNK = 1500  # rows per gatherer write (each gatherer misses a third of them: union = all)


@pytest.fixture
def topo(pg_template: PgCluster, shared_pg: PgCluster) -> Iterator[Topology]:
    """Production plus three gatherer clusters, migrated, destroyed afterwards."""
    set_scratch(shared_pg.dsn())
    t = build_topology(pg_template)
    yield t
    for c in [t.production, *t.gatherers]:
        c.destroy()


class Feeder:
    """Writes rows into the three gatherers, chunk after chunk, until stopped. Gatherer ``g``
    misses the indexes with ``i % 3 == g``, so no single gatherer has the truth."""

    def __init__(self, topo: Topology, start: int = 0) -> None:
        self.topo = topo
        self.next = start
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def feed(self, n: int) -> None:
        """Write the next ``n`` indexes into every gatherer now."""
        lo, hi = self.next, self.next + n - 1
        for g in range(3):
            load_rows(self.topo, g, lo, hi, hole=f"mod({{i}}, 3) = {g}")
        self.next = hi + 1

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.1):
                self.feed(CHUNK)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def stop(self) -> int:
        """Stop feeding; returns the number of indexes written (0..n-1)."""
        self.__exit__()
        assert self.errors == [], self.errors
        return self.next


def _prod(topo: Topology, sql: str) -> list[tuple[object, ...]] | None:
    """A query on production as superuser, or None while it is down."""
    try:
        with psycopg.connect(topo.prod_dsn(superuser=True), connect_timeout=2) as conn:
            return conn.execute(sql.encode()).fetchall()
    except psycopg.OperationalError:
        return None


def _merge_in_flight(topo: Topology) -> bool:
    """A deduplicator sync connection is inside a transaction right now."""
    rows = _prod(
        topo,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'kalshi-dedup-%' "
        "AND application_name NOT LIKE '%-lease' AND xact_start IS NOT NULL "
        "AND state <> 'idle'",
    )
    return rows is not None and int(str(rows[0][0])) > 0


def _rows_read(topo: Topology) -> int | None:
    rows = _prod(topo, "SELECT coalesce(sum(rows_read), 0) FROM sync_cursors")
    return None if rows is None else int(str(rows[0][0]))


def _past(t: float) -> bool:
    return time.monotonic() >= t


def _resume_time(topo: Topology, timeout_s: float = 60.0) -> float:
    """Seconds from now (production just accepted connections) until a batch commits."""
    up_at = time.monotonic()
    before = _rows_read(topo)
    assert before is not None
    while time.monotonic() - up_at < timeout_s:
        now = _rows_read(topo)
        if now is not None and now > before:
            return time.monotonic() - up_at
        time.sleep(0.02)
    raise AssertionError(f"no batch committed within {timeout_s} s of the restart")


def _exactly_once(topo: Topology, n: int) -> bool:
    trades = production_trades(topo)
    if set(trades) != expected_trades(0, n - 1) or max(trades.values(), default=1) != 1:
        return False
    return production_deltas(topo) == expected_deltas(0, n - 1)


@dataclass
class CrashReport:
    """What a run measured."""

    kills: int = 0
    resume_s: list[float] = field(default_factory=list)
    exits: int = 0

    def summary(self) -> str:
        r = sorted(self.resume_s)
        return (
            f"kills={self.kills} exits={self.exits} resume p50={statistics.median(r):.2f} s "
            f"max={max(r):.2f} s all={[round(x, 2) for x in r]}"
        )


def _crash_run(
    topo: Topology, tmp_path: Path, *, instances: int, kills: int, outage_s: float
) -> CrashReport:
    """Kill -9 production ``kills`` times while merges are in flight; return the measurements.

    Asserts along the way that every deduplicator process stays up, and at the end that
    production holds every fed index exactly once and no process logged a lost exception.
    """
    report = CrashReport()
    procs = [
        DedupProcess(
            topo.config(f"dedup-{chr(ord('a') + i)}", http_port=free_port(), batch_rows=1000),
            tmp_path,
        )
        for i in range(instances)
    ]
    feeder = Feeder(topo)
    feeder.feed(6 * CHUNK)  # a backlog, so that batches are in flight from the first second
    try:
        for p in procs:
            p.start()
        with feeder:
            wait_for(lambda: (_rows_read(topo) or 0) > 0, 30, "the first merged batch")
            for _ in range(kills):
                wait_for(lambda: _merge_in_flight(topo), 30, "a merge transaction in flight")
                topo.production.kill9()
                report.kills += 1
                down_until = time.monotonic() + outage_s
                wait_for(functools.partial(_past, down_until), outage_s + 5, "the outage")
                topo.production.start()  # returns once it accepts connections
                report.resume_s.append(_resume_time(topo))
                alive = [p.proc is not None and p.proc.poll() is None for p in procs]
                report.exits += alive.count(False)
                assert all(alive), [p.output()[-3000:] for p in procs]
        n = feeder.stop()
        wait_for(lambda: _exactly_once(topo, n), 120, "production equal to the truth")
        for p in procs:
            assert p.proc is not None
            assert p.proc.poll() is None, p.output()[-3000:]
            assert p.kill(signal.SIGTERM) == 0, p.output()[-3000:]
    finally:
        feeder.__exit__()
        for p in procs:
            p.stop()
    for p in procs:
        out = p.output()
        for text in (*NEVER_RETRIEVED, "permanent error", "Traceback"):
            assert text not in out, out[-5000:]
    trades = production_trades(topo)
    assert set(trades) == expected_trades(0, n - 1)
    assert set(trades.values()) == {1}
    assert production_deltas(topo) == expected_deltas(0, n - 1)
    print(f"\n{instances} deduplicator(s): {report.summary()} rows={n}")
    return report


def test_production_kill9_mid_batch_one_deduplicator(topo: Topology, tmp_path: Path) -> None:
    """One deduplicator, production killed three times mid-merge: it stays up and resumes."""
    report = _crash_run(topo, tmp_path, instances=1, kills=3, outage_s=0.5)
    assert report.exits == 0


def test_production_kill9_mid_batch_two_deduplicators(topo: Topology, tmp_path: Path) -> None:
    """Leader and standby, production killed three times mid-merge: neither exits."""
    report = _crash_run(topo, tmp_path, instances=2, kills=3, outage_s=0.5)
    assert report.exits == 0
