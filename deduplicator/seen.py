"""Identities this process has already committed to production, so duplicates skip staging.

Three gatherers hold the same rows, so two of every three rows the deduplicator reads are
duplicates. Staging them in production and letting ``ON CONFLICT`` drop them costs most of the
write path (and, when the gatherer loops merge the same keys at once, lock waits on each other's
uncommitted inserts). Instead each loop reads its batch's *identity keys* first (the production
key as exact bytes, built by the gatherer's server: ``sql.identity_key_expr``) and COPYs only
the rows whose key is not known here.

Safety. This is an optimisation in front of an idempotent merge, never a replacement for it:

- A key is added only after the transaction that put that row into production committed, and
  only for clean rows (a suspect row must still meet the clean copy that clears its flag).
- Keys are exact (not hashes): a hit means the very identity is in production.
- A *miss* (unknown or evicted key, another spelling of an equal value) only means the row goes
  through ``ON CONFLICT`` as before.
- The cache is cleared whenever production may have changed under us (a reconnect: a failover,
  a restore; on becoming leader) and on a cursor rescan.

Claims. Before merging, a loop claims the keys it is about to stage; another loop whose batch
overlaps a claim waits for that merge to end and filters again, instead of staging the same keys
concurrently. Claims are taken only after waiting, so no loop holds a claim while it waits.

Memory: about 100 bytes per key for trades (24-byte keys), about 130 for order-book deltas;
``seen_cache_rows`` bounds the count, evicting the oldest merged batches first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

#: After a direct COPY conflict, stage instead of COPYing directly for this long.
DIRECT_HOLDOFF_S = 30.0


@dataclass(eq=False)
class Claim:
    """Keys one loop is staging right now; ``done`` is set when its transaction ended."""

    table: str
    keys: frozenset[bytes]
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Filtered:
    """Which rows of a batch must be staged, or which claims to wait for first."""

    missing: list[int]
    wait_for: list[Claim]


class SeenIdentities:
    """A bounded, per-table set of keys committed to production (oldest evicted first)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._sets: dict[str, set[bytes]] = {}
        self._generations: deque[tuple[str, list[bytes]]] = deque()
        self._size = 0
        self._claims: dict[str, list[Claim]] = {}
        self._direct_after: dict[str, float] = {}

    def __len__(self) -> int:
        return self._size

    def clear(self) -> None:
        """Forget everything (production may have changed under us). Claims stay: their
        merges are still running and will end on their own."""
        self._sets.clear()
        self._generations.clear()
        self._size = 0

    def filter(self, table: str, keys: list[bytes], *, wait: bool = True) -> Filtered:
        """Rows (by index) whose key is not known; or, if some of those are being staged by
        another loop right now (and ``wait``), the claims to wait for before filtering again."""
        known = self._sets.get(table)
        # The usual batches are all new or all known: decide those with C-speed set scans.
        if not known or known.isdisjoint(keys):
            missing = list(range(len(keys)))
        elif known.issuperset(keys):
            return Filtered([], [])
        else:
            missing = [i for i, d in enumerate(keys) if d not in known]
        claims = self._claims.get(table)
        if not claims or not wait:
            return Filtered(missing, [])
        # (A claimed key already known here is harmless: that claim is about to be released.)
        waits = [c for c in claims if not c.keys.isdisjoint(keys)]
        return Filtered(missing if not waits else [], waits)

    def direct_allowed(self, table: str) -> bool:
        """May rows missing here be COPYed straight into production (no conflict expected)?

        Yes until a direct COPY of this table meets a row already there (after a restart or a
        failover production holds rows this process does not know of); then, for
        ``DIRECT_HOLDOFF_S``, rows are staged instead. One wasted attempt per table is the cost.
        """
        return time.monotonic() >= self._direct_after.get(table, 0.0)

    def direct_conflicted(self, table: str) -> None:
        """A direct COPY met a row already in production: stage this table for a while."""
        self._direct_after[table] = time.monotonic() + DIRECT_HOLDOFF_S

    def claim(self, table: str, keys: list[bytes]) -> Claim:
        """Announce that these keys are being staged (release it in a ``finally``)."""
        c = Claim(table, frozenset(keys))
        self._claims.setdefault(table, []).append(c)
        return c

    def release(self, claim: Claim) -> None:
        """The claim's transaction ended (committed or not): wake the loops waiting on it."""
        claims = self._claims.get(claim.table, [])
        if claim in claims:
            claims.remove(claim)
        claim.done.set()

    def add(self, table: str, keys: list[bytes]) -> None:
        """Keys now committed in production; evicts the oldest beyond ``max_rows``."""
        if not keys or self.max_rows <= 0:
            return
        known = self._sets.setdefault(table, set())
        before = len(known)
        known.update(keys)
        added = len(known) - before
        if not added:
            return
        self._generations.append((table, keys))
        self._size += added
        while self._size > self.max_rows and len(self._generations) > 1:
            old_table, old = self._generations.popleft()
            old_set = self._sets[old_table]
            n = len(old_set)
            old_set.difference_update(old)
            self._size -= n - len(old_set)
