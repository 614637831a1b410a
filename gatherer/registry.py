"""The market registry: which markets exist and are open, and their metadata versions.

- At start: every market of the configured statuses from REST (paged), plus events and series.
- Live: ``market_lifecycle_v2`` ``created``/``activated`` open a market, ``determined``/
  ``settled`` close it; ``event_lifecycle`` and metadata changes refetch the object.
- Periodically: a full REST reconcile (markets that vanished from the open list are confirmed
  closed one by one before they are dropped: a market announced by ``created`` may not be
  ``open`` yet).
- Metadata goes to the local ``markets``/``events``/``series`` tables as append-only versions:
  a row only when the object's content hash changed (the table's identity is
  ``(ticker, content_hash)`` so a restart re-sending a version is harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

from gatherer.ingest import Ingest, Put, now_us
from gatherer.metrics import GathererMetrics
from kalshi_data.errors import describe_error
from kalshi_data.kalshi.parse import DeadLetter, event_from_rest
from kalshi_data.kalshi.rest import KalshiRest, NotFound
from kalshi_data.records import EventRec, LifecycleRec, MarketRec, SeriesRec
from kalshi_data.resilience import ErrorClass, RetryPolicy, Supervisor

log = logging.getLogger(__name__)

#: Market statuses (REST response vocabulary, kalshi-protocol.md §4) worth an order-book
#: subscription; anything else (closed, determined, settled, finalized...) is closed.
CARRIED_STATUSES = frozenset(
    {"initialized", "inactive", "active", "open", "unopened", "paused", "deactivated"}
)
#: Lifecycle event types (§3.10) that open or close a market.
OPENING = frozenset({"created", "activated"})
CLOSING = frozenset({"determined", "settled"})
REFETCH = frozenset(
    {"close_date_updated", "metadata_updated", "price_level_structure_updated", "deactivated"}
)


def _is_mve(rec: MarketRec) -> bool:
    """A multivariate (combo) market: it names its collection (§4 Market object)."""
    return '"mve_collection_ticker"' in rec.data


def _unpaused(rec: LifecycleRec) -> bool:
    """An ``activated`` that ends a pause (``is_deactivated`` false, §3.10): the market existed
    with a resting book all along, so a non-empty first snapshot is no late subscription."""
    return rec.event_type == "activated" and '"is_deactivated":false' in rec.payload


#: Tickers per ``GET /markets?tickers=`` refetch.
REFETCH_BATCH = 100


class Registry:
    """Open markets and metadata versions; drives the connections through two callbacks."""

    def __init__(
        self,
        source: KalshiRest,
        put: Put,
        ingest: Ingest,
        metrics: GathererMetrics,
        *,
        open_markets: Callable[[Iterable[str]], int],
        close_markets: Callable[[Iterable[str]], int],
        statuses: Sequence[str] = ("open",),
        mve_markets: str = "exclude",
    ) -> None:
        self._source = source
        self._put = put
        self._ingest = ingest
        self._metrics = metrics
        self._open_cb = open_markets
        self._close_cb = close_markets
        self.statuses = tuple(statuses)
        #: ``exclude``: listings ask ``mve_filter=exclude`` (combos are never carried).
        self.mve_markets = mve_markets
        self._list_filters: dict[str, Any] = (
            {"mve_filter": "exclude"} if mve_markets == "exclude" else {}
        )
        #: Carried markets: ticker -> last known status.
        self.markets: dict[str, str] = {}
        self.events: set[str] = set()
        self.series_known: set[str] = set()
        self._hashes: dict[tuple[str, str], int] = {}
        self._refetch_markets: set[str] = set()
        self._refetch_events: set[str] = set()
        self._wake = asyncio.Event()
        self._reconcile_soon = False
        self.loaded = False
        self._next_full = 0.0  # loop time of the next full reconcile (set by run)
        self.loaded_event = asyncio.Event()
        self.reconciles = 0

    # -- metadata versions ------------------------------------------------------------------
    def _store(self, rec: MarketRec | EventRec | SeriesRec, key: str) -> bool:
        """Write a version row when the content changed; True when written."""
        h = rec.content_hash
        ident = (rec.table, key)
        if self._hashes.get(ident) == h:
            return False
        self._hashes[ident] = h
        self._put(rec.table, rec.row(now_us()))
        return True

    def _market_obj(self, rec: MarketRec | DeadLetter) -> MarketRec | None:
        if isinstance(rec, DeadLetter):
            self._ingest.dead_letter(rec.reason, rec.raw, "rest", now_us())
            return None
        self._store(rec, rec.ticker)
        # Combo events are not in GET /events: fetching each one would cost a request per
        # combo event (thousands); the market object carries its collection and legs.
        if rec.event_ticker not in self.events and not _is_mve(rec):
            self._refetch_events.add(rec.event_ticker)
        return rec

    def _event_obj(self, rec: EventRec | DeadLetter) -> EventRec | None:
        if isinstance(rec, DeadLetter):
            self._ingest.dead_letter(rec.reason, rec.raw, "rest", now_us())
            return None
        self._store(rec, rec.event_ticker)
        self.events.add(rec.event_ticker)
        return rec

    def _series_obj(self, rec: SeriesRec | DeadLetter) -> SeriesRec | None:
        if isinstance(rec, DeadLetter):
            self._ingest.dead_letter(rec.reason, rec.raw, "rest", now_us())
            return None
        self._store(rec, rec.ticker)
        self.series_known.add(rec.ticker)
        return rec

    # -- open / close -----------------------------------------------------------------------
    def _open(self, tickers: Iterable[str], status: str = "open") -> None:
        new = [t for t in tickers if t not in self.markets]
        for t in new:
            self.markets[t] = status
        if new:
            self._open_cb(new)
            log.info("registry: %d markets opened (%d carried)", len(new), len(self.markets))
        self._metrics.markets.labels(self._metrics.gatherer_id).set(len(self.markets))

    def _close(self, tickers: Iterable[str]) -> None:
        gone = [t for t in tickers if self.markets.pop(t, None) is not None]
        if gone:
            self._close_cb(gone)
            log.info("registry: %d markets closed (%d carried)", len(gone), len(self.markets))
        self._metrics.markets.labels(self._metrics.gatherer_id).set(len(self.markets))

    # -- REST sync --------------------------------------------------------------------------
    async def sync(self) -> None:
        """Full reconcile from REST: series, events, markets; open new, close vanished."""
        async for srec in self._source.get_series():
            self._series_obj(srec)
        for status in self.statuses:
            async for erec in self._source.get_events(status):
                self._event_obj(erec)
        listed: dict[str, str] = {}
        for status in self.statuses:
            async for mrec in self._source.get_markets(status, **self._list_filters):
                rec = self._market_obj(mrec)
                if rec is not None and rec.status in CARRIED_STATUSES:
                    listed[rec.ticker] = rec.status
        self._open(listed)
        for t, s in listed.items():
            self.markets[t] = s
        vanished = sorted(t for t in self.markets if t not in listed)
        if vanished:
            await self._confirm(vanished)
        await self._refetch()
        self.loaded = True
        self.loaded_event.set()
        self.reconciles += 1

    async def _confirm(self, tickers: Sequence[str]) -> None:
        """Close the markets REST confirms are no longer carried (absent = closed)."""
        for i in range(0, len(tickers), REFETCH_BATCH):
            batch = tickers[i : i + REFETCH_BATCH]
            still: set[str] = set()
            async for obj in self._source.get_markets(None, tickers=batch):
                rec = self._market_obj(obj)
                if rec is not None and rec.status in CARRIED_STATUSES:
                    still.add(rec.ticker)
                    self.markets[rec.ticker] = rec.status
            self._close(t for t in batch if t not in still)

    async def _refetch(self) -> None:
        """Fetch metadata that lifecycle messages said changed."""
        markets = sorted(self._refetch_markets)
        self._refetch_markets.clear()
        for i in range(0, len(markets), REFETCH_BATCH):
            async for obj in self._source.get_markets(None, tickers=markets[i : i + REFETCH_BATCH]):
                rec = self._market_obj(obj)
                if rec is not None and rec.ticker in self.markets:
                    if rec.status in CARRIED_STATUSES:
                        self.markets[rec.ticker] = rec.status
                    else:
                        self._close([rec.ticker])
        events = sorted(self._refetch_events)
        self._refetch_events.clear()
        for e in events:
            try:
                page = await self._source.get_json(f"/events/{quote(e, safe='')}")
            except NotFound:
                continue
            erec = self._event_obj(event_from_rest(page.get("event")))
            if erec is not None and erec.series_ticker not in self.series_known:
                try:
                    self._series_obj(await self._source.get_one_series(erec.series_ticker))
                except NotFound:
                    continue

    # -- live lifecycle (called from the WS reader: synchronous, never blocks) --------------
    def on_lifecycle(self, rec: LifecycleRec) -> None:
        """A lifecycle message: open/close markets at once, refetch metadata in the background."""
        if rec.kind == "market":
            if rec.event_type in OPENING:
                if rec.ticker not in self.markets and not _unpaused(rec):
                    # New to us: its first snapshot must be empty, or deltas flowed before our
                    # subscription existed (a gap, DESIGN §3).
                    self._ingest.expect_empty_book(rec.ticker)
                if rec.event_type == "activated":
                    self._ingest.market_activated(rec.ticker)
                self._open([rec.ticker], "initialized")
                self._refetch_markets.add(rec.ticker)
            elif rec.event_type in CLOSING:
                self._refetch_markets.add(rec.ticker)
                self._close([rec.ticker])
            elif rec.event_type in REFETCH:
                self._refetch_markets.add(rec.ticker)
        elif rec.kind in {"event", "fee"}:
            self._refetch_events.add(rec.ticker)
        self._wake.set()

    def request_reconcile(self) -> None:
        """Ask for a full reconcile soon (e.g. after a lifecycle gap)."""
        self._reconcile_soon = True
        self._wake.set()

    async def run(self, reconcile_interval_s: float, retry: RetryPolicy) -> None:
        """Initial load (retried until it succeeds), then refetches and periodic reconciles.

        A failed step runs again under one :class:`Supervisor` after Full-Jitter backoff per
        ``retry`` (reset by the next success), whatever the error: the REST client has already
        retried what is passing, and the registry must come up.
        """
        loop = asyncio.get_running_loop()
        self._next_full = loop.time()

        def failed(exc: BaseException, _verdict: ErrorClass, delay: float) -> None:
            self._metrics.rest_errors.labels(self._metrics.gatherer_id, "registry").inc()
            log.warning(
                "registry: REST sync failed (%s); retrying in %.1fs", describe_error(exc), delay
            )
            if not self.loaded:
                self._next_full = loop.time()

        sup = Supervisor(
            "registry REST sync",
            policy=retry,
            classify_fn=lambda _exc: ErrorClass.RETRYABLE,
            on_failure=failed,
        )
        while True:
            await sup.run(lambda: self._step(loop, reconcile_interval_s))
            timeout = max(0.0, self._next_full - loop.time())
            self._wake.clear()
            if self._refetch_markets or self._refetch_events or self._reconcile_soon:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _step(self, loop: asyncio.AbstractEventLoop, reconcile_interval_s: float) -> None:
        """A full reconcile when one is due (or asked for), else the pending refetches."""
        if loop.time() >= self._next_full or self._reconcile_soon:
            self._reconcile_soon = False
            await self.sync()
            self._next_full = loop.time() + reconcile_interval_s
            log.info("registry: reconciled, %d markets carried", len(self.markets))
        elif self._refetch_markets or self._refetch_events:
            await self._refetch()
