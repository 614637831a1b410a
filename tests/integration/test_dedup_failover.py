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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from kalshi_data.testing.pgcluster import PgCluster, free_port
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


@dataclass
class Rig:
    """A topology and how many indexes have been fed into it (its truth is 0..fed-1)."""

    topo: Topology
    fed: int = 0


def _rig(template: PgCluster, scratch: PgCluster, gatherers: int) -> Iterator[Rig]:
    set_scratch(scratch.dsn())
    t = build_topology(template, gatherers)
    try:
        yield Rig(t)
    finally:
        for c in [t.production, *t.gatherers]:
            c.destroy()


@pytest.fixture(scope="module")
def rig(pg_template: PgCluster, shared_pg: PgCluster) -> Iterator[Rig]:
    """Production plus two gatherer clusters, shared by the regression tests (each goes on
    from where the previous one left production)."""
    yield from _rig(pg_template, shared_pg, 2)


@pytest.fixture
def chaos_rig(pg_template: PgCluster, shared_pg: PgCluster) -> Iterator[Rig]:
    """Production plus three gatherer clusters, as in the issue's report."""
    yield from _rig(pg_template, shared_pg, 3)


class Feeder:
    """Writes rows into every gatherer, ``chunk`` indexes every 0.2 s, until stopped. Gatherer
    ``g`` misses the indexes with ``(i // 2) % 3 == g``, so no single gatherer has the truth,
    and their union is all of it (whole pairs of identical deltas are missed together: a
    gatherer that saw one of the two numbers it k = 0, and two gatherers that each saw a
    different one would both say k = 0)."""

    def __init__(self, topo: Topology, start: int, chunk: int) -> None:
        self.topo = topo
        self.next = start
        self.chunk = chunk
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def feed(self, n: int) -> None:
        """Write the next ``n`` indexes into every gatherer now."""
        lo, hi = self.next, self.next + n - 1
        for g in range(len(self.topo.gatherers)):
            load_rows(self.topo, g, lo, hi, hole=f"mod({{i}} / 2, 3) = {g}")
        self.next = hi + 1

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.2):
                self.feed(self.chunk)
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
    counts = _prod(
        topo, "SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM orderbook_deltas)"
    )
    if counts is None or [int(str(c)) for c in counts[0]] != [n, n]:
        return False  # (cheap first: the full comparison reads every row)
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
    rig: Rig,
    tmp_path: Path,
    *,
    instances: int,
    kills: int,
    outage_s: float,
    chunk: int = 300,
    batch_rows: int = 500,
) -> CrashReport:
    """Kill -9 production ``kills`` times while merges are in flight; return the measurements.

    Asserts along the way that every deduplicator process stays up, and at the end that
    production holds every fed index exactly once and no process logged a lost exception.
    """
    topo = rig.topo
    report = CrashReport()
    procs = [
        DedupProcess(
            topo.config(f"dedup-{chr(ord('a') + i)}", http_port=free_port(), batch_rows=batch_rows),
            tmp_path,
        )
        for i in range(instances)
    ]
    feeder = Feeder(topo, rig.fed, chunk)
    feeder.feed(10 * chunk)  # a backlog, so that batches are in flight from the first second
    start = _rows_read(topo) or 0
    try:
        for p in procs:
            p.start()
        with feeder:
            wait_for(lambda: (_rows_read(topo) or 0) > start, 30, "the first merged batch")
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
        n = rig.fed = feeder.stop()
        print(f"\n{instances} deduplicator(s): {report.summary()} rows={n}")
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
    return report


def test_production_kill9_mid_batch_one_deduplicator(rig: Rig, tmp_path: Path) -> None:
    """One deduplicator, production killed three times mid-merge: it stays up and resumes."""
    report = _crash_run(rig, tmp_path, instances=1, kills=3, outage_s=0.5)
    assert report.exits == 0
    assert len(report.resume_s) == 3


def test_production_kill9_mid_batch_two_deduplicators(rig: Rig, tmp_path: Path) -> None:
    """Leader and standby, production killed three times mid-merge: neither exits."""
    report = _crash_run(rig, tmp_path, instances=2, kills=3, outage_s=0.5)
    assert report.exits == 0
    assert len(report.resume_s) == 3


@pytest.mark.chaos
def test_production_kill9_chaos(chaos_rig: Rig, tmp_path: Path) -> None:
    """The issue's scenario, longer: three gatherers, two deduplicators, production killed
    twelve times (5 s outages, as reported) at about 1,500 rows/s per gatherer. Reports 0 exits
    and 0 lost or doubled rows, and the leader's resume time after each restart."""
    report = _crash_run(
        chaos_rig, tmp_path, instances=2, kills=12, outage_s=5.0, chunk=300, batch_rows=2000
    )
    assert report.exits == 0
    assert len(report.resume_s) == 12


