"""Fan-out: route each emitted event to the subscriptions that want it, once-serialised.

Each event's ``msg`` is serialised once (orjson); every subscriber gets its own small envelope
around those bytes. The same bytes go to the truth log, so the truth holds the msg exactly as
sent. Routing tables are rebuilt lazily after any subscription change.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson

from simulator.config import SimConfig
from simulator.frames import SEQUENCED
from simulator.market import Emitted, Exchange
from simulator.shapes import yes_scale_delta

if TYPE_CHECKING:
    from simulator.session import Session, Sub
    from simulator.truth import TruthLog

#: An emitted event with its ``msg`` serialised: (frame type, market ticker or None, JSON bytes).
Serialised = tuple[str, str | None, bytes]

#: Frame type -> the channel that carries it (§3.10: event_lifecycle rides market_lifecycle_v2).
CHANNEL_OF = {
    "orderbook_delta": "orderbook_delta",
    "trade": "trade",
    "ticker": "ticker",
    "market_lifecycle_v2": "market_lifecycle_v2",
    "event_lifecycle": "market_lifecycle_v2",
    "multivariate_market_lifecycle": "multivariate_market_lifecycle",
}


def wall_ms() -> int:
    """Wall-clock Unix milliseconds (data timestamps only)."""
    return time.time_ns() // 1_000_000


class Hub:
    """Sessions, routing tables, the event counter and the truth sink."""

    def __init__(
        self,
        config: SimConfig,
        exchange: Exchange,
        truth: TruthLog | None = None,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.config = config
        self.exchange = exchange
        self.truth = truth
        self.now_ms = now_ms
        self.sessions: dict[int, Session] = {}
        self.events: Counter[str] = Counter()
        self.frames_out = 0
        self._dirty = True
        #: the next ``withhold`` trades reach the truth and the REST history but no connection
        #: (every gatherer misses the same trades: what only the audit can find)
        self.withhold = 0
        self.trades_withheld = 0
        self._all: dict[str, list[Sub]] = {}
        self._by_ticker: dict[str, dict[str, list[Sub]]] = {}

    def routes_changed(self) -> None:
        """A subscription changed: rebuild the routing tables before the next event."""
        self._dirty = True

    def _rebuild(self) -> None:
        all_subs: dict[str, list[Sub]] = {c: [] for c in set(CHANNEL_OF.values())}
        by_ticker: dict[str, dict[str, list[Sub]]] = {c: {} for c in all_subs}
        for session in self.sessions.values():
            for sub in session.subs.values():
                if sub.channel not in all_subs:
                    continue
                if sub.tickers is None:
                    all_subs[sub.channel].append(sub)
                else:
                    table = by_ticker[sub.channel]
                    for t in sub.tickers:
                        table.setdefault(t, []).append(sub)
        self._all, self._by_ticker = all_subs, by_ticker
        self._dirty = False

    def publish(self, batch: list[Emitted]) -> None:
        """Serialise, log to truth and fan out every event of ``batch`` in order."""
        dumps = orjson.dumps
        self.publish_serialised([(t, ticker, dumps(msg)) for t, ticker, msg in batch])

    def publish_serialised(self, batch: Sequence[Serialised]) -> None:
        """Log to truth and fan out events whose ``msg`` is already JSON bytes, in order."""
        if self._dirty:
            self._rebuild()
        truth = self.truth
        events = self.events
        for frame_type, ticker, body in batch:
            events[frame_type] += 1
            if truth is not None:
                truth.append(frame_type, body)
            if self.withhold and frame_type == "trade":
                self.withhold -= 1
                self.trades_withheld += 1
                continue
            channel = CHANNEL_OF[frame_type]
            sequenced = frame_type in SEQUENCED
            for sub in self._all[channel]:
                sub.deliver(frame_type, body, sequenced)
            if ticker is not None:
                subs = self._by_ticker[channel].get(ticker)
                if subs:
                    yes_body: bytes | None = None  # the use_yes_price form, made once
                    for sub in subs:
                        if sub.yes_scale:
                            if yes_body is None:
                                yes_body = yes_scale_delta(body)
                            sub.deliver(frame_type, yes_body, sequenced)
                        else:
                            sub.deliver(frame_type, body, sequenced)
            if self._dirty:  # error 25 killed subscriptions mid-batch
                self._rebuild()

    def withhold_trades(self, n: int) -> None:
        """Send the next ``n`` trades to no connection (truth and REST history keep them)."""
        self.withhold += n

    def add(self, session: Session) -> None:
        """Register a new connection."""
        self.sessions[session.conn_id] = session

    def remove(self, session: Session) -> None:
        """Forget a closed connection."""
        session.close()
        self.sessions.pop(session.conn_id, None)
        self._dirty = True
