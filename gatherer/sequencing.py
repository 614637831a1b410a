"""Order-book delta identity and gap bookkeeping (pure: no I/O, no clock of its own).

- :class:`OccurrenceIndex` gives each order-book delta its ``k``: the occurrence index of the
  exact tuple ``(ticker, exchange_ts, side, price, delta)`` in this gatherer's stream (DESIGN §3).
  Two identical changes in one millisecond are two events (k = 0 and 1); the union of
  ``(..., k)`` keys over the gatherers is the exact multiset. State lives for the whole process,
  across reconnects, so a reconnect never restarts k for a tuple already seen.
- :class:`GapBook` tracks open gaps: which markets are *suspect* (rows received between a gap and
  that market's fresh snapshot, DESIGN §3) and when a gap is recovered (every market of it has a
  fresh snapshot again).
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field

DeltaKey = tuple[str, int, str, int, int]

#: Keep occurrence counts for tuples whose exchange time is within this window of the newest
#: one seen. An identical delta arriving later than that is not a second occurrence of the same
#: millisecond; it could only be a replay, which the WS protocol layer already drops by seq.
DEFAULT_HORIZON_US = 10 * 60 * 1_000_000


class OccurrenceIndex:
    """``next(key) -> k``: 0 for the first occurrence of a tuple, 1 for the second, ...

    Memory stays bounded: counts are forgotten once their exchange time falls more than
    ``horizon_us`` behind the newest exchange time seen.
    """

    __slots__ = ("_counts", "_horizon_us", "_newest_us", "_order")

    def __init__(self, horizon_us: int = DEFAULT_HORIZON_US) -> None:
        if horizon_us <= 0:
            raise ValueError("horizon_us must be > 0")
        self._horizon_us = horizon_us
        self._counts: dict[DeltaKey, int] = {}
        self._order: deque[tuple[int, DeltaKey]] = deque()
        self._newest_us = 0

    def next(self, key: DeltaKey) -> int:
        """The occurrence index of ``key`` (ticker, exchange_ts_us, side, price, delta)."""
        k = self._counts.get(key)
        if k is None:
            self._counts[key] = 1
            ts = key[1]
            self._order.append((ts, key))
            if ts > self._newest_us:
                self._newest_us = ts
                self._prune()
            return 0
        self._counts[key] = k + 1
        return k

    def _prune(self) -> None:
        limit = self._newest_us - self._horizon_us
        order = self._order
        counts = self._counts
        # Arrival order is close to exchange-time order; an out-of-order old entry behind a
        # newer head waits until the head goes (bounded by the horizon's worth of traffic).
        while order and order[0][0] < limit:
            _, key = order.popleft()
            counts.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)


@dataclass(slots=True)
class OpenGap:
    """A gap waiting for fresh snapshots of ``pending`` markets."""

    gap_id: uuid.UUID
    sid: int | None
    channel: str
    markets: tuple[str, ...]
    expected: int | None
    received: int | None
    detected_at_us: int
    how: str
    pending: set[str] = field(default_factory=set)


class GapBook:
    """Suspect markets and open gaps.

    A market is suspect from the moment a gap covers it until a fresh snapshot of it arrives.
    A gap is recovered when none of its markets is pending any more (``snapshot()`` returns it).
    """

    __slots__ = ("_gaps", "_suspect")

    def __init__(self) -> None:
        self._suspect: dict[str, int] = {}  # market -> number of open gaps covering it
        self._gaps: dict[uuid.UUID, OpenGap] = {}

    def open(
        self,
        *,
        sid: int | None,
        channel: str,
        markets: tuple[str, ...],
        expected: int | None,
        received: int | None,
        detected_at_us: int,
        how: str,
    ) -> OpenGap:
        """Record a gap over ``markets``; they stay suspect until each has a fresh snapshot."""
        gap = OpenGap(
            gap_id=uuid.uuid4(),
            sid=sid,
            channel=channel,
            markets=markets,
            expected=expected,
            received=received,
            detected_at_us=detected_at_us,
            how=how,
            pending=set(markets),
        )
        self._gaps[gap.gap_id] = gap
        for m in gap.pending:
            self._suspect[m] = self._suspect.get(m, 0) + 1
        return gap

    def is_suspect(self, market: str) -> bool:
        """Are rows of ``market`` received now suspect?"""
        return market in self._suspect

    def snapshot(self, market: str) -> list[OpenGap]:
        """A fresh snapshot of ``market`` arrived: the gaps this completes (recovered)."""
        if market not in self._suspect:
            return []
        del self._suspect[market]
        done: list[OpenGap] = []
        for gap in list(self._gaps.values()):
            if market in gap.pending:
                gap.pending.discard(market)
                if not gap.pending:
                    done.append(gap)
                    del self._gaps[gap.gap_id]
        return done

    def forget(self, market: str) -> list[OpenGap]:
        """``market`` left the subscription (closed): stop waiting for its snapshot."""
        return self.snapshot(market)

    def forget_gap(self, gap_id: uuid.UUID) -> OpenGap | None:
        """Close a gap without snapshots (nothing to resync): its markets stop being suspect
        unless another open gap covers them."""
        gap = self._gaps.pop(gap_id, None)
        if gap is None:
            return None
        for m in gap.pending:
            left = self._suspect.get(m, 0) - 1
            if left > 0:
                self._suspect[m] = left
            else:
                self._suspect.pop(m, None)
        gap.pending.clear()
        return gap

    def set_how(self, gap_id: uuid.UUID, how: str) -> None:
        """Change how an open gap is being resynced (e.g. get_snapshot failed: resubscribe)."""
        gap = self._gaps.get(gap_id)
        if gap is not None:
            gap.how = how

    def pending_gaps(self) -> list[OpenGap]:
        """Gaps not recovered yet."""
        return list(self._gaps.values())

    @property
    def suspect_count(self) -> int:
        """How many markets are suspect now."""
        return len(self._suspect)


def gap_row(
    gap: OpenGap, *, recovered_at_us: int | None, received_at_us: int
) -> tuple[object, ...]:
    """The ``gaps`` row (tables.GAPS column order) for ``gap``: 'open' or, with a recovery
    time, 'recovered'."""
    state = "open" if recovered_at_us is None else "recovered"
    return (
        gap.gap_id,
        state,
        gap.sid,
        gap.channel,
        list(gap.markets),
        gap.expected,
        gap.received,
        gap.detected_at_us,
        recovered_at_us,
        None if recovered_at_us is None else gap.how,
        received_at_us,
    )
