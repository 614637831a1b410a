"""The gatherer writer on real PostgreSQL: exactly once through crashes, spools and bad rows."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import resource
import secrets
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest

from gatherer.metrics import GathererMetrics
from gatherer.pgcodec import register_codecs
from gatherer.spool import Frame, Spool, decode_payload, encode_frame, encode_payload, iter_frames
from gatherer.writer import Writer
from kalshi_data.migrate import migrate
from kalshi_data.tables import BY_NAME
from kalshi_data.testing.pgcluster import PgCluster
from kalshi_data.tools.users import create_user

T0 = 1_700_000_000_000_000  # 2023-11-14, µs since the Unix epoch


# --------------------------------------------------------------------------- helpers
def _gatherer_db(cluster: PgCluster, dbname: str = "gath") -> tuple[str, str]:
    """Create + migrate a gatherer database; return (superuser DSN, least-privilege writer DSN)."""
    admin = cluster.create_database(dbname)
    migrate(admin, "gatherer")
    password = secrets.token_urlsafe(16)
    create_user(admin, "gatherer_writer", "writer", password)
    return admin, cluster.dsn(dbname, user="writer", password=password)


def _normalize(table: str, row: Any) -> tuple[Any, ...]:
    out: list[Any] = []
    for col, value in zip(BY_NAME[table].columns, tuple(row), strict=True):
        if value is None:
            out.append(None)
        elif col.pgtype == "uuid":
            out.append(uuid.UUID(str(value)))
        elif col.pgtype == "jsonb":
            out.append(orjson.dumps(orjson.loads(value), option=orjson.OPT_SORT_KEYS))
        elif col.pgtype.endswith("[]"):
            out.append(tuple(value))
        else:
            out.append(value)
    return tuple(out)


async def _fetch(dsn: str, table: str) -> Counter[tuple[Any, ...]]:
    """Every row of ``table`` (data columns, times as µs ints) as a multiset."""
    conn = await asyncpg.connect(dsn)
    try:
        await register_codecs(conn)
        cols = ", ".join(f'"{c}"' for c in BY_NAME[table].column_names)
        records = await conn.fetch(f"SELECT {cols} FROM {table}")
    finally:
        await conn.close()
    return Counter(_normalize(table, r) for r in records)


def _expected(table: str, rows: list[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
    return Counter(_normalize(table, r) for r in rows)


def _trade(i: int, *, price: int = 4200) -> tuple[Any, ...]:
    return (
        uuid.uuid5(uuid.NAMESPACE_OID, f"trade-{i}"),
        f"MKT-{i % 7}",
        T0 + i,
        price,
        10000 - price if 0 <= price <= 10000 else 0,
        100 + i,
        None,
        "yes" if i % 2 else None,
        "no",
        i % 5 == 0,
        1,
        i,
        False,
        T0 + i + 5,
    )


def _delta(i: int) -> tuple[Any, ...]:
    return (
        "MKT",
        None,
        T0 + i // 3,
        "yes" if i % 2 else "no",
        i % 100,
        -100,
        i % 3,
        2,
        i,
        False,
        T0,
    )


def _ticker(i: int) -> tuple[Any, ...]:
    return ("MKT", uuid.UUID(int=7), T0 + i, 50, None, 60, 1, 2, 3, 4, 5, 6, 7, i * 31, T0)


def _metrics() -> GathererMetrics:
    return GathererMetrics(f"g-{secrets.token_hex(3)}")


def _value(metrics: GathererMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, {"gatherer": metrics.gatherer_id, **labels})
    return got or 0.0


async def _until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _writer(dsn: str, spool: Path, **kw: Any) -> AsyncIterator[Writer]:
    kw.setdefault("metrics", _metrics())
    kw.setdefault("backoff_cap_s", 0.3)
    w = Writer(dsn, spool, **kw)
    try:
        await w.start()
        yield w
    finally:
        await w.stop(timeout_s=10)


def _segments(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.spool"))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


ALL_TYPES: dict[str, list[tuple[Any, ...]]] = {
    "trades": [_trade(i) for i in range(50)]
    + [
        # times before 1970 and 2000 and far ahead: the tuple codec's offset arithmetic
        (*_trade(1000)[:2], -1_234_567, *_trade(1000)[3:]),
        (*_trade(1001)[:2], 1, *_trade(1001)[3:]),
        (*_trade(1002)[:2], 946_684_799_999_999, *_trade(1002)[3:]),
        (*_trade(1003)[:2], 4_102_444_800_000_001, *_trade(1003)[3:]),
    ],
    "orderbook_deltas": [_delta(i) for i in range(30)],
    "orderbook_snapshots": [
        ("MKT", uuid.uuid4(), T0, "ws", [100, 200], [1, 2], [], [], 42, None, None, True, T0),
        ("MKT", None, T0, "rest", [], [], [9900], [2**40], -(2**63), 3, 4, False, T0),
    ],
    "tickers": [_ticker(i) for i in range(10)],
    "lifecycle_events": [
        ("market", "MKT", "created", '{"b": [1, 2.5, null], "a": "\\u00e9"}', 1, 5, 6, False, T0),
    ],
    "markets": [("MKT", "EV", "open", None, '{"x": 1}', 11, T0)],
    "events": [("EV", "SER", T0, "{}", 12, T0)],
    "series": [("SER", None, '{"t": "title"}', 13, T0)],
    "gaps": [(uuid.uuid4(), "open", 3, "orderbook_delta", ["A", "B"], 10, 12, T0, None, None, T0)],
    "dead_letters": [(uuid.uuid4(), "ws", "bad json", b"\x00\xff{", T0)],
}


# --------------------------------------------------------------------------- tests
# Tests marked both_backends also run on TimescaleDB (hypertables): the table contract, the
# 23505 -> staging path and spool replays, bad rows, a crash, and the stop-while-down spool. The
# spool file format tests (torn tail, corrupt record), the memory bound and the password check
# do not depend on the table backend and run once.
@pytest.mark.both_backends
async def test_rows_written_exactly_once_every_table(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """Every table and column type round-trips through COPY exactly once (least-privilege role)."""
    admin, dsn = _gatherer_db(pg_cluster)
    metrics = _metrics()
    async with _writer(dsn, tmp_path / "spool", metrics=metrics) as w:
        for table, rows in ALL_TYPES.items():
            for row in rows:
                w.put(table, row)
        assert await w.wait_idle(30)
        assert w.db_up
        for table, rows in ALL_TYPES.items():
            assert await _fetch(admin, table) == _expected(table, rows), table
            assert _value(metrics, "gatherer_rows_written_total", table=table) == len(rows)
        assert _value(metrics, "gatherer_db_up") == 1
    # The server reads the integers as the instants we meant (not just a self-consistent codec).
    ids = ", ".join(f"'{r[0]}'" for r in ALL_TYPES["trades"][-4:])
    got = pg_cluster.execute(
        "SELECT (extract(epoch FROM exchange_ts) * 1000000)::bigint FROM trades "
        f"WHERE trade_id = ANY(ARRAY[{ids}]::uuid[]) ORDER BY 1",
        dbname="gath",
    )
    assert [int(str(r[0])) for r in got] == [
        -1_234_567,
        1,
        946_684_799_999_999,
        4_102_444_800_000_001,
    ]


@pytest.mark.both_backends
async def test_duplicates_and_replayed_batches_store_nothing_twice(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """Re-put rows (23505 -> staging) and a spool replaying committed rows add only new rows."""
    admin, dsn = _gatherer_db(pg_cluster)
    first = [_trade(i) for i in range(100)]
    m1 = _metrics()
    async with _writer(dsn, tmp_path / "a", metrics=m1) as w:
        for row in first:
            w.put("trades", row)
        assert await w.wait_idle(30)
        # identical states from a reconnect: the same rows again, plus a few new ones
        for row in [*first[:40], _trade(500), *first[40:], _trade(501)]:
            w.put("trades", row)
        assert await w.wait_idle(30)
        # the second round hit 23505 and went through staging: only the 2 new rows counted
        assert _value(m1, "gatherer_rows_written_total", table="trades") == 102
    # a spool whose first batch committed but whose acknowledgement was lost, replayed
    spool = Spool(tmp_path / "b")
    spool.append("trades", first[50:], on_reject=lambda r, why: None)
    spool.append("trades", [_trade(i) for i in range(600, 650)], on_reject=lambda r, why: None)
    spool.append("trades", first[:10], on_reject=lambda r, why: None)
    spool.close()
    metrics = _metrics()
    async with _writer(dsn, tmp_path / "b", metrics=metrics) as w:
        assert await w.wait_idle(30)
        assert w.spool_bytes == 0
    assert _segments(tmp_path / "b") == []
    want = [*first, _trade(500), _trade(501), *(_trade(i) for i in range(600, 650))]
    assert await _fetch(admin, "trades") == _expected("trades", want)
    assert _value(metrics, "gatherer_rows_written_total", table="trades") == 50


@pytest.mark.both_backends
async def test_check_violation_goes_to_dead_letters_rest_commits(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """Bad rows (CHECK, unencodable value) become dead letters; every good row commits."""
    admin, dsn = _gatherer_db(pg_cluster)
    good = [_trade(i) for i in range(200)]
    bad_check = [_trade(900, price=20000), _trade(901, price=-1)]
    bad_type = (*_trade(902)[:3], "not an int", *_trade(902)[4:])
    metrics = _metrics()
    async with _writer(dsn, tmp_path / "s", metrics=metrics) as w:
        for i, row in enumerate(good):
            w.put("trades", row)
            if i == 50:
                w.put("trades", bad_check[0])
            if i == 120:
                w.put("trades", bad_type)
            if i == 170:
                w.put("trades", bad_check[1])
        w.put("orderbook_deltas", _delta(1))
        assert await w.wait_idle(30)
    assert await _fetch(admin, "trades") == _expected("trades", good)
    assert await _fetch(admin, "orderbook_deltas") == _expected("orderbook_deltas", [_delta(1)])
    letters = pg_cluster.execute(
        "SELECT source, reason, convert_from(raw, 'UTF8') FROM dead_letters ORDER BY reason",
        dbname="gath",
    )
    assert len(letters) == 3
    by_id = {orjson.loads(str(raw))["row"][0]: (src, reason) for src, reason, raw in letters}
    for row in bad_check:
        assert by_id[str(row[0])] == ("writer", "23514 trades_yes_price_check") or by_id[
            str(row[0])
        ] == ("writer", "23514 trades_no_price_check")
    src, reason = by_id[str(bad_type[0])]
    assert src == "writer"
    assert str(reason).startswith("encode ")
    assert _value(metrics, "gatherer_dead_letters_total", source="writer") == 3


async def _kill_during_stream(pg_cluster: PgCluster, tmp_path: Path, down_s: float) -> None:
    admin, dsn = _gatherer_db(pg_cluster)
    produced: dict[str, list[tuple[Any, ...]]] = {
        "trades": [],
        "orderbook_deltas": [],
        "tickers": [],
    }
    stop = asyncio.Event()
    max_spool = 0
    metrics = _metrics()

    async with _writer(dsn, tmp_path / "spool", metrics=metrics, batch_rows=500) as w:

        async def produce() -> None:
            nonlocal max_spool
            for i in itertools.count():
                if stop.is_set():
                    return
                rows = {"trades": _trade(i), "orderbook_deltas": _delta(i), "tickers": _ticker(i)}
                for table, row in rows.items():
                    w.put(table, row)
                    produced[table].append(row)
                if i % 10 == 0:  # a repeated identical state: stored once
                    w.put("tickers", _ticker(i))
                if i % 10 == 0:
                    max_spool = max(max_spool, w.spool_bytes)
                    await asyncio.sleep(0.005)  # pacing: ~2k rows/s per table

        producer = asyncio.create_task(produce(), name="producer")
        try:
            await _until(
                lambda: _value(metrics, "gatherer_rows_written_total", table="trades") > 1000,
                30,
                "first writes",
            )
            await asyncio.to_thread(pg_cluster.kill9)
            await _until(lambda: not w.db_up, 10, "the writer to notice")
            await asyncio.sleep(down_s)  # the outage itself
            assert w.spool_bytes > 0
            t_start = time.monotonic()
            await asyncio.to_thread(pg_cluster.start)
            await _until(lambda: w.db_up, 30, "reconnect")
            print(f"restart + reconnect {time.monotonic() - t_start:.1f} s")
            n = len(produced["trades"])
            await _until(lambda: len(produced["trades"]) > n + 2000, 30, "rows after recovery")
        finally:
            stop.set()
            await producer
        t_idle = time.monotonic()
        assert await w.wait_idle(120)
        print(f"idle after {time.monotonic() - t_idle:.1f} s")
        assert w.spool_bytes == 0
        assert _segments(tmp_path / "spool") == []
    assert max_spool > 0
    for table, rows in produced.items():
        want = _expected(table, rows)
        if table == "tickers":
            want = Counter(set(want))
        got = await _fetch(admin, table)
        assert sum(got.values()) == sum(want.values()), table
        assert got == want, table


@pytest.mark.both_backends
async def test_kill9_during_stream_loses_nothing(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """PostgreSQL SIGKILLed for ~5 s mid-stream: every row present exactly once, spool emptied."""
    await _kill_during_stream(pg_cluster, tmp_path, down_s=5)


@pytest.mark.chaos
async def test_kill9_30s_during_stream_loses_nothing(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """PostgreSQL SIGKILLed for 30 s mid-stream: every row present exactly once, spool emptied."""
    await _kill_during_stream(pg_cluster, tmp_path, down_s=30)


async def test_rss_bounded_while_spooling(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """Starting with the DB down, 200k rows spool with memory bounded by the queue; all land."""
    admin, dsn = _gatherer_db(pg_cluster)
    pg_cluster.stop()
    queue_rows = 5000

    def rows(start: int, n: int) -> Iterator[tuple[Any, ...]]:
        return (_trade(i) for i in range(start, start + n))

    async with _writer(dsn, tmp_path / "spool", queue_rows=queue_rows, batch_rows=2000) as w:
        assert not w.db_up
        deepest = 0

        async def feed(source: Iterator[tuple[Any, ...]]) -> None:
            nonlocal deepest
            for i, row in enumerate(source):
                w.put("trades", row)
                deepest = max(deepest, w.queue_depth("trades"))
                if i % 20_000 == 0:
                    await asyncio.sleep(0)

        await feed(rows(0, 20_000))  # warm up allocators, orjson, the spool
        before = _rss_kib()
        await feed(rows(20_000, 200_000))
        after = _rss_kib()
        assert deepest <= queue_rows
        # 200k rows held in memory would take ~100 MB; the bound keeps growth to a few MB.
        print(f"RSS {before} KiB -> {after} KiB while spooling 200k rows")
        assert after - before < 30_000, f"RSS grew {after - before} KiB"
        assert w.spool_bytes > 10_000_000
        await asyncio.to_thread(pg_cluster.start)
        assert await w.wait_idle(180)
    got = pg_cluster.execute("SELECT count(*), count(DISTINCT trade_id) FROM trades", dbname="gath")
    assert got == [(220_000, 220_000)]
    assert _segments(tmp_path / "spool") == []
    del admin


async def test_torn_spool_tail_ignored_complete_records_replayed(
    pg_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-append leaves a torn record: the complete ones replay, the tail is logged."""
    admin, dsn = _gatherer_db(pg_cluster)
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    complete = [[_trade(i) for i in range(k * 10, k * 10 + 10)] for k in range(3)]
    for batch in complete:
        spool.append("trades", batch, on_reject=lambda r, why: None)
    spool.close()
    [segment] = _segments(spool_dir)
    torn = encode_frame(encode_payload("trades", [_trade(99)]))
    with segment.open("ab") as f:
        f.write(torn[: len(torn) // 2])
    with caplog.at_level(logging.INFO):
        async with _writer(dsn, spool_dir) as w:
            assert await w.wait_idle(30)
    assert await _fetch(admin, "trades") == _expected("trades", [r for b in complete for r in b])
    assert "torn tail" in caplog.text
    assert "replayed 3 batches (30 rows) from spool" in caplog.text
    assert _segments(spool_dir) == []


@pytest.mark.both_backends
async def test_stop_with_db_down_spools_and_next_writer_replays(
    pg_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() while the DB is down spools every queued row; a new Writer replays them once."""
    admin, dsn = _gatherer_db(pg_cluster)
    spool_dir = tmp_path / "spool"
    rows = [_trade(i) for i in range(3000)]
    w = Writer(dsn, spool_dir, metrics=_metrics(), backoff_cap_s=0.3, flush_interval_s=5.0)
    await w.start()
    try:
        w.put("trades", rows[0])
        assert await w.wait_idle(30)
        await asyncio.to_thread(pg_cluster.kill9)
        for row in rows[1:]:
            w.put("trades", row)
    finally:
        await w.stop(timeout_s=3)
    assert w.spool_bytes > 0
    assert _segments(spool_dir)
    await asyncio.to_thread(pg_cluster.start)
    with caplog.at_level(logging.INFO):
        async with _writer(dsn, spool_dir) as w2:
            assert await w2.wait_idle(30)
    assert await _fetch(admin, "trades") == _expected("trades", rows)
    assert _segments(spool_dir) == []
    assert "from spool" in caplog.text


async def test_wrong_password_fails_fast(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """A permanent refusal at start raises instead of spooling forever."""
    _gatherer_db(pg_cluster)
    w = Writer(
        pg_cluster.dsn("gath", user="writer", password="wrong"), tmp_path, metrics=_metrics()
    )
    with pytest.raises(asyncpg.InvalidPasswordError):
        await w.start()
    await w.stop()


async def test_rows_put_after_stop_are_spooled(fresh_db: str, tmp_path: Path) -> None:
    """A row that arrives after stop() is fsync'd to the spool, not dropped."""
    migrate(fresh_db, "gatherer")
    async with _writer(fresh_db, tmp_path) as w:
        assert await w.wait_idle(10)
    w.put("trades", _trade(1))
    assert w.spool_bytes > 0
    async with _writer(fresh_db, tmp_path) as w2:
        assert await w2.wait_idle(10)
    assert await _fetch(fresh_db, "trades") == _expected("trades", [_trade(1)])


async def test_corrupt_spool_record_skipped_segment_kept(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """A record with a bad checksum is skipped, intact ones replay, the segment is set aside."""
    admin, dsn = _gatherer_db(pg_cluster)
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    batches = [[_trade(i) for i in range(k * 10, k * 10 + 10)] for k in range(3)]
    sizes = [spool.append("trades", b, on_reject=lambda r, why: None) for b in batches]
    spool.close()
    [segment] = _segments(spool_dir)
    data = bytearray(segment.read_bytes())
    data[sizes[0] + 40] ^= 0xFF  # inside the second record's payload
    segment.write_bytes(bytes(data))
    async with _writer(dsn, spool_dir) as w:
        assert await w.wait_idle(30)
    assert await _fetch(admin, "trades") == _expected("trades", [*batches[0], *batches[2]])
    assert _segments(spool_dir) == []
    assert [p.name for p in spool_dir.glob("*.corrupt")] == [segment.name + ".corrupt"]


def _spooled_rows(spool: Path, table: str) -> list[tuple[Any, ...]]:
    """Every intact row of ``table`` in the spool's segment files, read from disk."""
    rows: list[tuple[Any, ...]] = []
    for segment in _segments(spool):
        for item in iter_frames(segment.read_bytes()):
            if isinstance(item, Frame):
                name, batch = decode_payload(item.payload)
                if name == table:
                    rows.extend(batch)
    return rows


@pytest.mark.both_backends
async def test_spool_bound_signals_backpressure_keeps_rows_and_releases(
    pg_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DB down, tiny spool_max_bytes: the bound signals back-pressure once, rows accepted after
    it still spool (a soft bound), all land exactly once and the signal clears below low water."""
    admin, dsn = _gatherer_db(pg_cluster)
    spool_dir = tmp_path / "spool"
    bound = 64_000
    signals: list[bool] = []
    metrics = _metrics()
    produced: list[tuple[Any, ...]] = []
    released_at: list[int] = []

    def on_backpressure(full: bool) -> None:
        signals.append(full)
        if not full:
            released_at.append(w.spool_bytes)

    async with _writer(
        dsn,
        spool_dir,
        metrics=metrics,
        batch_rows=100,
        queue_rows=200,
        spool_max_bytes=bound,
        on_backpressure=on_backpressure,
    ) as w:
        assert _value(metrics, "gatherer_spool_max_bytes") == bound
        w.put("trades", _trade(-1))
        assert await w.wait_idle(30)
        await asyncio.to_thread(pg_cluster.kill9)
        deadline = time.monotonic() + 30
        while not w.spool_full:
            assert time.monotonic() < deadline, "the bound was never reached"
            for _ in range(50):
                produced.append(_trade(len(produced)))
                w.put("trades", produced[-1])
            await asyncio.sleep(0.01)
        assert signals == [True]
        assert not w.db_up
        # Rows accepted after the signal (in flight when the gatherer stops reading) are kept.
        for _ in range(500):
            produced.append(_trade(len(produced)))
            w.put("trades", produced[-1])
        await _until(lambda: w.queue_depth("trades") == 0, 10, "the queue to reach the spool")
        assert w.spool_full
        assert w.spool_bytes > bound  # the overshoot is what was accepted past the bound
        assert _value(metrics, "gatherer_spool_full") == 1
        assert _value(metrics, "gatherer_spool_full_episodes_total") == 1
        assert Counter(_spooled_rows(spool_dir, "trades")) == _expected("trades", produced)
        with caplog.at_level(logging.WARNING):
            await asyncio.to_thread(pg_cluster.start)
            await _until(lambda: not w.spool_full, 60, "back-pressure released")
            assert await w.wait_idle(60)
        assert signals == [True, False]
        assert released_at[0] < bound * 0.9
        assert _value(metrics, "gatherer_spool_full") == 0
    assert await _fetch(admin, "trades") == _expected("trades", [_trade(-1), *produced])
    assert _segments(spool_dir) == []


async def test_spool_disk_refusal_keeps_rows_in_memory_and_recovers(
    pg_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real OSError from the spool (EFBIG: RLIMIT_FSIZE below the segment's next record) keeps
    the rows queued, cuts the partial record off, signals back-pressure; once the disk takes
    writes again everything spools and, with the DB back, lands exactly once."""
    admin, dsn = _gatherer_db(pg_cluster)
    await asyncio.to_thread(pg_cluster.stop)
    spool_dir = tmp_path / "spool"
    signals: list[bool] = []
    first = [_trade(i) for i in range(300)]
    second = [_trade(i) for i in range(300, 700)]
    async with _writer(
        dsn, spool_dir, batch_rows=100, on_backpressure=signals.append, flush_interval_s=0.02
    ) as w:
        assert not w.db_up
        for row in first:
            w.put("trades", row)
        await _until(lambda: w.queue_depth("trades") == 0 and w.spool_bytes > 0, 10, "spooled")
        on_disk = sum(p.stat().st_size for p in _segments(spool_dir))
        assert on_disk == w.spool_bytes
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        # The current segment may grow by 100 bytes: the next record is written in part, then
        # the kernel refuses (EFBIG): the writer must cut that part off and keep the rows.
        resource.setrlimit(resource.RLIMIT_FSIZE, (on_disk + 100, limits[1]))
        try:
            with caplog.at_level(logging.WARNING):
                for row in second:
                    w.put("trades", row)
                await _until(lambda: w.disk_error is not None, 10, "the disk refusal")
                assert w.spool_full
                assert signals == [True]
                await asyncio.sleep(0)  # let the writer's step finish its pass over the queue
                assert w.queue_depth("trades") == len(second)
                assert sum(p.stat().st_size for p in _segments(spool_dir)) == on_disk
                assert w.spool_bytes == on_disk
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)
        assert "File too large" in (w.disk_error or "") or "Errno 27" in (w.disk_error or "")
        assert "refused an append" in caplog.text
        await _until(lambda: not w.spool_full, 10, "the disk to take rows again")
        await _until(lambda: w.queue_depth("trades") == 0, 10, "the kept rows to spool")
        assert signals == [True, False]
        assert w.disk_error is None
        assert Counter(_spooled_rows(spool_dir, "trades")) == _expected("trades", first + second)
        await asyncio.to_thread(pg_cluster.start)
        assert await w.wait_idle(60)
    assert await _fetch(admin, "trades") == _expected("trades", first + second)
    assert _segments(spool_dir) == []


async def test_permanent_refusal_mid_run_keeps_spooling_and_retrying(
    pg_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database drops the writer and then refuses its password (a permanent error): the
    reconnect loop must not give up (rows would be lost), says so once, keeps spooling, and
    reconnects as soon as the password is accepted again; every row lands exactly once."""
    admin, dsn = _gatherer_db(pg_cluster)
    password = urlsplit(dsn).password
    rows = [_trade(i) for i in range(600)]
    async with _writer(
        dsn, tmp_path / "spool", batch_rows=100, backoff_base_s=0.01, backoff_cap_s=0.05
    ) as w:
        for row in rows[:200]:
            w.put("trades", row)
        assert await w.wait_idle(30)
        await asyncio.to_thread(pg_cluster.execute, "ALTER ROLE writer PASSWORD 'not-it'")
        await asyncio.to_thread(
            pg_cluster.execute,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'kalshi-data-gatherer-writer'",
        )
        with caplog.at_level(logging.WARNING, logger="gatherer.writer"):
            for row in rows[200:400]:
                w.put("trades", row)
            await _until(lambda: "refuses connections" in caplog.text, 30, "the refusal")
            await _until(lambda: w.spool_bytes > 0, 10, "rows spooled")
            refusals = caplog.text.count("refuses connections")
            for row in rows[400:]:
                w.put("trades", row)
            await asyncio.sleep(0.5)  # many more attempts at a 50 ms cap
            assert not w.db_up
            assert caplog.text.count("refuses connections") == refusals == 1
            assert "InvalidPasswordError" in caplog.text
            assert password
            assert password not in caplog.text
        await asyncio.to_thread(pg_cluster.execute, f"ALTER ROLE writer PASSWORD '{password}'")
        await _until(lambda: w.db_up, 30, "reconnect")
        assert await w.wait_idle(60)
    assert await _fetch(admin, "trades") == _expected("trades", rows)
    assert _segments(tmp_path / "spool") == []


async def test_db_killed_during_a_stalled_copy_spools_at_once(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """The writer's COPY stalls mid-stream (its backend waits for a table lock and reads
    nothing: the socket buffers fill and the transport pauses, so asyncpg's COPY of records
    waits at its next 512 KiB flush), then the server is killed -9. The writer must notice at
    once, well before its 60 s write watchdog (whose terminate() would not wake that wait
    either), spool the batch and store every row exactly once after the restart; no future is
    left unretrieved (the autouse guard)."""
    admin, dsn = _gatherer_db(pg_cluster)
    # ~20 MB of COPY data in one transaction: more than loopback socket buffers hold.
    rows = [(*_trade(i)[:1], f"MKT-{i % 7}-" + "x" * 300, *_trade(i)[2:]) for i in range(50_000)]
    async with _writer(
        dsn, tmp_path / "spool", batch_rows=50_000, queue_rows=100_000, write_timeout_s=60
    ) as w:
        w.put("trades", _trade(-1))  # caches the COPY's column query: it takes no lock later
        assert await w.wait_idle(30)
        locker = await asyncpg.connect(admin)
        try:
            await locker.execute("BEGIN; LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
            for row in rows:
                w.put("trades", row)
            allowed = w._conn._protocol.writing_allowed  # asyncpg internals: the stall itself
            await _until(lambda: not allowed.is_set(), 30, "the COPY to stall on a full socket")
            await asyncio.sleep(0.05)  # the COPY is in its wait for the transport
            await asyncio.to_thread(pg_cluster.kill9)
        finally:
            locker.terminate()
        started = time.monotonic()
        await _until(lambda: not w.db_up, 10, "the writer to notice")
        noticed = time.monotonic() - started
        await _until(lambda: w.spool_bytes > 0 and w.queue_depth("trades") == 0, 10, "spooled")
        print(f"\nstalled COPY: the writer noticed the kill after {noticed:.2f} s")
        await asyncio.to_thread(pg_cluster.start)
        assert await w.wait_idle(120)
    assert noticed < 5, noticed
    assert await _fetch(admin, "trades") == _expected("trades", [_trade(-1), *rows])


# --------------------------------------------------------------------------- the COPY guard
#: What asyncio says about a future or task nobody finished with (issue 16).
NEVER_RETRIEVED = ("exception was never retrieved", "Task was destroyed but it is pending")
#: Rows of the guard test: ~2 MiB encoded, past asyncpg's 512 KiB flush (where its COPY of
#: records waits for the transport) several times.
PAUSED_COPY_ROWS = 4000


class _PausingRows:
    """The COPY's rows; after the first few, pauses the connection's transport for writing: what
    uvloop does when a write leaves more than the high-water mark buffered (a backend that
    stopped reading). asyncpg's COPY then waits at its next 512 KiB flush."""

    def __init__(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        self._conn = conn
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for i, row in enumerate(self._rows):
            if i == 10:
                self._conn._protocol.pause_writing()
            yield row


def _copy_records_then_kill(
    cluster: PgCluster, guarded: bool
) -> tuple[list[str], BaseException | None, float]:
    """Under uvloop (as the gatherer runs): a COPY of records stalls at a flush on a paused
    transport and the server is killed -9 in that wait. Returns what asyncio reported as never
    retrieved, the error the COPY ended with and how long it took to end after the kill."""
    import gc

    import uvloop

    from kalshi_data.pgcopy import copy_records

    lost: list[str] = []
    rows = [(i, "x" * 500) for i in range(PAUSED_COPY_ROWS)]

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if any(s in str(context.get("message")) for s in NEVER_RETRIEVED):
            lost.append(repr(context.get("exception")))

    async def run() -> tuple[BaseException | None, float]:
        asyncio.get_running_loop().set_exception_handler(handler)
        conn = await asyncpg.connect(cluster.dsn(), timeout=5)
        error: BaseException | None = None
        took = math.inf
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS paused (i int, s text)")
            async with conn.transaction():
                records: Any = _PausingRows(conn, rows)
                if guarded:
                    copy = asyncio.ensure_future(copy_records(conn, "paused", records, ["i", "s"]))
                else:
                    copy = asyncio.ensure_future(
                        conn.copy_records_to_table("paused", records=records, columns=["i", "s"])
                    )
                allowed = conn._protocol.writing_allowed
                await _until(lambda: not allowed.is_set(), 5, "the pause")
                await asyncio.sleep(0.05)  # the COPY is in its wait for the transport
                assert not copy.done()
                await asyncio.to_thread(cluster.kill9)
                started = time.monotonic()
                try:
                    # The raw driver hangs here (nothing resumes writing on a lost connection):
                    # the deadline stands in for whatever cancels it (the writer's watchdog).
                    await asyncio.wait_for(copy, 5)
                except Exception as exc:
                    error = exc  # the COPY's own error, not the transaction's exit after it
                    raise
                finally:
                    took = time.monotonic() - started
        except Exception as exc:
            error = error or exc
        finally:
            conn.terminate()
        del conn
        gc.collect()
        await asyncio.sleep(0)
        return error, took

    error, took = uvloop.run(run())
    gc.collect()
    cluster.start()
    return lost, error, took


def test_copy_records_killed_while_paused_leaves_no_unretrieved_future(
    pg_cluster: PgCluster,
) -> None:
    """The writer's COPY of records (``pgcopy.copy_records``) stalled at a flush on a paused
    transport when the server dies: it ends at once with a retryable connection error and
    leaves nothing unretrieved. The raw driver, as a control, hangs until cancelled and leaks
    the COPY's result future (else this test proves nothing)."""
    from kalshi_data.resilience import ErrorClass, classify

    control, raw_error, raw_took = _copy_records_then_kill(pg_cluster, guarded=False)
    lost, error, took = _copy_records_then_kill(pg_cluster, guarded=True)
    print(
        f"\nraw: {raw_error!r} after {raw_took:.1f} s, {len(control)} leaked; "
        f"guarded: {error!r} after {took:.2f} s, {len(lost)} leaked"
    )
    assert raw_error is not None
    assert raw_took >= 4.5, raw_took  # hung until the deadline cancelled it
    assert len(control) == 1, control
    assert lost == []
    assert isinstance(error, asyncpg.ConnectionDoesNotExistError), repr(error)
    assert classify(error) is ErrorClass.RETRYABLE
    assert took < 4, took  # ended by the loss, not by the deadline
