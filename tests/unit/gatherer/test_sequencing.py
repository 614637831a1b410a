"""Order-book delta occurrence index k and gap/suspect bookkeeping (gatherer/sequencing.py)."""

from __future__ import annotations

import uuid
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from gatherer.sequencing import GapBook, OccurrenceIndex, gap_row
from kalshi_data.tables import GAPS

_keys = st.tuples(
    st.sampled_from(["A", "B"]),
    st.integers(min_value=1_000_000, max_value=1_000_003),
    st.sampled_from(["yes", "no"]),
    st.sampled_from([100, 200]),
    st.sampled_from([-100, 100]),
)


def test_identical_deltas_in_one_ms_get_consecutive_k():
    """Two identical changes in the same millisecond are two events: k = 0 then 1."""
    idx = OccurrenceIndex()
    key = ("MKT", 1_700_000_000_000_000, "yes", 4200, 1000)
    assert idx.next(key) == 0
    assert idx.next(key) == 1
    assert idx.next(("MKT", 1_700_000_000_000_000, "yes", 4200, -1000)) == 0
    assert idx.next(key) == 2


@given(st.lists(_keys, max_size=200))
def test_k_is_the_count_of_earlier_identical_tuples(keys):
    """k equals the number of identical tuples seen before, for any stream."""
    idx = OccurrenceIndex()
    seen: Counter[tuple[str, int, str, int, int]] = Counter()
    for key in keys:
        assert idx.next(key) == seen[key]
        seen[key] += 1


@given(st.lists(_keys, max_size=200))
def test_two_gatherers_with_the_same_stream_produce_the_same_identities(keys):
    """Gap-free streams yield identical (tuple, k) sets on every gatherer: merge is exact."""
    a, b = OccurrenceIndex(), OccurrenceIndex()
    ids_a = [(*key, a.next(key)) for key in keys]
    ids_b = [(*key, b.next(key)) for key in keys]
    assert ids_a == ids_b
    assert len(set(ids_a)) == len(ids_a)


def test_counts_older_than_the_horizon_are_forgotten():
    """Memory is bounded: counts far behind the newest exchange time are dropped."""
    idx = OccurrenceIndex(horizon_us=1_000)
    old = ("M", 0, "yes", 1, 1)
    idx.next(old)
    for ts in range(1, 5_000, 10):
        idx.next(("M", ts, "no", 1, 1))
    assert len(idx) < 200
    assert idx.next(old) == 0


def test_gap_marks_markets_suspect_until_each_snapshot():
    """Rows between a gap and a market's fresh snapshot are suspect; the gap recovers last."""
    book = GapBook()
    gap = book.open(
        sid=3,
        channel="orderbook_delta",
        markets=("A", "B"),
        expected=10,
        received=12,
        detected_at_us=5,
        how="get_snapshot",
    )
    assert book.is_suspect("A")
    assert book.is_suspect("B")
    assert not book.is_suspect("C")
    assert book.snapshot("A") == []
    assert not book.is_suspect("A")
    assert book.is_suspect("B")
    done = book.snapshot("B")
    assert [g.gap_id for g in done] == [gap.gap_id]
    assert book.suspect_count == 0
    assert book.pending_gaps() == []


def test_overlapping_gaps_recover_independently():
    """A market in two gaps clears with one snapshot; each gap reports once."""
    book = GapBook()
    g1 = book.open(
        sid=1, channel="c", markets=("A",), expected=1, received=3, detected_at_us=1, how="x"
    )
    g2 = book.open(
        sid=2, channel="c", markets=("A", "B"), expected=1, received=3, detected_at_us=1, how="x"
    )
    assert [g.gap_id for g in book.snapshot("A")] == [g1.gap_id]
    assert [g.gap_id for g in book.forget("B")] == [g2.gap_id]
    assert book.snapshot("A") == []


def test_gap_rows_match_the_table_contract():
    """Open and recovered gap rows have the gaps table's columns, with how only when recovered."""
    book = GapBook()
    gap = book.open(
        sid=7,
        channel="orderbook_delta",
        markets=("A",),
        expected=4,
        received=9,
        detected_at_us=100,
        how="get_snapshot",
    )
    opened = gap_row(gap, recovered_at_us=None, received_at_us=101)
    done = gap_row(gap, recovered_at_us=200, received_at_us=201)
    assert len(opened) == len(GAPS.columns) == len(done)
    cols = GAPS.column_names
    o, d = dict(zip(cols, opened, strict=True)), dict(zip(cols, done, strict=True))
    assert isinstance(o["gap_id"], uuid.UUID)
    assert o["gap_id"] == d["gap_id"]
    assert (o["state"], d["state"]) == ("open", "recovered")
    assert (o["sid"], o["expected"], o["received"], o["markets"]) == (7, 4, 9, ["A"])
    assert o["how"] is None
    assert (d["recovered_at"], d["how"]) == (200, "get_snapshot")
