"""Kalshi WebSocket v2 protocol state, sans I/O (kalshi-protocol.md §3).

:class:`WsProtocol` builds commands (text to send) and turns received frames into typed events.
It owns no socket, timer or task: the connection shell sends ``Command.text``, passes every
received text frame to :meth:`WsProtocol.feed`, acts on the events, and calls
:meth:`WsProtocol.reset` when the connection is replaced.

State kept:

- command ids (1, 2, ... per connection; §3.1) and the commands still awaiting a reply;
- subscriptions: sid -> channel and market tickers (updated by add/delete_markets and by the
  full list an ``ok`` reply carries);
- per-sid last data ``seq`` (§3.4). The spec requires ``seq`` but does not promise it starts at
  1, so the first sequenced data frame of a subscription (the ``orderbook_snapshot`` on an order
  book) sets the baseline, whatever its number. After it ``seq == last + 1`` is in order,
  ``seq <= last`` is a :class:`Duplicate` (dropped), ``seq > last + 1`` is a :class:`Gap`
  followed by the frame's :class:`Data` (the caller marks it and what follows suspect until a
  fresh snapshot); an order-book delta before any snapshot is a gap too;
- ``use_yes_price`` per subscription: order-book records that came on the YES scale are turned
  into the stored NO convention (:func:`to_no_convention`).

Whether ``ok``/``unsubscribed`` replies consume a number of the sid's counter is not specified
(§3.4): their seq never advances ``last``, but a data seq that skips exactly the numbers such
replies carried is not a gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from kalshi_data.kalshi import codes
from kalshi_data.kalshi.parse import (
    CONTROL_TYPES,
    DeadLetter,
    Frame,
    dead_letter,
    decode_frame,
    parse_data,
)
from kalshi_data.records import PRICE_SCALE, DeltaRec, Record, SnapshotRec

#: Subscription-scoped errors after which the subscription is dead (§3.2): 10, 25.
TERMINAL_ERROR_CODES = codes.TERMINAL
#: Channels whose subscriptions carry a market list.
MARKET_CHANNELS = frozenset({"orderbook_delta", "ticker", "trade", "fill", "market_positions"})


# -- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A client command: its id, name, params, and the JSON text to send as a text frame."""

    id: int
    cmd: str
    params: Mapping[str, Any] | None

    @property
    def text(self) -> str:
        """The JSON text (send as a WebSocket *text* frame)."""
        body: dict[str, Any] = {"id": self.id, "cmd": self.cmd}
        if self.params is not None:
            body["params"] = self.params
        return orjson.dumps(body).decode()


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A channel of a subscribe command is live under ``sid``."""

    cmd_id: int | None
    channel: str
    sid: int


@dataclass(slots=True)  # not frozen: one per frame (a frozen dataclass costs 4x to build)
class Data:
    """A data frame: its record, or a dead letter when the payload was bad.

    ``seq`` is None for unsequenced types (ticker); ``cmd_id`` is set on snapshots answering
    ``get_snapshot``.
    """

    sid: int | None
    seq: int | None
    type: str
    record: Record | DeadLetter
    cmd_id: int | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """``received`` arrived on ``sid`` where ``expected`` was due: messages were lost.

    ``expected`` 0: an order-book delta came before any snapshot of the subscription (the
    snapshot is the baseline: the first ``seq`` is whatever it carries, not necessarily 1).
    """

    sid: int
    channel: str | None
    markets: tuple[str, ...]
    expected: int
    received: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A data frame with ``seq <= last`` on its sid: dropped."""

    sid: int
    seq: int


@dataclass(frozen=True, slots=True)
class Resubscribe:
    """A terminal error (10 channel error, 25 buffer overflow) killed ``sid``: subscribe again."""

    sid: int
    channel: str | None
    markets: tuple[str, ...]
    code: int


@dataclass(frozen=True, slots=True)
class CommandError:
    """The server refused a command (or reported a non-terminal subscription error)."""

    cmd_id: int | None
    code: int | None
    msg: str
    sid: int | None = None
    market_tickers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ok:
    """An ``update_subscription`` succeeded; ``market_tickers`` is the full list after it, or
    None when the server omitted it (``skip_ticker_ack``)."""

    cmd_id: int | None
    sid: int | None
    market_tickers: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class SubscriptionList:
    """The ``list_subscriptions`` reply: ``(sid, channel)`` pairs."""

    cmd_id: int | None
    subscriptions: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """``sid`` is gone after an unsubscribe."""

    sid: int


