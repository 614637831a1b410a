"""The seen-identity filter: which rows skip staging, claims between loops, bounded memory."""

from __future__ import annotations

import asyncio

from deduplicator import seen as seen_mod
from deduplicator.seen import SeenIdentities


def keys(*ids: int) -> list[bytes]:
    return [i.to_bytes(24, "big") for i in ids]


def test_unknown_rows_are_missing_known_rows_are_skipped() -> None:
    """All-new, all-known and mixed batches give the indexes that must be staged."""
    s = SeenIdentities(100)
    assert s.filter("trades", keys(1, 2, 3)).missing == [0, 1, 2]
    s.add("trades", keys(1, 2, 3))
    assert s.filter("trades", keys(1, 2, 3)).missing == []
    assert s.filter("trades", keys(4, 2, 5)).missing == [0, 2]
    # Tables are separate: a trade key says nothing about deltas.
    assert s.filter("orderbook_deltas", keys(1)).missing == [0]
    assert len(s) == 3


def test_oldest_batches_are_evicted_beyond_the_bound() -> None:
    """Memory is bounded: the oldest merged batches are forgotten first (a miss is safe)."""
    s = SeenIdentities(4)
    s.add("trades", keys(1, 2))
    s.add("trades", keys(3, 4))
    s.add("trades", keys(5, 6))
    assert len(s) == 4
    assert s.filter("trades", keys(1, 2)).missing == [0, 1]
    assert s.filter("trades", keys(3, 4, 5, 6)).missing == []


def test_clear_forgets_everything() -> None:
    """After a reconnect to production nothing is assumed to be there any more."""
    s = SeenIdentities(10)
    s.add("trades", keys(1))
    s.clear()
    assert len(s) == 0
    assert s.filter("trades", keys(1)).missing == [0]


def test_disabled_filter_never_remembers() -> None:
    """seen_cache_rows = 0 turns the filter off."""
    s = SeenIdentities(0)
    s.add("trades", keys(1))
    assert s.filter("trades", keys(1)).missing == [0]


async def test_overlapping_claim_makes_the_other_loop_wait() -> None:
    """A loop whose batch overlaps keys being staged waits, then skips what was committed."""
    s = SeenIdentities(100)
    claim = s.claim("trades", keys(1, 2))
    found = s.filter("trades", keys(2, 3))
    assert found.wait_for == [claim]
    assert found.missing == []
    # A disjoint batch does not wait.
    assert s.filter("trades", keys(7, 8)) == seen_mod.Filtered([0, 1], [])
    waiter = asyncio.create_task(claim.done.wait())
    s.add("trades", keys(1, 2))  # the claimant committed
    s.release(claim)
    await asyncio.wait_for(waiter, 1)
    assert s.filter("trades", keys(2, 3)) == seen_mod.Filtered([1], [])


async def test_failed_claim_leaves_the_rows_to_the_waiter() -> None:
    """If the claimant rolled back (nothing added), the waiter stages the rows itself."""
    s = SeenIdentities(100)
    claim = s.claim("trades", keys(1, 2))
    s.release(claim)
    assert claim.done.is_set()
    assert s.filter("trades", keys(1, 2)) == seen_mod.Filtered([0, 1], [])


def test_filter_without_waiting_ignores_claims() -> None:
    """After waiting long enough a loop stages anyway (the merge is idempotent)."""
    s = SeenIdentities(100)
    s.claim("trades", keys(1))
    assert s.filter("trades", keys(1), wait=False) == seen_mod.Filtered([0], [])


def test_direct_copy_is_held_off_after_a_conflict() -> None:
    """After a direct COPY met an existing row, that table is staged for a while."""
    s = SeenIdentities(100)
    assert s.direct_allowed("trades")
    s.direct_conflicted("trades")
    assert not s.direct_allowed("trades")
    assert s.direct_allowed("orderbook_deltas")
