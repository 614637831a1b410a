"""REST order-book snapshots on a schedule.

Every ``interval_s`` seconds a *slot* begins (``slot = floor(now / interval_s)``); the poller
fetches the order books of every carried market once per slot through the shared token bucket
(``GET /markets/orderbooks``, ``batch`` tickers per request) and writes them with
``source='rest'`` and ``exchange_ts`` = the slot's start time. Every gatherer derives the same
slot time, so identical books merge in production (identity: ticker, slot, source, content hash;
DESIGN §3). A pass that overruns its slot stops and the next slot starts afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from gatherer.ingest import Ingest, Put, now_us
from gatherer.metrics import GathererMetrics
from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.kalshi.rest import KalshiRest

log = logging.getLogger(__name__)


def slot_of(now_s: float, interval_s: float) -> int:
    """The slot number containing ``now_s`` (Unix seconds)."""
    return int(now_s // interval_s)


def slot_start_us(slot: int, interval_s: float) -> int:
    """A slot's start as integer microseconds since the Unix epoch (exact for whole ms)."""
    return round(slot * interval_s * 1_000_000)


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    """``items`` in consecutive lists of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class SnapshotPoller:
    """Fetches REST snapshots of ``markets()`` once per slot."""

    def __init__(
        self,
        source: KalshiRest,
        put: Put,
        ingest: Ingest,
        markets: Callable[[], Sequence[str]],
        metrics: GathererMetrics,
        *,
        interval_s: float,
        batch: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._put = put
        self._ingest = ingest
        self._markets = markets
        self._metrics = metrics
        self.interval_s = interval_s
        self.batch = batch
        self._clock = clock
        self.passes = 0
        self.rows = 0
        self.last_slot: int | None = None

    async def poll_slot(self, slot: int) -> int:
        """Fetch every market's book for ``slot``; returns rows written (stops at slot end)."""
        ts_us = slot_start_us(slot, self.interval_s)
        written = 0
        for batch in chunks(sorted(self._markets()), self.batch):
            if slot_of(self._clock(), self.interval_s) != slot:
                log.warning("snapshot pass for slot %d overran its slot; skipping the rest", slot)
                break
            try:
                books = await self._source.get_orderbooks(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._metrics.rest_errors.labels(self._metrics.gatherer_id, "orderbooks").inc()
                log.warning("REST snapshots failed for %d markets (%s)", len(batch), exc)
                continue
            received = now_us()
            for rec in books:
                if isinstance(rec, DeadLetter):
                    self._ingest.dead_letter(rec.reason, rec.raw, "rest", received)
                    continue
                self._put("orderbook_snapshots", rec.row(received, snapshot_ts_us=ts_us))
                written += 1
        self.passes += 1
        self.rows += written
        self.last_slot = slot
        return written

    async def run(self) -> None:
        """Forever: wait for the next slot to begin, poll it."""
        while True:
            now = self._clock()
            slot = slot_of(now, self.interval_s)
            if slot == self.last_slot:
                wait = (slot + 1) * self.interval_s - now
                await asyncio.sleep(max(wait, 0.001))
                continue
            await self.poll_slot(slot)
