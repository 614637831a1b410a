"""The seeded activity model: catalogue, order books, trades and lifecycle churn (sans-I/O).

``Exchange.step(now_ms, out)`` appends the data messages of one activity step to ``out`` as
``(frame_type, market_ticker | None, msg)``. Every random choice comes from one
``random.Random(seed)`` and time only enters through ``now_ms``/``now_s``, so the same seed and
the same clock readings give the same stream.

Activity is heavy-tailed: each market gets a Zipf weight (rank^-1.1) and bursts concentrate half
of the steps on one market for a while; most markets stay quiet for minutes.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from simulator import shapes
from simulator.book import Side
from simulator.catalog import CATEGORIES, FREQUENCIES, Event, Market, Namer, Series, rng_uuid
from simulator.fixed import DOLLAR, dollars
from simulator.pool import Pool

Emitted = tuple[str, str | None, dict[str, Any]]

ZIPF_EXPONENT = 1.1
#: Reference date for ticker names (2026-09-21), independent of when the simulator runs.
NAME_EPOCH_S = 1_790_000_000
MAX_LEVELS = 30
BURST_START = 0.0005
DELTA = "orderbook_delta"
TRADE = "trade"
TICKER = "ticker"
LIFECYCLE = "market_lifecycle_v2"
EVENT_LIFECYCLE = "event_lifecycle"
#: Lifecycle of multivariate (combo) markets: their own channel, left out of
#: ``market_lifecycle_v2`` (AsyncAPI ``multivariate_market_lifecycle``; changelog).
MVE_LIFECYCLE = "multivariate_market_lifecycle"
#: The combo markets' series (never given ordinary events).
MVE_SERIES = "KXMVECOMBO"
#: Combo markets per multivariate event (Kalshi makes an event per combo collection pick).
MVE_PER_EVENT = 2
#: Share of activity steps that touch a combo market (they trade rarely).
MVE_ACTIVITY_SHARE = 0.02
#: A market created mid-run opens (``activated``, then activity) this many seconds after its
#: ``created`` message, at the ``open_ts`` that message announces, as on the exchange, where a
#: market is listed before it opens for trading. Subscribers that react to ``created`` are then
#: subscribed before its first delta: nothing is lost to a race the exchange does not have.
OPEN_LEAD_S = (3, 20)


@dataclass(frozen=True, slots=True)
class TradeRecord:
    """A trade kept for ``GET /markets/trades``; ``num`` orders trades (newest = largest)."""

    num: int
    msg: dict[str, Any]
    #: REST ``created_time`` in microseconds: inside the ``ts_ms`` millisecond, increasing with
    #: ``num`` (Kalshi's REST trades carry microseconds, its WS trades milliseconds).
    created_us: int = 0


def _other(side: Side) -> Side:
    return "no" if side == "yes" else "yes"


class Exchange:
    """All exchange state and the step function that evolves it."""

    def __init__(
        self,
        seed: int,
        markets: int,
        now_s: int,
        *,
        lifecycle_share: float = 0.003,
        duplicate_delta_share: float = 0.01,
        trades_kept: int = 500_000,
        mve_markets: int = 0,
    ) -> None:
        self.rng = random.Random(seed)
        self.namer = Namer(self.rng)
        self.lifecycle_share = lifecycle_share
        self.duplicate_delta_share = duplicate_delta_share
        self.series: dict[str, Series] = {}
        self.events: dict[str, Event] = {}
        self.event_list: list[Event] = []
        self.markets: dict[str, Market] = {}
        self.market_list: list[Market] = []
        self.by_status: dict[str, Pool[str]] = {
            s: Pool() for s in ("initialized", "active", "inactive", "closed", "determined")
        }
        self.trades: deque[TradeRecord] = deque(maxlen=trades_kept)
        self._trade_num = 0
        self._target_active = max(1, int(markets * 0.85))
        self._cum: list[float] = []
        self._active: list[Market] = []
        self._dirty = True
        self._burst: Market | None = None
        self._burst_left = 0
        #: Markets created mid-run, by the ``open_ts`` they announced: (open_ts, index, ticker).
        self._opening: list[tuple[int, int, str]] = []
        self._announced: set[str] = set()
        self._build(markets, now_s)
        #: Combo markets by status; their own RNG keeps the ordinary stream of a seed unchanged.
        self.mve_rng = random.Random(seed * 7919 + 17)
        self.mve_pools: dict[str, Pool[str]] = {s: Pool() for s in ("initialized", "active")}
        self._mve_series = MVE_SERIES
        self._mve_events: list[Event] = []
        for _ in range(mve_markets):
            self._new_mve_market(now_s, status="active")

    # --- catalogue ---------------------------------------------------------------------------

    def _new_series(self) -> Series:
        rng = self.rng
        ticker = self.namer.series()
        s = Series(
            ticker=ticker,
            title=f"Simulated series {ticker}",
            category=rng.choice(CATEGORIES),
            frequency=rng.choice(FREQUENCIES),
            tags=[rng.choice(("sim", "hot", "macro", "weather"))],
        )
        self.series[ticker] = s
        return s

    def _new_event(self, now_s: int) -> Event:
        rng = self.rng
        if not self.series or rng.random() < 0.05:
            series = self._new_series()
        else:
            series = self.series[rng.choice([t for t in self.series if t != MVE_SERIES])]
        strike = now_s + rng.randint(1, 60) * 86_400
        # Names come from the RNG only (not the wall clock) so a seed names the same tickers.
        ticker = self.namer.event(series.ticker, NAME_EPOCH_S + strike - now_s)
        ev = Event(
            index=len(self.event_list),
            event_ticker=ticker,
            series_ticker=series.ticker,
            title=f"{series.title} on day {strike // 86_400}",
            sub_title=f"Day {strike // 86_400}",
            mutually_exclusive=rng.random() < 0.5,
            strike_date=strike,
            collateral_return_type=rng.choice(("MECNET", "DIRECNET", "")),
            updated_ts=now_s,
        )
        self.events[ticker] = ev
        self.event_list.append(ev)
        return ev

    def _new_market(self, ev: Event, now_s: int) -> Market:
        rng = self.rng
        strike = round(rng.uniform(1, 500) * 2) / 2
        ticker = self.namer.market(ev.event_ticker, strike)
        deci = rng.random() < 0.2
        kind = rng.choice(("greater", "less", "between"))
        open_ts = now_s + rng.randint(0, 3600)
        close_ts = ev.strike_date
        m = Market(
            index=len(self.market_list),
            ticker=ticker,
            event_ticker=ev.event_ticker,
            market_id=rng_uuid(rng),
            title=f"{ev.title}: {kind} {strike:g}?",
            yes_sub_title=f"{kind} {strike:g}",
            no_sub_title=f"not {kind} {strike:g}",
            structure="deci_cent" if deci else "linear_cent",
            tick=10 if deci else 100,
            fractional=rng.random() < 0.3,
            strike_type=kind,
            floor_strike=strike if kind in ("greater", "between") else None,
            cap_strike=strike + 1 if kind == "between" else (strike if kind == "less" else None),
            created_ts=now_s,
            open_ts=open_ts,
            close_ts=close_ts,
            expiration_ts=close_ts + 3600,
            updated_ts=now_s,
        )
        self.markets[ticker] = m
        self.market_list.append(m)
        ev.markets.append(ticker)
        self._set_status(m, "initialized")
        return m

    def _build(self, n: int, now_s: int) -> None:
        rng = self.rng
        while len(self.market_list) < n:
            ev = self._new_event(now_s - rng.randint(0, 30) * 86_400)
            for _ in range(min(rng.randint(1, 8), n - len(self.market_list))):
                m = self._new_market(ev, now_s - rng.randint(0, 30) * 86_400)
                r = rng.random()
                if r < 0.85:
                    m.open_ts = m.created_ts
                    # 3 in 85 open markets start paused (``inactive``), resting orders kept.
                    self._set_status(m, "active" if r < 0.82 else "inactive")
                    self._seed_book(m)
                elif r < 0.90:
                    pass  # stays initialized (unopened)
                elif r < 0.95:
                    self._set_status(m, "closed")
                else:
                    m.result = rng.choice(("yes", "no"))
                    m.settlement_value = DOLLAR if m.result == "yes" else 0
                    m.determination_ts = m.settled_ts = now_s - 3600
                    self._set_status(m, "finalized")
                m.ticker_state = shapes.ticker_state(m)
        ranks = list(range(1, len(self.market_list) + 1))
        rng.shuffle(ranks)
        for m, rank in zip(self.market_list, ranks, strict=True):
            m.weight = rank**-ZIPF_EXPONENT

    def _seed_book(self, m: Market) -> None:
        rng = self.rng
        t = m.tick
        mid = rng.randint(10 * DOLLAR // (100 * t), 90 * DOLLAR // (100 * t)) * t
        for side, top in (("yes", mid - t), ("no", DOLLAR - mid - t)):
            price = top
            for _ in range(rng.randint(0, 8)):
                if price < t:
                    break
                m.book.apply(side, price, self._size(m))  # type: ignore[arg-type]
                price -= t * rng.randint(1, 3)

    def _set_status(self, m: Market, status: str) -> None:
        old = self.by_status.get(m.status)
        if old is not None:
            old.remove(m.ticker)
        m.status = status
        new = self.by_status.get(status)
        if new is not None:
            new.add(m.ticker)
        self._dirty = True

    # --- multivariate (combo) markets ---------------------------------------------------------

    def _new_mve_market(self, now_s: int, status: str) -> Market:
        """A combo market over 2-3 legs of ordinary markets, in a ``KXMVE...`` event."""
        rng = self.mve_rng
        if self._mve_series not in self.series:
            self.series[self._mve_series] = Series(
                self._mve_series, "Simulated combos", "Sports", "daily", ["combo"]
            )
        if not self._mve_events or len(self._mve_events[-1].markets) >= MVE_PER_EVENT:
            n = len(self._mve_events)
            ev = Event(
                index=len(self.event_list),
                event_ticker=f"KXMVECOMBO-S{n:05d}",
                series_ticker=self._mve_series,
                title=f"Simulated combo collection {n}",
                sub_title="",
                mutually_exclusive=False,
                strike_date=now_s + 86_400,
                collateral_return_type="",
                updated_ts=now_s,
                mve=True,
            )
            self.events[ev.event_ticker] = ev
            self.event_list.append(ev)
            self._mve_events.append(ev)
        ev = self._mve_events[-1]
        ordinary = [m for m in self.market_list[:200] if m.mve_collection is None]
        legs = rng.sample(ordinary, k=min(len(ordinary), rng.randint(2, 3)))
        ticker = f"{ev.event_ticker}-{rng.getrandbits(40):010X}"
        m = Market(
            index=len(self.market_list),
            ticker=ticker,
            event_ticker=ev.event_ticker,
            market_id=rng_uuid(rng),
            title="Combo: " + ", ".join(leg.yes_sub_title for leg in legs),
            yes_sub_title="all legs",
            no_sub_title="not all legs",
            structure="linear_cent",
            tick=100,
            fractional=False,
            strike_type="custom",
            floor_strike=None,
            cap_strike=None,
            created_ts=now_s,
            open_ts=now_s,
            close_ts=ev.strike_date,
            expiration_ts=ev.strike_date + 3600,
            updated_ts=now_s,
            status=status,
            weight=0.0,
            mve_collection="KXMVECOMBO-COLLECTION",
            mve_legs=[
                {"event_ticker": leg.event_ticker, "market_ticker": leg.ticker, "side": "yes"}
                for leg in legs
            ],
        )
        self.markets[ticker] = m
        self.market_list.append(m)
        ev.markets.append(ticker)
        self.mve_pools[status].add(ticker)
        m.ticker_state = shapes.ticker_state(m)
        return m

    def _mve_step(self, now_ms: int, out: list[Emitted]) -> None:
        """A combo market's activity: mostly lifecycle (on its own channel), some orders."""
        rng = self.mve_rng
        now_s = now_ms // 1000
        pools = self.mve_pools
        r = rng.random()
        if r < 0.3 or not pools["active"]:
            m = self._new_mve_market(now_s, "initialized")
            ev = self.events[m.event_ticker]
            out.append((MVE_LIFECYCLE, m.ticker, shapes.created_msg(m, ev)))
        elif r < 0.6 and pools["initialized"]:
            m = self.markets[pools["initialized"].choice(rng)]
            pools["initialized"].remove(m.ticker)
            pools["active"].add(m.ticker)
            m.status, m.updated_ts = "active", now_s
            out.append((MVE_LIFECYCLE, m.ticker, shapes.lifecycle_msg(m, "activated")))
        elif r < 0.7:
            m = self.markets[pools["active"].choice(rng)]
            pools["active"].remove(m.ticker)
            for book_side, level, delta in m.book.clear_deltas():
                self._delta(m, book_side, level, delta, now_ms, out)
            m.result = rng.choice(("yes", "no"))
            m.settlement_value = DOLLAR if m.result == "yes" else 0
            m.status, m.updated_ts, m.determination_ts = "determined", now_s, now_s
            msg = shapes.lifecycle_msg(
                m,
                "determined",
                determination_ts=now_s,
                result=m.result,
                settlement_value=dollars(m.settlement_value),
            )
            out.append((MVE_LIFECYCLE, m.ticker, msg))
        else:
            m = self.markets[pools["active"].choice(rng)]
            t = m.tick
            side: Side = "yes" if rng.random() < 0.5 else "no"
            price = rng.randint(1, 40) * t
            if not m.book.crosses(side, price):
                self._delta(m, side, price, rng.randint(1, 20) * 100, now_ms, out)

    # --- choosing markets --------------------------------------------------------------------

    def _rebuild(self) -> None:
        self._active = [self.markets[t] for t in self.by_status["active"]]
        self._active.sort(key=lambda m: m.index)
        self._cum = list(itertools.accumulate(m.weight for m in self._active))
        self._dirty = False

    def _pick(self) -> Market | None:
        if self._dirty:
            self._rebuild()
        if not self._active:
            return None
        rng = self.rng
        if self._burst_left > 0:
            self._burst_left -= 1
            if self._burst is not None and self._burst.status == "active" and rng.random() < 0.5:
                return self._burst
        r = rng.random() * self._cum[-1]
        m = self._active[min(bisect.bisect_right(self._cum, r), len(self._active) - 1)]
        if rng.random() < BURST_START:
            self._burst, self._burst_left = m, rng.randint(50, 2000)
        return m

    def _size(self, m: Market) -> int:
        rng = self.rng
        if m.fractional and rng.random() < 0.2:
            return rng.randint(1, 5000)
        return rng.randint(1, 50) * 100

    # --- the step ----------------------------------------------------------------------------

    def step(self, now_ms: int, out: list[Emitted]) -> None:
        """Append one activity step's messages (1 to a few) to ``out``."""
        rng = self.rng
        if self.mve_pools["active"] and self.mve_rng.random() < MVE_ACTIVITY_SHARE:
            self._mve_step(now_ms, out)
            return
        if rng.random() < self.lifecycle_share:
            self._lifecycle(now_ms, out)
            return
        m = self._pick()
        if m is None:
            self._lifecycle(now_ms, out)
            return
        r = rng.random()
        if r < 0.45:
            self._place(m, now_ms, out)
        elif r < 0.80:
            self._cancel(m, now_ms, out)
        elif r < 0.995:
            self._trade(m, now_ms, out)
        else:
            self._block_trade(m, now_ms, out)
        self._ticker(m, now_ms, out)

    def _delta(
        self, m: Market, side: Side, price: int, delta: int, ts_ms: int, out: list[Emitted]
    ) -> None:
        m.book.apply(side, price, delta)
        out.append((DELTA, m.ticker, shapes.delta_msg(m, side, price, delta, ts_ms)))

    def _ticker(self, m: Market, now_ms: int, out: list[Emitted]) -> None:
        state = shapes.ticker_state(m)
        if state != m.ticker_state:
            m.ticker_state = state
            out.append((TICKER, m.ticker, shapes.ticker_msg(m, now_ms)))

    def _place(self, m: Market, now_ms: int, out: list[Emitted]) -> None:
        rng = self.rng
        side: Side = "yes" if rng.random() < 0.5 else "no"
        levels = m.book.side(side)
        if len(levels) >= MAX_LEVELS:
            self._cancel(m, now_ms, out)
            return
        t = m.tick
        other = m.book.best(_other(side))
        hi = (DOLLAR - other[0] - t) if other else (DOLLAR - t)
        own = m.book.best(side)
        if own is not None:
            price = own[0] + t * rng.randint(-8, 1)
        else:
            price = (hi - t * rng.randint(0, 10)) if other else rng.randint(5, 95) * DOLLAR // 100
        price = max(t, min(hi, price // t * t))
        if hi < t:
            self._cancel(m, now_ms, out)
            return
        size = self._size(m)
        self._delta(m, side, price, size, now_ms, out)
        if rng.random() < self.duplicate_delta_share:
            # Two equal orders at one price in the same millisecond: identical deltas (§8).
            self._delta(m, side, price, size, now_ms, out)

    def _cancel(self, m: Market, now_ms: int, out: list[Emitted]) -> None:
        rng = self.rng
        side: Side = "yes" if rng.random() < 0.5 else "no"
        levels = m.book.side(side) or m.book.side(_other(side))
        if not levels:
            self._place(m, now_ms, out)
            return
        side = "yes" if levels is m.book.yes else "no"
        price = rng.choice(list(levels))
        size = levels[price]
        cut = size if rng.random() < 0.3 or size == 1 else rng.randint(1, size - 1)
        self._delta(m, side, price, -cut, now_ms, out)

    def _record_trade(
        self,
        m: Market,
        yes_price: int,
        count: int,
        taker: Side,
        block: bool,
        now_ms: int,
        out: list[Emitted],
    ) -> None:
        rng = self.rng
        msg = shapes.trade_msg(m, rng_uuid(rng), yes_price, count, taker, block, now_ms)
        m.previous_price = m.last_price
        m.last_price, m.last_size = yes_price, count
        m.volume += count
        m.dollar_volume_units += count * yes_price
        if rng.random() < 0.6 or m.open_interest < count:
            m.open_interest += count
        else:
            m.open_interest -= count
        m.updated_ts = now_ms // 1000
        self._trade_num += 1
        base = now_ms * 1000
        created = base + int(msg["trade_id"][-2:], 16)  # 0..255 µs into the millisecond
        last = self.trades[-1].created_us if self.trades else 0
        if created <= last:
            created = min(last + 1, base + 999)
        self.trades.append(TradeRecord(self._trade_num, msg, created))
        out.append((TRADE, m.ticker, msg))

    def _trade(self, m: Market, now_ms: int, out: list[Emitted]) -> None:
        """A taker lifts the best bid of the other side: the delta first, then the trade."""
        rng = self.rng
        taker: Side = "yes" if rng.random() < 0.5 else "no"
        maker: Side = _other(taker)
        best = m.book.best(maker) or m.book.best(taker)
        if best is None:
            self._place(m, now_ms, out)
            return
        if m.book.best(maker) is None:
            taker, maker = maker, taker
        price, size = best
        count = min(size, self._size(m))
        self._delta(m, maker, price, -count, now_ms, out)
        yes_price = DOLLAR - price if taker == "yes" else price
        self._record_trade(m, yes_price, count, taker, False, now_ms, out)

    def _block_trade(self, m: Market, now_ms: int, out: list[Emitted]) -> None:
        """A block trade prints without touching the book."""
        rng = self.rng
        price = rng.randint(1, DOLLAR // m.tick - 1) * m.tick
        taker: Side = "yes" if rng.random() < 0.5 else "no"
        self._record_trade(m, price, rng.randint(10, 500) * 100, taker, True, now_ms, out)

    # --- lifecycle ---------------------------------------------------------------------------

    def _lifecycle(self, now_ms: int, out: list[Emitted]) -> None:
        rng = self.rng
        now_s = now_ms // 1000
        st = self.by_status
        n_active = len(st["active"]) + len(st["inactive"])
        r = rng.random()
        if r < 0.25 and (m := self._to_open(now_s)) is not None:
            self._touch(m, "active", now_s)
            out.append((LIFECYCLE, m.ticker, shapes.lifecycle_msg(m, "activated")))
        elif r < 0.45 and (n_active < self._target_active or rng.random() < 0.2):
            self._create_event(now_s, out)
        elif r < 0.55 and st["active"]:
            m = self.markets[st["active"].choice(rng)]
            self._touch(m, "inactive", now_s)
            out.append(
                (LIFECYCLE, m.ticker, shapes.lifecycle_msg(m, "deactivated", is_deactivated=True))
            )
        elif r < 0.62 and st["inactive"]:
            m = self.markets[st["inactive"].choice(rng)]
            self._touch(m, "active", now_s)
            out.append(
                (LIFECYCLE, m.ticker, shapes.lifecycle_msg(m, "activated", is_deactivated=False))
            )
        elif r < 0.72 and st["active"]:
            m = self.markets[st["active"].choice(rng)]
            m.close_ts += rng.randint(1, 48) * 3600
            self._touch(m, "active", now_s)
            out.append(
                (
                    LIFECYCLE,
                    m.ticker,
                    shapes.lifecycle_msg(m, "close_date_updated", close_ts=m.close_ts),
                )
            )
        elif r < 0.84 and n_active > self._target_active // 2 and st["active"]:
            self._close(self.markets[st["active"].choice(rng)], now_ms, out)
        elif r < 0.92 and st["closed"]:
            m = self.markets[st["closed"].choice(rng)]
            m.result = rng.choice(("yes", "no"))
            m.settlement_value = DOLLAR if m.result == "yes" else 0
            m.determination_ts = now_s
            self._touch(m, "determined", now_s)
            msg = shapes.lifecycle_msg(
                m,
                "determined",
                determination_ts=now_s,
                result=m.result,
                settlement_value=dollars(m.settlement_value),
            )
            out.append((LIFECYCLE, m.ticker, msg))
        elif st["determined"]:
            m = self.markets[st["determined"].choice(rng)]
            m.settled_ts = now_s
            self._touch(m, "finalized", now_s)
            out.append((LIFECYCLE, m.ticker, shapes.lifecycle_msg(m, "settled", settled_ts=now_s)))
        else:
            self._create_event(now_s, out)

    def _to_open(self, now_s: int) -> Market | None:
        """The market to activate now: a mid-run market whose announced ``open_ts`` has come,
        else (when there is none) a random unopened market of the starting catalogue, opened
        now. A mid-run market is never opened before its ``open_ts``."""
        while self._opening and self._opening[0][0] <= now_s:
            _, _, ticker = heapq.heappop(self._opening)
            self._announced.discard(ticker)
            m = self.markets[ticker]
            if m.status == "initialized":
                return m
        pool = self.by_status["initialized"]
        if not pool:
            return None
        m = self.markets[pool.choice(self.rng)]
        if m.ticker in self._announced:
            return None  # announced for later: not yet
        m.open_ts = now_s
        return m

    def _touch(self, m: Market, status: str, now_s: int) -> None:
        m.updated_ts = now_s
        self._set_status(m, status)

    def _create_event(self, now_s: int, out: list[Emitted]) -> None:
        """A new event and its markets: ``event_lifecycle`` then ``created`` per market."""
        ev = self._new_event(now_s)
        out.append((EVENT_LIFECYCLE, None, shapes.event_lifecycle_msg(ev)))
        for _ in range(self.rng.randint(1, 5)):
            m = self._new_market(ev, now_s)
            m.open_ts = now_s + self.rng.randint(*OPEN_LEAD_S)
            heapq.heappush(self._opening, (m.open_ts, m.index, m.ticker))
            self._announced.add(m.ticker)
            m.weight = self.rng.randint(1, len(self.market_list)) ** -ZIPF_EXPONENT
            m.ticker_state = shapes.ticker_state(m)
            out.append((LIFECYCLE, m.ticker, shapes.created_msg(m, ev)))

    def _close(self, m: Market, now_ms: int, out: list[Emitted]) -> None:
        """Close early: resting orders are cancelled (deltas), then the new close time."""
        for side, price, delta in m.book.clear_deltas():
            self._delta(m, side, price, delta, now_ms, out)
        self._ticker(m, now_ms, out)
        m.close_ts = now_ms // 1000
        self._touch(m, "closed", m.close_ts)
        out.append(
            (
                LIFECYCLE,
                m.ticker,
                shapes.lifecycle_msg(m, "close_date_updated", close_ts=m.close_ts),
            )
        )
