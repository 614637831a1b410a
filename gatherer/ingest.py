"""Records in, rows out: the one place that turns protocol events into table rows.

Shared by every connection of the process (the occurrence index and the gap book must see the
whole stream, across reconnects; each market is on exactly one connection, DESIGN §3). No
sockets here: rows go to a ``put(table, row)`` callable (the :class:`~gatherer.writer.Writer`
in the service, a list in unit tests).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from gatherer.sequencing import GapBook, OccurrenceIndex, OpenGap, gap_row
from kalshi_data.kalshi.fixedpoint import SUBUNIT_REASON
from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.records import (
    DeltaRec,
    LifecycleRec,
    Record,
    SnapshotRec,
    TickerRec,
    TradeRec,
)
from kalshi_data.tables import TICKERS

log = logging.getLogger(__name__)
_monotonic = time.monotonic
_TICKER_TS = TICKERS.column_names.index("exchange_ts")
_TICKER_HASH = TICKERS.column_names.index("content_hash")

Put = Callable[[str, tuple[Any, ...]], None]

#: Frame type -> the channel it arrives on (metric label, gap rows).
CHANNEL_OF_TYPE: dict[str, str] = {
    "orderbook_snapshot": "orderbook_delta",
    "orderbook_delta": "orderbook_delta",
    "trade": "trade",
    "ticker": "ticker",
    "market_lifecycle_v2": "market_lifecycle_v2",
    "event_lifecycle": "market_lifecycle_v2",
    "event_fee_update": "market_lifecycle_v2",
    "multivariate_market_lifecycle": "multivariate_market_lifecycle",
}


def now_us() -> int:
    """Wall-clock microseconds since the Unix epoch (data timestamps only)."""
    return time.time_ns() // 1000


class Ingest:
    """Turns records into rows, assigns ``k``, marks suspect rows, writes gap and dead-letter rows.

    Attributes:
        occurrences: the process-wide delta occurrence index (k).
        gaps: open gaps and suspect markets.
        frames: data frames per frame type since start (cumulative).
        last_data_mono: ``time.monotonic()`` of the last data frame (0 before the first).
    """

    def __init__(
        self,
        put: Put,
        *,
        on_lifecycle: Callable[[LifecycleRec], None] | None = None,
        on_gap_recovered: Callable[[OpenGap], None] | None = None,
    ) -> None:
        self._put = put
        self.on_lifecycle = on_lifecycle
        self.on_gap_recovered = on_gap_recovered
        self.occurrences = OccurrenceIndex()
        self.gaps = GapBook()
        self.frames: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self._reported_frames: Counter[str] = Counter()
        self._reported_dead: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.last_data_mono = 0.0
        self._expect_empty: set[str] = set()
        self._activated_early: set[str] = set()
        #: Gaps opened since start (the service publishes it as ``gatherer_gaps_total``).
        self.gaps_opened = 0
        #: Per market: the exchange time of its last ticker state and the states seen at it.
        self._ticker_states: dict[str, tuple[int, set[int]]] = {}
        #: Ticker states skipped because they repeated one already written (see ``_ticker``).
        self.repeated_states = 0
        #: Dead letters refused for a price finer than the storage unit (never rounded).
        self.subunit_prices = 0

    def record(self, rec: Record | DeadLetter, frame_type: str, received_at_us: int) -> None:
        """One data frame's record (or its dead letter)."""
        self.frames[frame_type] += 1
        self.last_data_mono = _monotonic()
        kind = type(rec)  # exact types first: this runs for every frame
        if kind is DeltaRec:
            assert isinstance(rec, DeltaRec)
            k = self.occurrences.next(rec.identity(received_at_us))
            self._put(
                "orderbook_deltas",
                rec.row(received_at_us, k=k, suspect=self.gaps.is_suspect(rec.ticker)),
            )
            self.rows["orderbook_deltas"] += 1
        elif kind is TickerRec:
            assert isinstance(rec, TickerRec)
            self._ticker(rec, received_at_us)
        elif kind is TradeRec:
            assert isinstance(rec, TradeRec)
            self._put("trades", rec.row(received_at_us))
            self.rows["trades"] += 1
        elif isinstance(rec, SnapshotRec):
            self._put("orderbook_snapshots", rec.row(received_at_us))
            self.rows["orderbook_snapshots"] += 1
            if rec.ticker in self._expect_empty:
                self._first_snapshot(rec, received_at_us)
            for gap in self.gaps.snapshot(rec.ticker):
                self._recovered(gap, received_at_us)
        elif isinstance(rec, LifecycleRec):
            self._put("lifecycle_events", rec.row(received_at_us))
            self.rows["lifecycle_events"] += 1
            if self.on_lifecycle is not None:
                self.on_lifecycle(rec)
        elif isinstance(rec, DeadLetter):
            self.dead_letter(rec.reason, rec.raw, "ws", received_at_us)
        else:  # metadata records never arrive on the WebSocket
            self.dead_letter(f"unexpected record {type(rec).__name__}", b"", "ws", received_at_us)

    def _ticker(self, rec: TickerRec, received_at_us: int) -> None:
        """A ticker row, unless it repeats a state of the same market and millisecond.

        The exchange can send one state twice within a time stamp (A, B, A): both carry the
        identity (ticker, exchange_ts, content_hash), so the database keeps one row either way.
        Skipping the repeat here saves the writer a unique violation, which costs a rerun of its
        whole transaction through staging.
        """
        row = rec.row(received_at_us)
        ts, digest = row[_TICKER_TS], row[_TICKER_HASH]
        seen = self._ticker_states.get(rec.ticker)
        if seen is None or seen[0] != ts:
            self._ticker_states[rec.ticker] = (ts, {digest})
        elif digest in seen[1]:
            self.repeated_states += 1
            return
        else:
            seen[1].add(digest)
        self._put("tickers", row)
        self.rows["tickers"] += 1

    def expect_empty_book(self, market: str) -> None:
        """``market`` was just created: its first snapshot should show an empty book."""
        self._expect_empty.add(market)

    def market_activated(self, market: str) -> None:
        """``market`` became active: if its first snapshot has not arrived yet, deltas may have
        flowed before our subscription existed, even when that snapshot shows an empty book
        (an order placed and cancelled meanwhile)."""
        if market in self._expect_empty:
            self._activated_early.add(market)

    def _first_snapshot(self, rec: SnapshotRec, received_at_us: int) -> None:
        self._expect_empty.discard(rec.ticker)
        early = rec.ticker in self._activated_early
        self._activated_early.discard(rec.ticker)
        if not rec.yes and not rec.no and not early:
            return
        # Orders rested before our subscription existed: their deltas never reached us. The
        # snapshot itself is the recovery, so the gap opens and closes here.
        gap = self.open_gap(
            sid=rec.sid,
            channel="orderbook_delta",
            markets=(rec.ticker,),
            expected=None,
            received=rec.seq,
            how="late_subscribe",
            received_at_us=received_at_us,
        )
        self.gap_recovered(gap, received_at_us)

    def dead_letter(self, reason: str, raw: bytes, source: str, received_at_us: int) -> None:
        """Store a rejected input with its reason (DESIGN §3: bad input is data)."""
        self.dead_letters[source] += 1
        if SUBUNIT_REASON in reason:
            self.subunit_prices += 1
        self._put("dead_letters", (uuid.uuid4(), source, reason[:500], raw, received_at_us))
        self.rows["dead_letters"] += 1

    def open_gap(
        self,
        *,
        sid: int | None,
        channel: str,
        markets: tuple[str, ...],
        expected: int | None,
        received: int | None,
        how: str,
        received_at_us: int | None = None,
    ) -> OpenGap:
        """Record a gap (state 'open'); its markets are suspect until their fresh snapshots."""
        at = now_us() if received_at_us is None else received_at_us
        gap = self.gaps.open(
            sid=sid,
            channel=channel,
            markets=markets,
            expected=expected,
            received=received,
            detected_at_us=at,
            how=how,
        )
        self._put("gaps", gap_row(gap, recovered_at_us=None, received_at_us=at))
        self.rows["gaps"] += 1
        self.gaps_opened += 1
        log.warning(
            "gap on sid %s (%s): expected seq %s, received %s; %d markets suspect until resync",
            sid,
            channel,
            expected,
            received,
            len(markets),
            extra={"sid": sid, "channel": channel, "expected": expected, "received": received},
        )
        if not markets:  # nothing to wait for (e.g. market removed meanwhile)
            self.gaps.forget_gap(gap.gap_id)
        return gap

    def gap_recovered(self, gap: OpenGap, received_at_us: int | None = None) -> None:
        """Write the 'recovered' row of a gap that needs no snapshot (trade, lifecycle)."""
        self.gaps.forget_gap(gap.gap_id)
        self._recovered(gap, now_us() if received_at_us is None else received_at_us)

    def forget_market(self, market: str) -> None:
        """``market`` left the subscriptions: gaps waiting only for it are recovered."""
        self._ticker_states.pop(market, None)
        for gap in self.gaps.forget(market):
            self._recovered(gap, now_us())

    def _recovered(self, gap: OpenGap, at_us: int) -> None:
        self._put("gaps", gap_row(gap, recovered_at_us=at_us, received_at_us=at_us))
        self.rows["gaps"] += 1
        log.info(
            "gap %s on sid %s (%s) recovered by %s",
            gap.gap_id,
            gap.sid,
            gap.channel,
            gap.how,
            extra={"sid": gap.sid, "channel": gap.channel, "how": gap.how},
        )
        if self.on_gap_recovered is not None:
            self.on_gap_recovered(gap)

    def take_counts(self) -> tuple[Counter[str], Counter[str]]:
        """Messages per channel and dead letters per source since the last call (for metrics)."""
        messages: Counter[str] = Counter()
        for frame_type, n in (self.frames - self._reported_frames).items():
            messages[CHANNEL_OF_TYPE.get(frame_type, "other")] += n
        dead = self.dead_letters - self._reported_dead
        self._reported_frames = self.frames.copy()
        self._reported_dead = self.dead_letters.copy()
        return messages, dead
