"""The subscriptions of one WebSocket connection, sans I/O (DESIGN §3, kalshi-protocol.md §3).

:class:`SubscriptionSession` is the state machine between :class:`~kalshi_data.kalshi.wsproto.
WsProtocol` events and the commands that keep a connection's subscriptions where the registry
wants them. It owns no socket, timer or task (and imports no asyncio): every input returns the
:data:`Action` list the shell carries out — :class:`Send` a command now, :class:`Wake` (call
:meth:`~SubscriptionSession.sync` again, now or after a pause). The shell
(:class:`~gatherer.connections.Connection`) only reads frames, writes text and runs timers.

State kept, all of it per connection:

- the protocol (command ids, sids, seqs) and the :class:`~gatherer.shards.SubscriptionLayout`
  (market -> order-book subscription slot; ``desired`` is what the registry wants);
- what each command in flight was for (subscribe, add, delete, snapshot, firehose,
  unsubscribe), so its reply acknowledges, retries or unplaces the right thing;
- the firehose channels (``trade``, ``ticker``, ``market_lifecycle_v2``, with ``mve_markets:
  include`` the combo lifecycle) by sid, their open reconnect/resubscribe gaps (recovered by the
  next ``subscribed``) and the refused subscribes waiting for a retry;
- commands refused with a RETRY code (18 command timeout, 27 command rate), sent again
  unchanged by the next :meth:`~SubscriptionSession.sync` after a pause.

Recovery (DESIGN §3): a seq gap on an order-book sid opens a gap and asks ``get_snapshot`` for
its markets; if that is refused the slot is unsubscribed (the gap's ``how`` becomes
``resubscribe``) and its markets are placed again only once ``unsubscribed`` arrives, so no
market is ever in two subscriptions. Terminal errors (10, 25) drop the slot and resubscribe. A
lost connection opens one gap for the books and one per firehose channel; :meth:`start` on the
next connection subscribes everything again. Gap and dead-letter rows go through
:class:`~gatherer.ingest.Ingest` (pure: rows to a ``put`` callable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from gatherer.ingest import Ingest
from gatherer.sequencing import OpenGap
from gatherer.shards import AddMarkets, DeleteMarkets, Subscribe, SubscriptionLayout
from kalshi_data.kalshi.codes import RETRYABLE, WsErrorCode
from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.kalshi.wsproto import (
    Command,
    CommandError,
    Duplicate,
    Event,
    Gap,
    Ok,
    Resubscribe,
    Subscribed,
    SubscriptionList,
    Unsubscribed,
    WsProtocol,
)

log = logging.getLogger(__name__)

ORDERBOOK = "orderbook_delta"
#: Channels subscribed once per gatherer, for all markets (no market filter).
FIREHOSE: tuple[str, ...] = ("trade", "ticker", "market_lifecycle_v2")
#: The combo markets' lifecycle channel, added to the firehose when ``mve_markets: include``.
MVE_LIFECYCLE = "multivariate_market_lifecycle"
#: Error 26: subscription market limit exceeded (kalshi-protocol.md §3.2).
MARKET_LIMIT = WsErrorCode.SUBSCRIPTION_MARKET_LIMIT_EXCEEDED
#: Errors after which the same command is sent again after a pause, nothing else changed
#: (issue 11): 18 command timeout, 27 per-subscription command rate limit.
RETRY_CODES = RETRYABLE

PendingKind = Literal["subscribe", "add", "delete", "snapshot", "firehose", "unsubscribe"]
#: Commands a RETRY code sends again unchanged (the subscription is unchanged meanwhile).
_RESENT: frozenset[PendingKind] = frozenset({"delete", "snapshot", "unsubscribe"})


# -- what the shell does ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``command.text`` as a text frame now (dropped quietly if the socket is gone)."""

    command: Command


@dataclass(frozen=True, slots=True)
class Wake:
    """Call :meth:`SubscriptionSession.sync` again after ``after_s`` seconds (0: soon).

    A pause keeps a persistent refusal from spinning; the reader never sleeps.
    """

    after_s: float = 0.0


Action = Send | Wake


@dataclass(slots=True)
class _Pending:
    kind: PendingKind
    slot_id: int | None
    markets: tuple[str, ...] = ()
    gap: OpenGap | None = None
    channel: str | None = None