Event = (
    Subscribed
    | Data
    | Gap
    | Duplicate
    | Resubscribe
    | CommandError
    | Ok
    | SubscriptionList
    | Unsubscribed
    | DeadLetter
)


@dataclass(slots=True)
class Subscription:
    """A live subscription: channel, markets (empty = all markets), last data seq (0 = none yet:
    the first sequenced data frame sets the baseline)."""

    sid: int
    channel: str
    markets: list[str]
    last_seq: int = 0
    #: ``use_yes_price`` was sent true: NO-side levels arrive on the YES scale.
    yes_scale: bool = False


@dataclass(slots=True)
class _Pending:
    cmd: Command
    channels: set[str] = field(default_factory=set)
    markets: list[str] = field(default_factory=list)
    yes_scale: bool = False


def to_no_convention(rec: Record | DeadLetter) -> Record | DeadLetter:
    """An order-book record that arrived under ``use_yes_price`` (NO-side levels on the YES
    scale, issue 11) in the stored convention: NO bids at NO prices (``1 - p``), as REST sends
    them; ``wire_scale`` says it came as ``yes``. Other records pass unchanged."""
    if type(rec) is DeltaRec:
        if rec.side == "no":
            rec.price = PRICE_SCALE - rec.price
        rec.wire_scale = "yes"
        return rec
    if type(rec) is SnapshotRec:
        no = tuple(sorted((PRICE_SCALE - p, c) for p, c in rec.no))
        return replace(rec, no=no, wire_scale="yes")
    return rec


def _markets_param(tickers: Sequence[str] | None) -> dict[str, Any]:
    if not tickers:
        return {}
    return {"market_tickers": list(tickers)}


def _str_list(v: Any) -> tuple[str, ...] | None:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    return None