async def test_errors_after_a_killed_server_mid_copy_are_retryable(pg_cluster: PgCluster) -> None:
    """kill -9 of a real server during a streamed COPY inside a transaction: every error the
    driver raises from then on (the COPY, the transaction's exit, the next statement) is
    retryable; classify() alone for asyncpg's own types, and the deduplicator's verdict (an
    error on a connection since lost) for uvloop's RuntimeError about the closed transport."""
    import asyncio

    import asyncpg

    from deduplicator.sync import lost_connection_verdict
    from kalshi_data.resilience import ErrorClass, classify

    conn = await asyncpg.connect(pg_cluster.dsn(), timeout=5)
    await conn.execute("CREATE TABLE t (x bytea)")
    sent = asyncio.Event()

    async def rows() -> AsyncIterator[bytes]:
        for _ in range(2000):  # ends once the server is gone (and after 10 s at most)
            yield b"\\\\x00\n" * 4096
            sent.set()
            await asyncio.sleep(0.005)
            if conn.is_closed():
                return

    errors: list[BaseException] = []
    try:
        try:
            async with conn.transaction():
                copy = asyncio.ensure_future(conn.copy_to_table("t", source=rows()))
                await asyncio.wait_for(sent.wait(), 10)
                await asyncio.to_thread(pg_cluster.kill9)
                try:
                    await copy
                except Exception as exc:
                    errors.append(exc)
        except Exception as exc:
            errors.append(exc)
        try:
            await conn.execute("SELECT 1")
        except Exception as exc:
            errors.append(exc)
        lost = conn.is_closed()  # by the server's death, not by us
    finally:
        conn.terminate()
    assert lost
    assert len(errors) == 3, errors
    for err in errors:
        assert lost_connection_verdict(err, conn) is ErrorClass.RETRYABLE, repr(err)
        if isinstance(err, asyncpg.InterfaceError | asyncpg.InternalClientError):
            assert classify(err) is ErrorClass.RETRYABLE, repr(err)
    assert any(isinstance(e, asyncpg.InterfaceError) for e in errors), errors
    # A connection that never existed (bad password) stays permanent under the same rule.
    await asyncio.to_thread(pg_cluster.start)
    bad = await asyncio.gather(
        asyncpg.connect(pg_cluster.dsn(password="wrong-pw"), timeout=5), return_exceptions=True
    )
    assert isinstance(bad[0], BaseException)
    assert lost_connection_verdict(bad[0], None) is ErrorClass.PERMANENT


def _copy_then_kill(cluster: PgCluster, wrapped: bool) -> tuple[list[str], BaseException | None]:
    """Under uvloop (as the deduplicator runs): a COPY of data in hand starts while the transport
    is paused for writing, and the server is killed -9 in that moment. Returns what asyncio
    reported as never retrieved, and the error the COPY ended with."""
    import asyncio
    import gc

    import asyncpg
    import uvloop

    from kalshi_data.pgcopy import copy_data

    lost: list[str] = []
    row = b"\0\x01\0\0\0\x04\0\0\0\x01"  # one int4 column
    data = memoryview(b"PGCOPY\n\xff\r\n\0" + b"\0" * 8 + row * 1000 + b"\xff\xff")

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if any(s in str(context.get("message")) for s in NEVER_RETRIEVED):
            lost.append(repr(context.get("exception")))

    async def run() -> BaseException | None:
        asyncio.get_running_loop().set_exception_handler(handler)
        conn = await asyncpg.connect(cluster.dsn(), timeout=5, command_timeout=5)
        error: BaseException | None = None
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
            async with conn.transaction():
                # What uvloop does when a write leaves more than the high-water mark buffered
                # (a merge's data sent but not yet drained): asyncpg's COPY then waits.
                conn._protocol.pause_writing()
                if wrapped:
                    copy = asyncio.ensure_future(copy_data(conn, "t", data, ["x"]))
                else:
                    copy = asyncio.ensure_future(
                        conn.copy_to_table("t", source=data, format="binary")
                    )
                await asyncio.sleep(0)  # the COPY is under way (its statement written)
                await asyncio.to_thread(cluster.kill9)
                # asyncpg's own COPY hangs here (nothing resumes writing on a lost connection):
                # the deadline stands in for whatever cancels it.
                await asyncio.wait_for(copy, 10)
        except Exception as exc:
            error = exc
        finally:
            conn.terminate()
        del conn
        gc.collect()
        await asyncio.sleep(0)
        return error

    error = uvloop.run(run())
    gc.collect()
    cluster.start()
    return lost, error


#: Kills per variant: the leak was one per kill in this scenario (asyncpg 0.32, uvloop 0.23).
COPY_KILLS = 5


def test_copy_killed_while_paused_leaves_no_unretrieved_future(pg_cluster: PgCluster) -> None:
    """The origin of the last "Future exception was never retrieved" (issue 16): asyncpg's
    ``copy_in`` creates its result future, then waits for ``writing_allowed`` outside its
    timer; a server killed in that wait leaves the COPY hung until cancelled, and the
    cancellation's CopyFail write to uvloop's closed transport raises before the future's
    exception is retrieved. ``pgcopy.copy_data`` waits for the transport first: the same kills
    leave nothing unretrieved and end in a retryable connection error, not a hang. The raw
    driver is run once as a control (it must still leak, else this test proves nothing)."""
    import asyncpg

    from deduplicator.sync import lost_connection_verdict
    from kalshi_data.resilience import ErrorClass

    control, _ = _copy_then_kill(pg_cluster, wrapped=False)
    assert len(control) == 1, control
    leaks = 0
    for _ in range(COPY_KILLS):
        lost, error = _copy_then_kill(pg_cluster, wrapped=True)
        leaks += len(lost)
        assert error is not None
        cause = error.__context__ if isinstance(error, asyncpg.InterfaceError) else error
        assert not isinstance(cause, TimeoutError), repr(error)  # ended by the loss, not a hang
        assert lost_connection_verdict(error, None) is ErrorClass.RETRYABLE, repr(error)
    print(
        f"\nCOPY killed while paused: raw driver 1 of 1 leaked, copy_data {leaks} of {COPY_KILLS}"
    )
    assert leaks == 0
