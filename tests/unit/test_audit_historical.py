"""The audit's live/historical split (pure): every instant of a window in exactly one source,
the watermark's stored form, and the cutoff response."""

from __future__ import annotations

import itertools

import pytest

from kalshi_data.kalshi.rest import BadResponse
from kalshi_data.tools.audit import (
    COMPLETE,
    HISTORICAL,
    HISTORICAL_TRADES_PATH,
    LIVE,
    TRADES_PATH,
    Segment,
    Watermark,
    parse_cutoff,
    rfc3339_us,
    split_window,
)

S = 1_000_000
START, END = 7200, 10800


def _source(segments: list[Segment], created_us: int) -> list[str]:
    return [seg.source for seg in segments if seg.holds(created_us)]


def test_no_partition_reads_the_whole_window_live() -> None:
    split, segs = split_window(START, END, None)
    assert split == START * S
    assert segs == [Segment(LIVE, START * S, END * S)]


@pytest.mark.parametrize(
    ("cutoff_us", "sources"),
    [
        (0, [LIVE]),  # the epoch: Kalshi with nothing moved yet
        (START * S, [LIVE]),
        (START * S + 1, [HISTORICAL, LIVE]),
        (9000 * S + 500, [HISTORICAL, LIVE]),  # not a whole millisecond
        (END * S - 1, [HISTORICAL, LIVE]),
        (END * S, [HISTORICAL]),
        (END * S + 3600 * S, [HISTORICAL]),
    ],
)
def test_split_covers_the_window_once(cutoff_us: int, sources: list[str]) -> None:
    split, segs = split_window(START, END, cutoff_us)
    assert [s.source for s in segs] == sources
    assert split == min(max(cutoff_us, START * S), END * S)
    assert segs[0].lo_us == START * S
    assert segs[-1].hi_us == END * S
    for a, b in itertools.pairwise(segs):
        assert a.hi_us == b.lo_us == split
    probes = {START * S, END * S - 1, split - 1, split, split + 1, cutoff_us - 1, cutoff_us}
    for t in probes:
        got = _source(segs, t)
        if START * S <= t < END * S:
            assert got == [HISTORICAL if t < cutoff_us else LIVE], t
        else:
            assert got == [], t


def test_exact_boundary_uses_the_microsecond_not_the_millisecond() -> None:
    """A trade 200 µs after a cutoff inside the same millisecond is live, one before it is
    historical: flooring both to the millisecond would lose the live one."""
    cutoff = 9000 * S + 500
    _, segs = split_window(START, END, cutoff)
    assert _source(segs, 9000 * S + 700) == [LIVE]
    assert _source(segs, 9000 * S + 300) == [HISTORICAL]


def test_segment_queries_span_whole_seconds() -> None:
    _, (hist, live) = split_window(START, END, 9000 * S + 500)
    assert hist.path == HISTORICAL_TRADES_PATH
    assert live.path == TRADES_PATH
    assert hist.query(1000) == {"min_ts": START, "max_ts": 9001, "limit": 1000}
    assert live.query(25) == {"min_ts": 9000, "max_ts": END, "limit": 25}


def test_watermark_round_trip_and_old_form() -> None:
    for mark in (
        Watermark(HISTORICAL, 9000 * S, "abc|def"),
        Watermark(LIVE, START * S, None),
        Watermark(COMPLETE, END * S, None),
    ):
        assert Watermark.parse(mark.text()) == mark
    assert Watermark.parse(None) is None
    old = Watermark.parse("dDoxMjM")  # before the historical partition: a bare live cursor
    assert old == Watermark(LIVE, None, "dDoxMjM")
    assert old.resumable(START, START * S)
    assert not old.resumable(START, START * S + 1)


def test_watermark_is_not_resumable_once_the_cutoff_moved_into_the_window() -> None:
    split1, _ = split_window(START, END, 8000 * S)
    mark = Watermark(LIVE, split1, "cursor")
    assert mark.resumable(START, split_window(START, END, 8000 * S)[0])
    assert not mark.resumable(START, split_window(START, END, 9500 * S)[0])
    # a move that stays outside the window changes nothing
    done_before = Watermark(LIVE, START * S, "c")
    assert done_before.resumable(START, split_window(START, END, START * S - 60 * S)[0])


def test_cutoff_response() -> None:
    body = {
        "market_settled_ts": "2023-11-07T05:31:56Z",
        "trades_created_ts": "2023-11-07T05:31:56Z",
        "orders_updated_ts": "2023-11-07T05:31:56Z",
    }
    assert parse_cutoff(body) == 1_699_335_116 * S
    with pytest.raises(BadResponse):
        parse_cutoff({"market_settled_ts": "2023-11-07T05:31:56Z"})
    with pytest.raises(BadResponse):
        parse_cutoff({"trades_created_ts": "yesterday"})


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-01-01T00:01:57.667166Z", 1_767_225_717_667_166),
        ("2026-01-01T00:01:57.6Z", 1_767_225_717_600_000),
        ("2026-01-01T00:01:57.667166999Z", 1_767_225_717_667_166),
        ("2026-01-01T01:01:57+01:00", 1_767_225_717_000_000),
    ],
)
def test_rfc3339_us(text: str, us: int) -> None:
    assert rfc3339_us(text) == us


def test_rfc3339_needs_a_zone() -> None:
    with pytest.raises(ValueError):
        rfc3339_us("2026-01-01T00:01:57")