class WsProtocol:
    """Command, subscription and sequence state of one WebSocket connection (no I/O)."""

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._subs: dict[int, Subscription] = {}
        self._control_seqs: dict[int, set[int]] = {}

    # -- state ---------------------------------------------------------------------------

    @property
    def subscriptions(self) -> Mapping[int, Subscription]:
        """Live subscriptions by sid (read-only view; do not mutate the values)."""
        return self._subs

    @property
    def pending(self) -> Mapping[int, Command]:
        """Commands sent and not yet fully answered, by id."""
        return {cid: p.cmd for cid, p in self._pending.items()}

    def sid_for(self, channel: str, ticker: str) -> int | None:
        """The sid whose ``channel`` subscription lists ``ticker`` (None if none)."""
        for sub in self._subs.values():
            if sub.channel == channel and ticker in sub.markets:
                return sub.sid
        return None

    def reset(self) -> None:
        """The connection was replaced: every sid, seq and pending command is gone (§3.4)."""
        self._next_id = 1
        self._pending.clear()
        self._subs.clear()
        self._control_seqs.clear()

    # -- commands (§3.1) -----------------------------------------------------------------

    def _command(self, cmd: str, params: Mapping[str, Any] | None) -> Command:
        command = Command(self._next_id, cmd, params)
        self._next_id += 1
        return command

    def subscribe(
        self,
        channels: Iterable[str],
        market_tickers: Sequence[str] | None = None,
        *,
        send_initial_snapshot: bool = False,
        skip_ticker_ack: bool = False,
        use_yes_price: bool | None = None,
    ) -> Command:
        """A ``subscribe`` for ``channels`` (one sid each), optionally limited to markets.

        ``use_yes_price`` (orderbook only) is sent as given when not None; true means NO-side
        levels come on the YES scale, and :func:`to_no_convention` turns them back."""
        chans = list(channels)
        if not chans:
            raise ValueError("subscribe needs at least one channel")
        params: dict[str, Any] = {"channels": chans, **_markets_param(market_tickers)}
        if send_initial_snapshot:
            params["send_initial_snapshot"] = True
        if skip_ticker_ack:
            params["skip_ticker_ack"] = True
        if use_yes_price is not None:
            params["use_yes_price"] = use_yes_price
        command = self._command("subscribe", params)
        self._pending[command.id] = _Pending(
            command, set(chans), list(market_tickers or ()), yes_scale=use_yes_price is True
        )
        return command

    def unsubscribe(self, sids: Iterable[int]) -> Command:
        """An ``unsubscribe`` of ``sids``."""
        sid_list = list(sids)
        if not sid_list:
            raise ValueError("unsubscribe needs at least one sid")
        command = self._command("unsubscribe", {"sids": sid_list})
        self._pending[command.id] = _Pending(command)
        return command

    def _update(self, sid: int, action: str, tickers: Sequence[str]) -> Command:
        if not tickers:
            raise ValueError(f"{action} needs at least one market ticker")
        params = {"sids": [sid], "action": action, "market_tickers": list(tickers)}
        command = self._command("update_subscription", params)
        self._pending[command.id] = _Pending(command, markets=list(tickers))
        return command

    def add_markets(self, sid: int, tickers: Sequence[str]) -> Command:
        """``update_subscription`` ``add_markets``."""
        return self._update(sid, "add_markets", tickers)

    def delete_markets(self, sid: int, tickers: Sequence[str]) -> Command:
        """``update_subscription`` ``delete_markets``."""
        return self._update(sid, "delete_markets", tickers)

    def get_snapshot(self, sid: int, tickers: Sequence[str]) -> Command:
        """``update_subscription`` ``get_snapshot``: fresh ``orderbook_snapshot`` per ticker."""
        return self._update(sid, "get_snapshot", tickers)

    def list_subscriptions(self) -> Command:
        """``list_subscriptions``."""
        command = self._command("list_subscriptions", None)
        self._pending[command.id] = _Pending(command)
        return command

    # -- frames in -----------------------------------------------------------------------

    def feed(self, frame_text: bytes | str) -> list[Event]:
        """Events for one received frame; never raises (bad input becomes a dead letter)."""
        frame = decode_frame(frame_text)
        if isinstance(frame, DeadLetter):
            return [frame]
        try:
            if frame.type in CONTROL_TYPES:
                return self._control(frame)
            return self._data(frame)
        except Exception as exc:  # DESIGN §4.5: never crash the loop on input
            return [dead_letter(f"protocol state error: {type(exc).__name__}", frame.raw)]

    def _data(self, frame: Frame) -> list[Event]:
        sid, seq = frame.sid, frame.seq
        if sid is not None and seq is not None:
            sub = self._subs.get(sid)
            if sub is not None:
                last = sub.last_seq
                if seq == last + 1 and sid not in self._control_seqs:  # the common case
                    sub.last_seq = seq
                elif last == 0:  # the first frame: its seq is the baseline, not a gap
                    sub.last_seq = seq
                    self._control_seqs.pop(sid, None)
                    if sub.channel == "orderbook_delta" and frame.type != "orderbook_snapshot":
                        # A delta before any snapshot: the book it changes is unknown.
                        gap = Gap(sid, sub.channel, tuple(sub.markets), 0, seq)
                        return [gap, self._data_event(frame)]
                elif seq <= last:
                    return [Duplicate(sid, seq)]
                else:
                    expected = last + 1
                    skipped = self._control_seqs.pop(sid, set())
                    while expected in skipped and expected < seq:
                        expected += 1
                    sub.last_seq = seq
                    if seq > expected:
                        gap = Gap(sid, sub.channel, tuple(sub.markets), expected, seq)
                        return [gap, self._data_event(frame)]
        return [self._data_event(frame)]

    def _data_event(self, frame: Frame) -> Data:
        if frame.id is not None and frame.type == "orderbook_snapshot":
            self._snapshot_answered(frame)
        rec = parse_data(frame)
        if frame.sid is not None:
            sub = self._subs.get(frame.sid)
            if sub is not None and sub.yes_scale:
                rec = to_no_convention(rec)
        return Data(frame.sid, frame.seq, frame.type, rec, frame.id)

    def _snapshot_answered(self, frame: Frame) -> None:
        """A snapshot echoing a ``get_snapshot`` id: tick its ticker off the pending command."""
        assert frame.id is not None
        pending = self._pending.get(frame.id)
        if pending is None or not isinstance(frame.msg, dict):
            return
        ticker = frame.msg.get("market_ticker")
        if ticker in pending.markets:
            pending.markets.remove(ticker)
        if not pending.markets:
            del self._pending[frame.id]

    def _note_control_seq(self, frame: Frame) -> None:
        if frame.sid is not None and frame.seq is not None:
            self._control_seqs.setdefault(frame.sid, set()).add(frame.seq)

    def _control(self, frame: Frame) -> list[Event]:
        msg = frame.msg
        if frame.type == "subscribed":
            return self._subscribed(frame)
        if frame.type == "unsubscribed":
            if frame.sid is None:
                return [dead_letter("unsubscribed: sid missing", frame.raw)]
            self._subs.pop(frame.sid, None)
            self._control_seqs.pop(frame.sid, None)
            self._finish_unsubscribe(frame)
            return [Unsubscribed(frame.sid)]
        if frame.type == "error":
            return self._error(frame)
        # "ok": a list_subscriptions reply carries a list, an update_subscription reply a dict.
        if isinstance(msg, list):
            if frame.id is not None:
                self._pending.pop(frame.id, None)
            entries: list[tuple[int, str]] = []
            for item in msg:
                if isinstance(item, dict):
                    sid, channel = item.get("sid"), item.get("channel")
                    if isinstance(sid, int) and isinstance(channel, str):
                        entries.append((sid, channel))
            return [SubscriptionList(frame.id, tuple(entries))]
        return self._ok(frame)

    def _subscribed(self, frame: Frame) -> list[Event]:
        msg = frame.msg
        if not isinstance(msg, dict):
            return [dead_letter("subscribed: msg is not an object", frame.raw)]
        channel, sid = msg.get("channel"), msg.get("sid")
        if not isinstance(channel, str) or isinstance(sid, bool) or not isinstance(sid, int):
            return [dead_letter("subscribed: channel or sid missing", frame.raw)]
        markets: list[str] = []
        yes_scale = False
        pending = self._pending.get(frame.id) if frame.id is not None else None
        if pending is not None:
            if channel in MARKET_CHANNELS:
                markets = list(pending.markets)
            yes_scale = pending.yes_scale and channel == "orderbook_delta"
            pending.channels.discard(channel)
            if not pending.channels:
                del self._pending[pending.cmd.id]
        self._subs[sid] = Subscription(sid, channel, markets, yes_scale=yes_scale)
        self._control_seqs.pop(sid, None)
        return [Subscribed(frame.id, channel, sid)]

    def _finish_unsubscribe(self, frame: Frame) -> None:
        if frame.id is None:
            return
        pending = self._pending.get(frame.id)
        if pending is None or pending.cmd.params is None:
            return
        remaining = [s for s in pending.cmd.params.get("sids", []) if s in self._subs]
        if not remaining:
            del self._pending[frame.id]

    def _ok(self, frame: Frame) -> list[Event]:
        self._note_control_seq(frame)
        msg = frame.msg if isinstance(frame.msg, dict) else {}
        tickers = _str_list(msg.get("market_tickers"))
        pending = self._pending.pop(frame.id, None) if frame.id is not None else None
        sid = frame.sid
        action = None
        if pending is not None and pending.cmd.cmd == "update_subscription":
            params = pending.cmd.params or {}
            sids = params.get("sids") or []
            sid = sid if sid is not None else (sids[0] if sids else None)
            action = params.get("action")
        sub = self._subs.get(sid) if sid is not None else None
        if sub is not None:
            if tickers is not None and action != "get_snapshot":
                sub.markets = list(tickers)
            elif pending is not None and action == "add_markets":
                sub.markets.extend(t for t in pending.markets if t not in sub.markets)
            elif pending is not None and action == "delete_markets":
                sub.markets = [t for t in sub.markets if t not in pending.markets]
        return [Ok(frame.id, sid, tickers)]

    def _error(self, frame: Frame) -> list[Event]:
        msg = frame.msg if isinstance(frame.msg, dict) else {}
        code = msg.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        text = msg.get("msg")
        text = text[:500] if isinstance(text, str) else ""
        tickers = _str_list(msg.get("market_tickers")) or ()
        if not tickers and isinstance(msg.get("market_ticker"), str):
            tickers = (msg["market_ticker"],)
        pending = self._pending.pop(frame.id, None) if frame.id is not None else None
        sid = frame.sid
        if sid is None and pending is not None and pending.cmd.cmd == "update_subscription":
            sids = (pending.cmd.params or {}).get("sids") or []
            sid = sids[0] if sids else None
        if code in TERMINAL_ERROR_CODES and frame.sid is not None:
            sub = self._subs.pop(frame.sid, None)
            self._control_seqs.pop(frame.sid, None)
            channel = sub.channel if sub is not None else None
            markets = tuple(sub.markets) if sub is not None else tickers
            return [Resubscribe(frame.sid, channel, markets, code)]
        self._note_control_seq(frame)
        return [CommandError(frame.id, code, text, sid, tickers)]