class SubscriptionSession:
    """Subscription state of one connection: events and wanted markets in, actions out.

    Args:
        ingest: where gap and dead-letter rows go (shared by every connection).
        per_subscription: markets per order-book subscription (lowered by error 26).
        firehose: the all-market channels this connection carries (empty: none).
        use_yes_price: sent on every ``orderbook_delta`` subscribe (issue 11).
        retry_pause_s: the pause before a refused command is tried again.
        name: the connection's name in logs.
        on_resync: called on every resync (a snapshot request or a resubscribe): the metric.
    """

    def __init__(
        self,
        ingest: Ingest,
        *,
        per_subscription: int,
        firehose: tuple[str, ...] = (),
        use_yes_price: bool = True,
        retry_pause_s: float,
        name: str = "ws",
        on_resync: Callable[[], None] | None = None,
    ) -> None:
        self._ingest = ingest
        self.firehose_channels = firehose
        self._use_yes_price = use_yes_price
        self._pause = retry_pause_s
        self.name = name
        self._on_resync = on_resync
        self.proto = WsProtocol()
        self.layout = SubscriptionLayout(per_subscription)
        self._pending: dict[int, _Pending] = {}
        self._firehose_sids: dict[int, str] = {}
        self._firehose_gaps: dict[str, OpenGap] = {}
        self._firehose_retry: set[str] = set()
        #: Commands refused with a RETRY_CODES error, sent again by the next sync.
        self._cmd_retry: list[_Pending] = []
        self._handlers: dict[type[Any], Callable[[Any, int], list[Action]]] = {
            Subscribed: self._on_subscribed,
            Ok: self._on_ok,
            Gap: self._on_gap,
            Duplicate: self._on_duplicate,
            Resubscribe: self._on_terminal,
            CommandError: self._on_command_error,
            Unsubscribed: self._on_unsubscribed,
            DeadLetter: self._on_dead_letter,
            SubscriptionList: self._on_list,
        }
        self._refused: dict[PendingKind, Callable[[_Pending, CommandError], list[Action]]] = {
            "firehose": self._firehose_refused,
            "subscribe": self._placement_refused,
            "add": self._placement_refused,
            "delete": self._delete_refused,
            "snapshot": self._snapshot_refused,
            "unsubscribe": self._unsubscribe_refused,
        }

    # -- queries ---------------------------------------------------------------------------
    @property
    def firehose_sids(self) -> Mapping[int, str]:
        """Live firehose subscriptions: sid -> channel (read-only)."""
        return MappingProxyType(self._firehose_sids)

    @property
    def open_firehose_gaps(self) -> Mapping[str, OpenGap]:
        """Firehose channels with a gap waiting for their next ``subscribed`` (read-only)."""
        return MappingProxyType(self._firehose_gaps)

    def is_live(self, market: str) -> bool:
        """Is ``market`` in an acknowledged order-book subscription with no command pending?"""
        layout = self.layout
        slot_id = layout.slot_of(market)
        slot = layout.slot(slot_id) if slot_id is not None else None
        return slot is not None and slot.sid is not None and not slot.busy

    # -- inputs ----------------------------------------------------------------------------
    def want(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[Wake]:
        """Change the markets to carry; the commands come from the next :meth:`sync`."""
        self.layout.desired.update(add)
        self.layout.desired.difference_update(remove)
        return [Wake()]

    def start(self) -> list[Action]:
        """A new connection is open: nothing is subscribed; subscribe everything again."""
        self.proto.reset()
        self.layout.reset()
        self._pending.clear()
        self._firehose_sids.clear()
        self._firehose_retry.clear()
        self._cmd_retry.clear()
        actions: list[Action] = [self._subscribe_firehose(c) for c in self.firehose_channels]
        actions.append(Wake())  # subscribe every wanted market again
        return actions

    def lost(self) -> None:
        """The connection that was up is gone: record what it carried as missed.

        Everything may have missed messages until resubscribed: one gap for the order books
        (fresh snapshots recover it), one per firehose channel (its next ``subscribed`` does).
        """
        markets = tuple(sorted(self.layout.desired))
        if markets:
            self._ingest.open_gap(
                sid=None,
                channel=ORDERBOOK,
                markets=markets,
                expected=None,
                received=None,
                how="reconnect",
            )
        for channel in self.firehose_channels:
            if channel not in self._firehose_gaps:
                self._firehose_gaps[channel] = self._ingest.open_gap(
                    sid=None,
                    channel=channel,
                    markets=(),
                    expected=None,
                    received=None,
                    how="reconnect",
                )
        self.layout.reset()

    def sync(self) -> list[Action]:
        """The commands that converge the subscriptions to the wanted markets, retries first."""
        actions: list[Action] = []
        retry_firehose = sorted(self._firehose_retry)
        self._firehose_retry.clear()
        actions.extend(self._subscribe_firehose(c) for c in retry_firehose)
        retry, self._cmd_retry = self._cmd_retry, []
        for p in retry:
            send = self._resend(p)
            if send is not None:
                actions.append(send)
        actions.extend(self._command(a) for a in self.layout.plan())
        return actions

    def handle(self, event: Event, received_at_us: int) -> list[Action]:
        """A protocol event other than data (data goes straight to ingest)."""
        handler = self._handlers.get(type(event))
        return handler(event, received_at_us) if handler is not None else []

    # -- commands --------------------------------------------------------------------------
    def _command(self, action: Subscribe | AddMarkets | DeleteMarkets) -> Send:
        proto = self.proto
        if isinstance(action, Subscribe):
            cmd = proto.subscribe([ORDERBOOK], action.markets, use_yes_price=self._use_yes_price)
            self._pending[cmd.id] = _Pending("subscribe", action.slot_id, action.markets)
        elif isinstance(action, AddMarkets):
            cmd = proto.add_markets(action.sid, action.markets)
            self._pending[cmd.id] = _Pending("add", action.slot_id, action.markets)
        else:
            cmd = proto.delete_markets(action.sid, action.markets)
            self._pending[cmd.id] = _Pending("delete", action.slot_id, action.markets)
        return Send(cmd)

    def _resend(self, p: _Pending) -> Send | None:
        """A delete, get_snapshot or unsubscribe refused with 18/27, again."""
        slot = self.layout.slot(p.slot_id) if p.slot_id is not None else None
        if slot is None or slot.sid is None:
            return None  # the slot is gone (reconnect, terminal error): nothing left to do
        if p.kind == "delete":
            cmd = self.proto.delete_markets(slot.sid, p.markets)
        elif p.kind == "snapshot":
            wanted = tuple(m for m in p.markets if m in slot.markets)
            if not wanted:
                return None
            cmd = self.proto.get_snapshot(slot.sid, wanted)
            p = _Pending("snapshot", p.slot_id, wanted, gap=p.gap)
        else:
            cmd = self.proto.unsubscribe([slot.sid])
        self._pending[cmd.id] = p
        return Send(cmd)

    def _subscribe_firehose(self, channel: str) -> Send:
        cmd = self.proto.subscribe([channel])
        self._pending[cmd.id] = _Pending("firehose", None, channel=channel)
        return Send(cmd)

    def _take(self, cmd_id: int | None) -> _Pending | None:
        return self._pending.pop(cmd_id, None) if cmd_id is not None else None

    def _resynced(self) -> None:
        if self._on_resync is not None:
            self._on_resync()

    # -- events (one method each) ----------------------------------------------------------
    def _on_subscribed(self, event: Subscribed, received_at_us: int) -> list[Action]:
        p = self._take(event.cmd_id)
        if p is None:
            return []
        if p.kind == "firehose":
            self._firehose_sids[event.sid] = event.channel
            gap = self._firehose_gaps.pop(event.channel, None)
            if gap is not None:
                self._ingest.gap_recovered(gap)
        elif p.kind == "subscribe" and p.slot_id is not None:
            self.layout.acknowledged(p.slot_id, event.sid)
            return [Wake()]
        return []

    def _on_ok(self, event: Ok, received_at_us: int) -> list[Action]:
        p = self._take(event.cmd_id)
        if p is not None and p.slot_id is not None and p.kind in {"add", "delete"}:
            self.layout.acknowledged(p.slot_id)
            return [Wake()]
        return []

    def _on_gap(self, event: Gap, received_at_us: int) -> list[Action]:
        channel = event.channel or self._firehose_sids.get(event.sid, "unknown")
        slot = self.layout.slot_by_sid(event.sid)
        if slot is None:
            # A firehose channel: the skipped frames are lost to this gatherer (other gatherers
            # cover them); trades are keyed by trade_id, so nothing after the gap is suspect.
            gap = self._ingest.open_gap(
                sid=event.sid,
                channel=channel,
                markets=(),
                expected=event.expected,
                received=event.received,
                how="none",
                received_at_us=received_at_us,
            )
            self._ingest.gap_recovered(gap, received_at_us)
            return []
        markets = tuple(sorted(slot.markets))
        gap = self._ingest.open_gap(
            sid=event.sid,
            channel=ORDERBOOK,
            markets=markets,
            expected=event.expected,
            received=event.received,
            how="get_snapshot",
            received_at_us=received_at_us,
        )
        self._resynced()
        if not markets:
            return []
        cmd = self.proto.get_snapshot(event.sid, markets)
        self._pending[cmd.id] = _Pending("snapshot", slot.slot_id, markets, gap=gap)
        return [Send(cmd)]

    def _on_duplicate(self, event: Duplicate, received_at_us: int) -> list[Action]:
        log.debug("%s: duplicate seq %s on sid %s dropped", self.name, event.seq, event.sid)
        return []

    def _on_terminal(self, event: Resubscribe, received_at_us: int) -> list[Action]:
        self._resynced()
        log.warning(
            "%s: subscription %s (%s) ended by error %s, resubscribing",
            self.name,
            event.sid,
            event.channel,
            event.code,
        )
        how = f"resubscribe (error {event.code})"
        channel = self._firehose_sids.pop(event.sid, None)
        if channel is not None:
            self._firehose_gaps[channel] = self._ingest.open_gap(
                sid=event.sid,
                channel=channel,
                markets=(),
                expected=None,
                received=None,
                how=how,
                received_at_us=received_at_us,
            )
            return [self._subscribe_firehose(channel)]
        slot = self.layout.slot_by_sid(event.sid)
        if slot is None:
            return []
        markets = self.layout.drop_slot(slot.slot_id)
        if not markets:
            return []
        self._ingest.open_gap(
            sid=event.sid,
            channel=ORDERBOOK,
            markets=markets,
            expected=None,
            received=None,
            how=how,
            received_at_us=received_at_us,
        )
        return [Wake()]

    def _on_command_error(self, event: CommandError, received_at_us: int) -> list[Action]:
        p = self._take(event.cmd_id)
        log.warning(
            "%s: command %s refused: code %s %s",
            self.name,
            p.kind if p is not None else event.cmd_id,
            event.code,
            event.msg,
        )
        if p is None:
            return []
        if event.code in RETRY_CODES and p.kind in _RESENT:
            # A timeout or the per-subscription command rate: the same command again after a
            # pause. The subscription is unchanged meanwhile, so nothing is lost (a pending
            # snapshot's markets stay suspect until it arrives).
            self._cmd_retry.append(p)
            return [Wake(self._pause)]
        return self._refused[p.kind](p, event)

    # -- refusals (one method per command kind) --------------------------------------------
    def _firehose_refused(self, p: _Pending, event: CommandError) -> list[Action]:
        if p.channel is None:
            return []
        self._firehose_retry.add(p.channel)
        return [Wake(self._pause)]

    def _placement_refused(self, p: _Pending, event: CommandError) -> list[Action]:
        """A subscribe or add_markets refused: unplace its markets (26: the slot is full)."""
        if p.slot_id is None:
            return []
        self.layout.failed(p.slot_id, p.markets, full=event.code == MARKET_LIMIT)
        return [Wake(self._pause)]  # placed again by the next plan, after the pause

    def _delete_refused(self, p: _Pending, event: CommandError) -> list[Action]:
        if p.slot_id is not None:
            self.layout.acknowledged(p.slot_id)
        return []

    def _unsubscribe_refused(self, p: _Pending, event: CommandError) -> list[Action]:
        return []  # the slot stays busy: nothing is placed twice

    def _snapshot_refused(self, p: _Pending, event: CommandError) -> list[Action]:
        """get_snapshot refused: resubscribe the slot.

        Wait for ``unsubscribed`` before the markets go anywhere else, or two subscriptions
        would carry them (doubled k, DESIGN §3): the slot stays busy until then.
        """
        slot = self.layout.slot(p.slot_id) if p.slot_id is not None else None
        if slot is None or slot.sid is None:
            return []
        if p.gap is not None:
            self._ingest.gaps.set_how(p.gap.gap_id, "resubscribe")
        slot.busy = True
        cmd = self.proto.unsubscribe([slot.sid])
        self._pending[cmd.id] = _Pending("unsubscribe", p.slot_id)
        return [Send(cmd)]

    def _on_unsubscribed(self, event: Unsubscribed, received_at_us: int) -> list[Action]:
        slot = self.layout.slot_by_sid(event.sid)
        if slot is None:
            return []
        self.layout.drop_slot(slot.slot_id)
        return [Wake()]

    def _on_dead_letter(self, event: DeadLetter, received_at_us: int) -> list[Action]:
        self._ingest.dead_letter(event.reason, event.raw, "ws", received_at_us)
        return []

    def _on_list(self, event: SubscriptionList, received_at_us: int) -> list[Action]:
        log.debug("%s: subscriptions %s", self.name, event.subscriptions)
        return []
