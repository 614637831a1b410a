"""The gatherer writer's parts without a database: queues and batching, back-pressure, bisection,
dead letters and spool replay (the database side is tests/integration/test_gatherer_writer.py)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatherer.isolation import REJECTED_FILE, DeadLetters, dead_letter_row, isolate
from gatherer.metrics import GathererMetrics
from gatherer.replay import Replayer, SegmentChunks, merge_chunk
from gatherer.spill import Backpressure, RateLimitedLog, Spill
from gatherer.spool import Damage, Spool, SpoolBatch
from gatherer.writequeue import Put, TableQueues, chunked, shape_error
from kalshi_data.errors import PermanentError, TransientError

Row = tuple[Any, ...]
NCOLS = {"a": 2, "b": 1, "dead_letters": 5}


def _queues(batch_rows: int = 3, queue_rows: int = 5) -> TableQueues:
    return TableQueues(NCOLS, batch_rows=batch_rows, queue_rows=queue_rows)


# --------------------------------------------------------------------------- queues, batching
def test_put_asks_for_a_flush_at_a_full_batch_and_a_spill_at_the_bound() -> None:
    q = _queues(batch_rows=3, queue_rows=5)
    got = [q.put("a", (i, i)) for i in range(6)]
    assert got == [Put.QUEUED, Put.QUEUED, Put.BATCH, Put.BATCH, Put.SPILL, Put.SPILL]
    assert q.depth("a") == 6
    assert q.ready()
    assert not _queues().ready()


def test_take_batches_cuts_at_most_batch_rows_per_table_oldest_first() -> None:
    q = _queues(batch_rows=3, queue_rows=10)
    for i in range(7):
        q.put("a", (i, i))
    q.put("b", ("x",))
    assert q.take_batches() == [("a", [(0, 0), (1, 1), (2, 2)]), ("b", [("x",)])]
    assert q.take_batches() == [("a", [(3, 3), (4, 4), (5, 5)])]
    assert q.take_batches() == [("a", [(6, 6)])]
    assert q.take_batches() == []
    assert not q.has_rows()


def test_push_front_restores_the_original_order() -> None:
    q = _queues(batch_rows=2, queue_rows=10)
    for i in range(5):
        q.put("a", (i, i))
    first = q.take_batches()
    q.push_front([("a", rows) for _, rows in first])
    assert [r[0] for r in q["a"]] == [0, 1, 2, 3, 4]
    q.push_front([("a", [(-2, 0)]), ("b", [("y",)]), ("a", [(-1, 0)])])
    assert [r[0] for r in q["a"]][:3] == [-2, -1, 0]
    assert q["b"][0] == ("y",)
    assert q.total() == 8
    assert q.clear() == 8
    assert q.total() == 0


def test_shape_error_names_unknown_tables_and_wrong_widths() -> None:
    assert shape_error(NCOLS, "a", (1, 2)) is None
    assert shape_error(NCOLS, "a", (1,)) == "writer: 1 values for 2 columns"
    assert shape_error(NCOLS, "x" * 100, ()) == f"writer: unknown table {'x' * 64!r}"


@given(st.integers(0, 50), st.integers(1, 9))
def test_chunked_covers_every_row_once_in_order(n: int, size: int) -> None:
    rows = [(i,) for i in range(n)]
    parts = list(chunked(rows, size))
    assert [r for p in parts for r in p] == rows
    assert all(0 < len(p) <= size for p in parts)


def test_queue_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_rows"):
        TableQueues(NCOLS, batch_rows=0, queue_rows=5)
    with pytest.raises(ValueError, match="batch_rows"):
        TableQueues(NCOLS, batch_rows=6, queue_rows=5)


# --------------------------------------------------------------------------- back-pressure
def test_backpressure_enters_at_the_bound_and_leaves_below_low_water() -> None:
    bp = Backpressure(1000, low_water=0.9)
    assert bp.update(999, None, 1.0) is None
    assert bp.update(1000, None, 2.0) is True
    assert (bp.full, bp.full_since, bp.episodes) == (True, 2.0, 1)
    assert bp.update(950, None, 3.0) is None  # below the bound, above low water: still full
    assert bp.update(899, None, 4.0) is False
    assert not bp.full
    assert bp.update(1200, None, 5.0) is True
    assert bp.episodes == 2


def test_a_refusing_disk_is_full_whatever_the_size_until_it_takes_rows() -> None:
    bp = Backpressure(0)  # no bound
    assert bp.update(10**12, None, 0.0) is None
    assert bp.update(0, "ENOSPC", 1.0) is True
    assert bp.update(0, "ENOSPC", 2.0) is None
    assert bp.update(10**12, None, 3.0) is False  # no bound: the disk taking rows is enough
    bounded = Backpressure(100)
    assert bounded.update(0, "EIO", 0.0) is True
    assert bounded.update(95, None, 1.0) is None  # the disk is back, the spool is not low
    assert bounded.update(50, None, 2.0) is False
    with pytest.raises(ValueError, match="spool_max_bytes"):
        Backpressure(-1)


def test_rate_limited_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    say = RateLimitedLog(10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="gatherer.writer"):
        for t in (0.0, 1.0, 9.0, 10.5, 11.0):
            now[0] = t
            say(logging.WARNING, "spill %s", t)
    assert [r.getMessage() for r in caplog.records] == [
        "spill 0.0",
        "spill 10.5 (2 similar messages suppressed)",
    ]


# --------------------------------------------------------------------------- bisection
class _Db:
    """A stand-in for the commit, refusing any chunk that holds a bad row (a CHECK violation),
    or everything once ``down_after`` commits were attempted (a lost connection)."""

    def __init__(self, bad: set[int], down_after: int | None = None) -> None:
        self.bad = bad
        self.down_after = down_after
        self.attempts = 0
        self.stored: list[Row] = []

    async def commit(self, table: str, rows: list[Row]) -> None:
        self.attempts += 1
        if self.down_after is not None and self.attempts > self.down_after:
            raise TransientError("connection lost")
        if any(r[0] in self.bad for r in rows):
            raise PermanentError(f"{table}: check violated")
        self.stored.extend(rows)


@given(st.integers(1, 64), st.sets(st.integers(0, 63), max_size=6))
async def test_isolate_stores_good_rows_once_and_dead_letters_each_bad_row(
    n: int, bad: set[int]
) -> None:
    rows = [(i, "x") for i in range(n)]
    bad = {b for b in bad if b < n}
    db = _Db(bad)
    dead: list[tuple[str, Row, str]] = []
    outcome = await isolate([("a", rows)], db.commit, lambda *d: dead.append(d))
    assert outcome.failed is None
    assert outcome.rest == []
    assert sorted(db.stored) == [r for r in rows if r[0] not in bad]
    assert sorted(r for _, r, _ in dead) == [r for r in rows if r[0] in bad]
    assert all(why == "encode PermanentError: a: check violated" for _, _, why in dead)
    # Bisection, not one commit per row: about 2 * bad * log2(n) attempts at most.
    assert db.attempts <= 1 + 2 * max(1, len(bad)) * max(1, n.bit_length())


async def test_isolate_hands_back_everything_uncommitted_on_a_retryable_failure() -> None:
    a = [(i, "x") for i in range(8)]
    b = [(100 + i,) for i in range(3)]
    db = _Db(bad={5}, down_after=3)
    dead: list[Any] = []
    outcome = await isolate([("a", a), ("b", b)], db.commit, lambda *d: dead.append(d))
    assert isinstance(outcome.failed, TransientError)
    rest = [r for _, rows in outcome.rest for r in rows]
    # Nothing lost, nothing twice: committed + dead-lettered + handed back == all, in order.
    assert sorted([*db.stored, *(r for _, r, _ in dead), *rest]) == sorted([*a, *b])
    assert [t for t, _ in outcome.rest][-1] == "b"
    assert rest == sorted(rest)


async def test_isolate_lets_cancellation_through() -> None:
    async def commit(_table: str, _rows: list[Row]) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await isolate([("a", [(1, 2)])], commit, lambda *d: None)


# --------------------------------------------------------------------------- dead letters
def test_dead_letters_render_the_row_and_a_refused_dead_letter_goes_to_a_file(
    tmp_path: Path,
) -> None:
    metrics = GathererMetrics("g-parts")
    counter = metrics.dead_letters.labels("g-parts", "writer")
    stored: list[Row] = []
    dl = DeadLetters(tmp_path, counter, stored.append)
    dl("trades", (uuid.UUID(int=1), b"\x00", 7), "23514 c")
    (row,) = stored
    assert row[1:3] == ("writer", "23514 c")
    assert orjson.loads(row[3]) == {
        "table": "trades",
        "row": [str(uuid.UUID(int=1)), {"$base64": "AA=="}, 7],
    }
    dl("dead_letters", dead_letter_row("t", (1,), "r", now_us=5), "23502 x")
    assert len(stored) == 1
    line = orjson.loads((tmp_path / REJECTED_FILE).read_bytes())
    assert (line["table"], line["reason"]) == ("dead_letters", "23502 x")
    value = metrics.registry.get_sample_value(
        "gatherer_dead_letters_total", {"gatherer": "g-parts", "source": "writer"}
    )
    assert value == 2


# --------------------------------------------------------------------------- spill
def test_spill_signals_backpressure_at_the_bound_and_keeps_every_row(tmp_path: Path) -> None:
    metrics = GathererMetrics("g-spill")
    g = metrics.gatherer_id
    queues = _queues(batch_rows=2, queue_rows=4)
    signals: list[bool] = []
    spool = Spool(tmp_path / "spool")
    spill = Spill(
        spool,
        queues,
        state=Backpressure(200),
        metrics=(
            metrics.spool_bytes.labels(g),
            metrics.spool_full.labels(g),
            metrics.spool_full_episodes.labels(g),
        ),
        on_reject=lambda *a: None,
        on_backpressure=signals.append,
    )
    rows = [(i, "y" * 40) for i in range(9)]
    for r in rows:
        queues.put("a", r)
    spill.all_queues()
    assert queues.depth("a") == 0
    assert spool.bytes > 200
    assert signals == [True]
    assert metrics.registry.get_sample_value("gatherer_spool_full", {"gatherer": g}) == 1
    spool.seal()
    got = [
        row
        for seg in spool.closed_segments()
        for item in spool.read(seg)
        if isinstance(item, SpoolBatch)
        for row in item.rows
    ]
    assert got == rows
    for seg in spool.closed_segments():
        spool.remove(seg)
    spill.refresh()
    assert signals == [True, False]
    assert metrics.registry.get_sample_value("gatherer_spool_bytes", {"gatherer": g}) == 0


# --------------------------------------------------------------------------- replay
def _batch(offset: int, end: int, table: str, n: int) -> SpoolBatch:
    return SpoolBatch(offset, end, table, [(offset, i) for i in range(n)])


def test_segment_chunks_resume_and_report_corruption_not_torn_tails() -> None:
    items: list[SpoolBatch | Damage] = [
        _batch(0, 10, "a", 2),
        _batch(10, 20, "a", 2),
        Damage(20, 25, "torn_tail"),
        _batch(25, 30, "b", 3),
        _batch(30, 40, "a", 1),
    ]
    chunks = SegmentChunks(items, resume=0, batch_rows=3)
    assert [[b.offset for b in c] for c in chunks] == [[0, 10], [25], [30]]
    assert not chunks.corrupt
    resumed = SegmentChunks([*items, Damage(40, 41, "corrupt")], resume=20, batch_rows=3)
    assert [[b.offset for b in c] for c in resumed] == [[25], [30]]
    assert resumed.corrupt


def test_merge_chunk_groups_rows_per_table_and_sets_unknown_tables_apart() -> None:
    chunk = [
        _batch(0, 1, "a", 1),
        _batch(1, 2, "zz", 1),
        _batch(2, 3, "b", 1),
        _batch(3, 4, "a", 2),
    ]
    batches, unknown = merge_chunk(chunk, NCOLS)
    assert batches == [("a", [(0, 0), (3, 0), (3, 1)]), ("b", [(2, 0)])]
    assert [b.table for b in unknown] == ["zz"]


async def test_replay_resumes_after_the_last_committed_chunk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(6):
        spool.append("a", [(i, "r")], on_reject=lambda row, why: None)
    spool.sync()
    committed: list[list[int]] = []
    calls = 0
    segments_done: list[int] = []

    async def commit(chunk: list[SpoolBatch]) -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:  # the database fails once, at the third chunk
            return False
        committed.append([b.rows[0][0] for b in chunk])
        return True

    replayer = Replayer(
        spool, batch_rows=2, commit=commit, after_segment=lambda: segments_done.append(1)
    )
    await replayer.replay()
    assert committed == [[0, 1], [2, 3]]
    assert spool.has_data()
    assert segments_done == []
    await replayer.replay()  # resumes at row 4: rows 0..3 are not replayed again
    assert committed == [[0, 1], [2, 3], [4, 5]]
    assert not spool.has_data()
    assert segments_done == [1]
