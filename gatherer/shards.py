"""Which market goes on which connection and into which order-book subscription (pure).

Invariant (DESIGN §3): a gatherer keeps each market in exactly ONE ``orderbook_delta``
subscription at a time — two would deliver every delta twice and double ``k``.

- :class:`ShardPlan` owns market → connection (least-loaded placement, stable until removal).
- :class:`SubscriptionLayout` owns, for one connection, market → subscription slot. Markets are
  *placed* the moment the command that subscribes them is sent, so a second command can never
  place them again; a failed command *unplaces* them, and the next :meth:`plan` retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ShardPlan:
    """Markets sharded over ``n`` connections, least-loaded first."""

    __slots__ = ("_load", "_owner")

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("at least one connection")
        self._owner: dict[str, int] = {}
        self._load = [0] * n

    def assign(self, market: str) -> int | None:
        """Place a new market; returns its connection, or None when it already has one."""
        if market in self._owner:
            return None
        i = min(range(len(self._load)), key=self._load.__getitem__)
        self._owner[market] = i
        self._load[i] += 1
        return i

    def remove(self, market: str) -> int | None:
        """Forget a market; returns the connection it was on (None when unknown)."""
        i = self._owner.pop(market, None)
        if i is not None:
            self._load[i] -= 1
        return i

    def owner(self, market: str) -> int | None:
        """The connection carrying ``market``."""
        return self._owner.get(market)

    def markets_of(self, conn: int) -> list[str]:
        """Every market on connection ``conn`` (sorted, for stable batches)."""
        return sorted(m for m, i in self._owner.items() if i == conn)

    @property
    def loads(self) -> list[int]:
        """Markets per connection."""
        return list(self._load)

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, market: object) -> bool:
        return market in self._owner


@dataclass(slots=True)
class Slot:
    """One ``orderbook_delta`` subscription on a connection (``sid`` once acknowledged)."""

    slot_id: int
    sid: int | None = None
    markets: set[str] = field(default_factory=set)
    #: Lowered when the exchange refuses more markets (error 26).
    capacity: int = 0
    #: A command is in flight on this slot: place nothing else until it is answered.
    busy: bool = False


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Send ``subscribe`` for a new slot with these markets."""

    slot_id: int
    markets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AddMarkets:
    """Send ``update_subscription add_markets`` on an acknowledged slot."""

    slot_id: int
    sid: int
    markets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeleteMarkets:
    """Send ``update_subscription delete_markets`` on an acknowledged slot."""

    slot_id: int
    sid: int
    markets: tuple[str, ...]


Action = Subscribe | AddMarkets | DeleteMarkets


class SubscriptionLayout:
    """Market → subscription slot for ONE connection; produces the commands to converge.

    ``desired`` is what the connection should carry; :meth:`plan` returns the actions that move
    the placed set towards it, placing/unplacing optimistically. Callers report outcomes with
    :meth:`acknowledged` (sid known), :meth:`failed` (command refused) and :meth:`drop_slot`
    (terminal error: the subscription is gone).
    """

    def __init__(self, per_subscription: int) -> None:
        if per_subscription < 1:
            raise ValueError("per_subscription must be >= 1")
        self.per_subscription = per_subscription
        self.desired: set[str] = set()
        self._slots: dict[int, Slot] = {}
        self._placed: dict[str, int] = {}
        self._next_slot = 1

    # -- queries ---------------------------------------------------------------------------
    def slot_of(self, market: str) -> int | None:
        """The slot carrying ``market`` (placed, maybe not yet acknowledged)."""
        return self._placed.get(market)

    def slot(self, slot_id: int) -> Slot | None:
        """A slot by id."""
        return self._slots.get(slot_id)

    def slot_by_sid(self, sid: int) -> Slot | None:
        """The slot with exchange subscription id ``sid``."""
        for s in self._slots.values():
            if s.sid == sid:
                return s
        return None

    @property
    def placed(self) -> set[str]:
        """Markets in some slot."""
        return set(self._placed)

    @property
    def slots(self) -> list[Slot]:
        """Every slot."""
        return list(self._slots.values())

    # -- transitions -----------------------------------------------------------------------
    def reset(self) -> None:
        """The connection closed: every subscription is gone (desired stays)."""
        self._slots.clear()
        self._placed.clear()

    def plan(self) -> list[Action]:
        """Commands that converge placed markets to ``desired`` (placements applied now)."""
        actions: list[Action] = []
        # Removals first: they free room in existing slots.
        for slot in self._slots.values():
            if slot.busy or slot.sid is None:
                continue
            gone = sorted(m for m in slot.markets if m not in self.desired)
            if gone:
                for m in gone:
                    slot.markets.discard(m)
                    del self._placed[m]
                slot.busy = True
                actions.append(DeleteMarkets(slot.slot_id, slot.sid, tuple(gone)))
        todo = sorted(m for m in self.desired if m not in self._placed)
        for slot in self._slots.values():
            if not todo:
                break
            if slot.busy or slot.sid is None:
                continue
            room = slot.capacity - len(slot.markets)
            if room <= 0:
                continue
            batch, todo = todo[:room], todo[room:]
            self._place(slot, batch)
            slot.busy = True
            actions.append(AddMarkets(slot.slot_id, slot.sid, tuple(batch)))
        while todo:
            batch, todo = todo[: self.per_subscription], todo[self.per_subscription :]
            slot = Slot(self._next_slot, capacity=self.per_subscription, busy=True)
            self._next_slot += 1
            self._slots[slot.slot_id] = slot
            self._place(slot, batch)
            actions.append(Subscribe(slot.slot_id, tuple(batch)))
        return actions

    def _place(self, slot: Slot, markets: list[str]) -> None:
        for m in markets:
            slot.markets.add(m)
            self._placed[m] = slot.slot_id

    def acknowledged(self, slot_id: int, sid: int | None = None) -> None:
        """The slot's command succeeded (``sid`` from ``subscribed`` for a new slot)."""
        slot = self._slots.get(slot_id)
        if slot is None:
            return
        slot.busy = False
        if sid is not None:
            slot.sid = sid

    def failed(self, slot_id: int, markets: tuple[str, ...], *, full: bool = False) -> None:
        """A command on the slot was refused: unplace its markets (``full``: error 26)."""
        slot = self._slots.get(slot_id)
        if slot is None:
            return
        slot.busy = False
        for m in markets:
            if self._placed.get(m) == slot_id:
                del self._placed[m]
            slot.markets.discard(m)
        if full:
            slot.capacity = len(slot.markets)
            if slot.sid is None:
                # A whole new subscription was refused: the exchange's cap is below ours.
                self.per_subscription = max(1, len(markets) // 2)
        if slot.sid is None and not slot.markets:
            del self._slots[slot_id]

    def drop_slot(self, slot_id: int) -> tuple[str, ...]:
        """The subscription died (terminal error): unplace all its markets and return them."""
        slot = self._slots.pop(slot_id, None)
        if slot is None:
            return ()
        for m in slot.markets:
            if self._placed.get(m) == slot_id:
                del self._placed[m]
        return tuple(sorted(slot.markets))
