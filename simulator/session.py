"""One WebSocket connection's protocol state (sans-I/O): commands in, frames out (§3.1–§3.4).

``Session.handle(text)`` parses a client command and queues reply frames; the hub calls
``Sub.deliver`` to queue data frames. Frames wait in ``Session.out`` until the I/O shell sends
them; ``on_output`` tells the shell there is something to send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from kalshi_data.kalshi.codes import WsErrorCode as Code
from simulator import frames, shapes
from simulator.errors import SimulatorError

if TYPE_CHECKING:
    from simulator.hub import Hub

#: Channels with simulated data.
DATA_CHANNELS = (
    "orderbook_delta",
    "ticker",
    "trade",
    "market_lifecycle_v2",
    "multivariate_market_lifecycle",
)
#: Channels that always carry every market (a market filter is ignored, §3.10-3.11).
ALL_MARKET_CHANNELS = frozenset({"market_lifecycle_v2", "multivariate_market_lifecycle"})
#: Channels Kalshi accepts but this exchange never sends data on (private or external feeds).
QUIET_CHANNELS = (
    "fill",
    "market_positions",
    "communications",
    "order_group_updates",
    "user_orders",
    "cfbenchmarks_value",
    "cfbenchmarks_value_5hz",
    "pyth_value",
)
KNOWN_CHANNELS = frozenset(DATA_CHANNELS + QUIET_CHANNELS)
#: Sequenced reply/data per channel: ticker frames carry no seq.
UNSEQUENCED_CHANNELS = frozenset({"ticker", "fill", "market_positions", "user_orders"})


class CommandRefused(SimulatorError):
    """A command refused with a §3.2 error code (an exception here; the client's
    :class:`kalshi_data.kalshi.wsproto.CommandError` is the event it becomes on the wire)."""

    def __init__(self, code: int, sid: int | None = None) -> None:
        super().__init__(frames.ERRORS.get(code, str(code)))
        self.code = code
        self.sid = sid


@dataclass(eq=False, slots=True)
class Sub:
    """One subscription (sid) on one channel; ``tickers`` None means every market."""

    session: Session
    sid: int
    channel: str
    tickers: dict[str, None] | None  # insertion-ordered set
    seq: int = 0
    skip: int = 0
    dup: int = 0
    corrupt: str | None = None
    faulty: bool = False
    skip_ack: bool = False
    delivered: int = field(default=0)
    #: ``use_yes_price`` in force (orderbook_delta): NO-side prices on the YES scale.
    yes_scale: bool = False

    def refresh_faulty(self) -> None:
        """Recompute the slow-path flag after a fault was armed or consumed."""
        self.faulty = bool(self.skip or self.dup or self.corrupt)

    def deliver(self, frame_type: str, msg: bytes, sequenced: bool) -> None:
        """Queue one data frame for this subscriber (the fan-out hot path)."""
        if sequenced:
            self.seq += 1
            if self.faulty:
                self._deliver_faulty(frame_type, msg)
                return
            frame = b'%b%d,"seq":%d,"msg":%b}' % (
                frames.prefix(frame_type),
                self.sid,
                self.seq,
                msg,
            )
        else:
            frame = b'%b%d,"msg":%b}' % (frames.prefix(frame_type), self.sid, msg)
        self.delivered += 1
        self.session.push(frame)

    def _deliver_faulty(self, frame_type: str, msg: bytes) -> None:
        if self.skip:
            # The frame exists (and is in the truth file) but this subscriber never gets it.
            self.skip -= 1
            self.refresh_faulty()
            return
        if self.corrupt:
            kind, self.corrupt = self.corrupt, None
            frame = frames.malformed(kind, frame_type, self.sid, self.seq, orjson.loads(msg))
        else:
            frame = frames.data_frame(frame_type, self.sid, self.seq, msg)
        self.delivered += 1
        self.session.push(frame)
        if self.dup:
            self.dup -= 1
            self.session.push(frame)
        self.refresh_faulty()


class Session:
    """Per-connection state: its subscriptions, outgoing frames and connection-level faults."""

    def __init__(self, conn_id: int, hub: Hub, remote: str = "") -> None:
        self.conn_id = conn_id
        self.remote = remote
        self.hub = hub
        self.subs: dict[int, Sub] = {}
        self.out: deque[bytes] = deque()
        self.on_output: Callable[[], None] = lambda: None
        self.pings_enabled = True
        self.send_delay_s = 0.0
        self.overflowed = 0
        #: Error codes (18 timeout, 27 rate limit) the next commands are refused with (admin).
        self.refuse: deque[int] = deque()
        self.refused = 0
        self._next_sid = 1

    # --- output ------------------------------------------------------------------------------

    def push(self, frame: bytes) -> None:
        """Queue a frame; past the buffer bound every subscription dies with error 25 (§3.14)."""
        out = self.out
        out.append(frame)
        if len(out) == 1:
            self.on_output()
        elif len(out) > self.hub.config.max_buffered_frames and self.subs:
            self.overflowed += 1
            for sid in list(self.subs):
                self.end_sub(sid, Code.SUBSCRIPTION_BUFFER_OVERFLOW)

    def end_sub(self, sid: int, code: int) -> bool:
        """Send a terminal error (10 or 25) on ``sid`` and forget the subscription."""
        sub = self.subs.pop(sid, None)
        if sub is None:
            return False
        self.hub.routes_changed()
        self.out.append(frames.error(code, sid=sid))
        self.on_output()
        return True

    def close(self) -> None:
        """The connection is gone: drop every subscription."""
        if self.subs:
            self.subs.clear()
            self.hub.routes_changed()

    # --- commands ----------------------------------------------------------------------------

    def handle(self, text: str | bytes) -> None:
        """Process one client frame, queueing the reply (or an error)."""
        try:
            cmd = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.push(frames.error(Code.UNABLE_TO_PROCESS_MESSAGE))
            return
        if not isinstance(cmd, dict):
            self.push(frames.error(Code.UNABLE_TO_PROCESS_MESSAGE))
            return
        raw_id = cmd.get("id", 0)
        cmd_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else 0
        handler = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "update_subscription": self._update,
            "list_subscriptions": self._list,
        }.get(cmd.get("cmd"))  # type: ignore[arg-type]
        if handler is None:
            self.push(frames.error(Code.UNKNOWN_COMMAND, cmd_id))
            return
        if self.refuse and cmd.get("cmd") != "list_subscriptions":
            self._refuse(cmd_id, cmd.get("params"))
            return
        try:
            handler(cmd_id, cmd.get("params"))
        except CommandRefused as exc:
            self.push(frames.error(exc.code, cmd_id, exc.sid))

    def _refuse(self, cmd_id: int, params: Any) -> None:
        """Refuse one command with the next armed code (18 or 27), changing nothing. When it
        names one live subscription the error is subscription-scoped: ``sid`` and a ``seq``."""
        code = self.refuse.popleft()
        self.refused += 1
        sid = None
        if isinstance(params, dict):
            raw = params.get("sid")
            sids = params.get("sids")
            if raw is None and isinstance(sids, list) and len(sids) == 1:
                raw = sids[0]
            if isinstance(raw, int) and raw in self.subs:
                sid = raw
        seq = self._control_seq(self.subs[sid]) if sid is not None else None
        self.push(frames.error(code, cmd_id, sid, seq))

    def _tickers(self, params: dict[str, Any]) -> list[str] | None:
        one, many = params.get("market_ticker"), params.get("market_tickers")
        if one is not None and many is not None:
            raise CommandRefused(Code.INVALID_PARAMETER)
        if one is not None:
            if not isinstance(one, str) or not one:
                raise CommandRefused(Code.INVALID_PARAMETER)
            return [one]
        if many is not None:
            if not isinstance(many, list) or not many:
                raise CommandRefused(Code.INVALID_PARAMETER)
            if not all(isinstance(t, str) and t for t in many):
                raise CommandRefused(Code.INVALID_PARAMETER)
            return list(dict.fromkeys(many))
        return None

    def _subscribe(self, cmd_id: int, params: Any) -> None:
        if not isinstance(params, dict):
            raise CommandRefused(Code.PARAMS_REQUIRED)
        channels = params.get("channels")
        if not isinstance(channels, list) or not channels:
            raise CommandRefused(Code.CHANNELS_REQUIRED)
        if not all(isinstance(c, str) and c in KNOWN_CHANNELS for c in channels):
            raise CommandRefused(Code.UNKNOWN_CHANNEL_NAME)
        tickers = self._tickers(params)
        if "orderbook_delta" in channels and tickers is None:
            raise CommandRefused(Code.MARKET_TICKER_REQUIRED)
        if tickers is not None and len(tickers) > self.hub.config.max_markets_per_sub:
            raise CommandRefused(Code.SUBSCRIPTION_MARKET_LIMIT_EXCEEDED)
        initial = params.get("send_initial_snapshot") is True
        flag = params.get("use_yes_price")
        if flag is not None and not isinstance(flag, bool):
            raise CommandRefused(Code.INVALID_PARAMETER)
        # "flag": honoured, default false (today); "yes_default": the announced flip, where
        # the flag is ignored and NO-side levels always come on the YES scale.
        yes_scale = self.hub.config.price_mode == "yes_default" or flag is True
        for channel in dict.fromkeys(channels):
            sid = self._next_sid
            self._next_sid += 1
            keep = None if channel in ALL_MARKET_CHANNELS or tickers is None else tickers
            sub = Sub(self, sid, channel, dict.fromkeys(keep) if keep is not None else None)
            sub.seq = self.hub.config.first_seq - 1  # the first frame carries first_seq
            sub.skip_ack = params.get("skip_ticker_ack") is True
            sub.yes_scale = yes_scale and channel == "orderbook_delta"
            self.subs[sid] = sub
            self.push(frames.reply("subscribed", cmd_id, msg={"channel": channel, "sid": sid}))
            if channel == "orderbook_delta" and sub.tickers is not None:
                self._snapshots(sub, list(sub.tickers), 0)
            elif channel == "ticker" and initial:
                self._initial_tickers(sub, list(sub.tickers) if sub.tickers is not None else None)
        self.hub.routes_changed()

    def _snapshots(self, sub: Sub, tickers: list[str], cmd_id: int) -> None:
        markets = self.hub.exchange.markets
        for t in tickers:
            m = markets.get(t)
            if m is None:
                continue
            sub.seq += 1
            msg = orjson.dumps(shapes.snapshot_msg(m, sub.yes_scale))
            self.push(frames.data_frame("orderbook_snapshot", sub.sid, sub.seq, msg, cmd_id))

    def _initial_tickers(self, sub: Sub, tickers: list[str] | None) -> None:
        ex = self.hub.exchange
        chosen = (
            [ex.markets[t] for t in tickers if t in ex.markets]
            if tickers is not None
            else [m for m in ex.market_list if m.status in ("active", "inactive")]
        )
        now_ms = self.hub.now_ms()
        for m in chosen:
            msg = orjson.dumps(shapes.ticker_msg(m, now_ms))
            self.push(frames.data_frame("ticker", sub.sid, None, msg))

    def _control_seq(self, sub: Sub) -> int | None:
        """``seq`` for ok/unsubscribed: current counter, advanced first when so configured."""
        if sub.channel in UNSEQUENCED_CHANNELS:
            return None
        if self.hub.config.control_frames_consume_seq:
            sub.seq += 1
        return sub.seq

    def _unsubscribe(self, cmd_id: int, params: Any) -> None:
        if not isinstance(params, dict):
            raise CommandRefused(Code.PARAMS_REQUIRED)
        sids = params.get("sids")
        if not isinstance(sids, list) or not sids or not all(isinstance(s, int) for s in sids):
            raise CommandRefused(Code.SUBSCRIPTION_IDS_REQUIRED)
        for sid in sids:
            sub = self.subs.get(sid)
            if sub is None:
                self.push(frames.error(Code.UNKNOWN_SUBSCRIPTION_ID, cmd_id, sid))
                continue
            seq = self._control_seq(sub)
            del self.subs[sid]
            self.push(frames.reply("unsubscribed", cmd_id, sid=sid, seq=seq))
        self.hub.routes_changed()

    def _update(self, cmd_id: int, params: Any) -> None:
        """update_subscription: validate the target, then one method per ``action``."""
        sub, action = self._update_target(params)
        tickers = self._tickers(params)
        if action == "get_snapshot":
            self._get_snapshot(cmd_id, sub, tickers)
        elif action == "add_markets":
            self._add_markets(cmd_id, params, sub, tickers)
        else:
            self._delete_markets(cmd_id, params, sub, tickers)

    def _update_target(self, params: Any) -> tuple[Sub, str]:
        """The subscription and action an update names; refused in §3.2 order otherwise."""
        if not isinstance(params, dict):
            raise CommandRefused(Code.PARAMS_REQUIRED)
        sids = params.get("sids")
        sid = params.get("sid")
        if sid is None and isinstance(sids, list) and len(sids) == 1:
            sid = sids[0]
        elif sids is not None:
            raise CommandRefused(Code.EXACTLY_ONE_SUBSCRIPTION_ID_REQUIRED)
        if not isinstance(sid, int):
            raise CommandRefused(Code.EXACTLY_ONE_SUBSCRIPTION_ID_REQUIRED)
        sub = self.subs.get(sid)
        if sub is None:
            raise CommandRefused(Code.UNKNOWN_SUBSCRIPTION_ID, sid)
        action = params.get("action")
        if action is None:
            raise CommandRefused(Code.ACTION_REQUIRED, sid)
        if action not in ("add_markets", "delete_markets", "get_snapshot"):
            raise CommandRefused(Code.UNSUPPORTED_ACTION, sid)
        return sub, action

    def _get_snapshot(self, cmd_id: int, sub: Sub, tickers: list[str] | None) -> None:
        """get_snapshot: fresh snapshots (echoing ``id``) of the named or all of its markets."""
        if sub.channel != "orderbook_delta" or sub.tickers is None:
            raise CommandRefused(Code.UNSUPPORTED_ACTION, sub.sid)
        wanted = [t for t in (tickers or list(sub.tickers)) if t in sub.tickers]
        self._snapshots(sub, wanted, cmd_id)

    @staticmethod
    def _market_list(sub: Sub, tickers: list[str] | None) -> tuple[dict[str, None], list[str]]:
        """The market set an add/delete changes and the tickers it names, or the refusal."""
        if sub.tickers is None:
            code = (
                Code.UNSUPPORTED_ACTION
                if sub.channel in ALL_MARKET_CHANNELS
                else Code.INVALID_PARAMETER
            )
            raise CommandRefused(code, sub.sid)
        if tickers is None:
            raise CommandRefused(Code.MARKET_TICKER_REQUIRED, sub.sid)
        return sub.tickers, tickers

    def _add_markets(
        self, cmd_id: int, params: dict[str, Any], sub: Sub, tickers: list[str] | None
    ) -> None:
        """add_markets: widen the filter within the cap; ack, then the new markets' snapshots."""
        current, named = self._market_list(sub, tickers)
        added = [t for t in named if t not in current]
        if len(current) + len(added) > self.hub.config.max_markets_per_sub:
            raise CommandRefused(Code.SUBSCRIPTION_MARKET_LIMIT_EXCEEDED, sub.sid)
        current.update(dict.fromkeys(added))
        self._ack_update(cmd_id, params, sub)
        if added and sub.channel == "orderbook_delta":
            self._snapshots(sub, added, 0)
        elif added and sub.channel == "ticker" and params.get("send_initial_snapshot") is True:
            self._initial_tickers(sub, added)

    def _delete_markets(
        self, cmd_id: int, params: dict[str, Any], sub: Sub, tickers: list[str] | None
    ) -> None:
        """delete_markets: narrow the filter (unknown tickers are ignored) and ack."""
        current, named = self._market_list(sub, tickers)
        for t in named:
            current.pop(t, None)
        self._ack_update(cmd_id, params, sub)

    def _ack_update(self, cmd_id: int, params: dict[str, Any], sub: Sub) -> None:
        """Reroute, then the ``ok`` reply with the full market list (unless acks are skipped)."""
        self.hub.routes_changed()
        seq = self._control_seq(sub)
        skip_ack = sub.skip_ack or params.get("skip_ticker_ack") is True
        msg = None if skip_ack or sub.tickers is None else {"market_tickers": list(sub.tickers)}
        self.push(frames.reply("ok", cmd_id, sid=sub.sid, seq=seq, msg=msg))

    def _list(self, cmd_id: int, _params: Any) -> None:
        listing = [{"channel": s.channel, "sid": s.sid} for s in self.subs.values()]
        self.push(frames.reply("ok", cmd_id, msg=listing))

    def describe(self) -> dict[str, Any]:
        """Admin view of this connection."""
        return {
            "id": self.conn_id,
            "remote": self.remote,
            "queued_frames": len(self.out),
            "pings_enabled": self.pings_enabled,
            "send_delay_ms": round(self.send_delay_s * 1000, 3),
            "sids": [
                {
                    "sid": s.sid,
                    "channel": s.channel,
                    "seq": s.seq,
                    "markets": None if s.tickers is None else len(s.tickers),
                    "delivered": s.delivered,
                }
                for s in self.subs.values()
            ],
        }
