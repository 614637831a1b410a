"""WebSocket connections: the thin I/O shell around :class:`~kalshi_data.kalshi.wsproto.WsProtocol`.

One :class:`Connection` per configured WebSocket; :class:`ConnectionManager` shards markets over
them (:class:`~gatherer.shards.ShardPlan`). Each connection:

- connects with the signed upgrade headers (kalshi-protocol.md §2) through aiohttp
  (:func:`~kalshi_data.kalshi.wsconnect.ws_connect`); liveness from ping/pong: a ping every
  ``ping_interval_s``, the connection dropped when its pong takes longer than ``ping_timeout_s``,
  and the server's ``heartbeat`` pings answered (§3.3) — never from data silence, most markets
  are quiet for minutes (DESIGN §5);
- subscribes its markets' ``orderbook_delta`` in batches, then ``add_markets``/``delete_markets``
  as the registry changes (:class:`~gatherer.shards.SubscriptionLayout`: one subscription per
  market, DESIGN §3); connection 0 also carries ``trade``, ``ticker`` and ``market_lifecycle_v2``
  for all markets (no market filter);
- on a seq gap writes a ``gaps`` row, asks ``get_snapshot`` for that sid's markets (falling back
  to unsubscribe + subscribe if refused) and lets :class:`~gatherer.ingest.Ingest` mark rows
  suspect until each fresh snapshot; terminal errors 10/25 resubscribe that channel's markets;
- on a disconnect records a gap for everything it carried and reconnects forever with Full
  Jitter backoff, resubscribing everything (fresh snapshots recover the gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import WSMsgType

from gatherer.config import GathererConfig
from gatherer.ingest import Ingest, now_us
from gatherer.metrics import GathererMetrics
from gatherer.sequencing import OpenGap
from gatherer.shards import AddMarkets, DeleteMarkets, ShardPlan, Subscribe, SubscriptionLayout
from kalshi_data.errors import describe_error
from kalshi_data.kalshi.codes import RETRYABLE, WsErrorCode
from kalshi_data.kalshi.parse import DeadLetter
from kalshi_data.kalshi.signer import Signer
from kalshi_data.kalshi.wsconnect import ws_connect
from kalshi_data.kalshi.wsproto import (
    CommandError,
    Data,
    Duplicate,
    Gap,
    Ok,
    Resubscribe,
    Subscribed,
    SubscriptionList,
    Unsubscribed,
    WsProtocol,
)
from kalshi_data.resilience import Backoff

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

#: A close code after which the server's close is not worth a warning (normal, going away).
_CLEAN_CLOSE = frozenset({1000, 1001})

PendingKind = Literal["subscribe", "add", "delete", "snapshot", "firehose", "unsubscribe"]


@dataclass(slots=True)
class _Pending:
    kind: PendingKind
    slot_id: int | None
    markets: tuple[str, ...] = ()
    gap: OpenGap | None = None
    channel: str | None = None


class Connection:
    """One WebSocket connection: its markets, its subscriptions, reconnecting forever."""

    def __init__(
        self,
        index: int,
        cfg: GathererConfig,
        signer: Signer,
        ingest: Ingest,
        metrics: GathererMetrics,
        *,
        firehose: bool,
    ) -> None:
        self.index = index
        self.name = f"ws{index}"
        self._cfg = cfg
        self._signer = signer
        self._ingest = ingest
        self._metrics = metrics
        self.firehose = firehose
        self.firehose_channels = FIREHOSE + (
            (MVE_LIFECYCLE,) if cfg.mve_markets == "include" else ()
        )
        self.proto = WsProtocol()
        self.layout = SubscriptionLayout(cfg.markets_per_subscription)
        self._pending: dict[int, _Pending] = {}
        self._firehose_sids: dict[int, str] = {}
        self._firehose_gaps: dict[str, OpenGap] = {}
        self._firehose_retry: set[str] = set()
        #: Commands refused with a RETRY_CODES error, sent again by the control loop.
        self._cmd_retry: list[_Pending] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pong = asyncio.Event()
        self._kick = asyncio.Event()
        self._stopping = asyncio.Event()
        #: Cleared while the writer signals back-pressure (a full spool): no reading, no reconnect.
        self._reading = asyncio.Event()
        self._reading.set()
        self._closer: asyncio.Task[None] | None = None
        self._connected_once = False
        self.up = False
        self.connects = 0
        self.frames = 0
        self.last_frame_mono = 0.0

    # -- control from the manager -----------------------------------------------------------
    def want(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Change the markets this connection should carry; commands follow asynchronously."""
        self.layout.desired.update(add)
        self.layout.desired.difference_update(remove)
        self._kick.set()

    def pause(self) -> None:
        """Stop reading: close the socket (a recorded reconnect gap) and do not reconnect."""
        if not self._reading.is_set():
            return
        self._reading.clear()
        ws = self._ws
        if ws is not None and self._closer is None:
            self._closer = asyncio.create_task(self._close_paused(ws), name=f"{self.name}-pause")

    async def _close_paused(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout=2.0)
        finally:
            self._closer = None

    def resume(self) -> None:
        """Reconnect (and resubscribe) after :meth:`pause`."""
        self._reading.set()

    async def stop(self) -> None:
        """Stop reading and close the socket (the run loop then returns)."""
        self._stopping.set()
        self._reading.set()
        self._kick.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout=2.0)

    # -- the run loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, subscribe, read; on any failure back off (Full Jitter) and reconnect."""
        backoff = Backoff(self._cfg.backoff_base_s, self._cfg.backoff_cap_s)
        kalshi = self._cfg.kalshi
        async with aiohttp.ClientSession() as http:
            while not self._stopping.is_set():
                if not self._reading.is_set():
                    await self._reading.wait()  # paused (full spool); stop() sets it too
                    continue
                try:
                    ws = await ws_connect(
                        http,
                        kalshi.ws_url,
                        self._signer,
                        open_timeout_s=kalshi.open_timeout_s,
                        max_frame_bytes=kalshi.max_frame_bytes,
                        autoping=False,  # pings answered and pongs timed here
                    )
                    try:
                        await self._session(ws, backoff)
                    finally:
                        await ws.close()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not self._stopping.is_set():
                        log.warning(
                            "%s: connection failed or lost (%s)",
                            self.name,
                            describe_error(exc),
                            extra={"connection": self.name},
                        )
                finally:
                    self._disconnected()
                if self._stopping.is_set():
                    break
                delay = backoff.next_delay()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, backoff: Backoff) -> None:
        self._ws = ws
        if not self._reading.is_set():
            return  # paused while connecting: never up, nothing missed to record
        self.proto.reset()
        self.layout.reset()
        self._pending.clear()
        self._firehose_sids.clear()
        self._firehose_retry.clear()
        self._cmd_retry.clear()
        self.up = True
        self.connects += 1
        if self._connected_once:
            self._metrics.reconnects.labels(self._metrics.gatherer_id).inc()
            log.info("%s: reconnected, resubscribing", self.name)
        self._connected_once = True
        if self.firehose:
            for channel in self.firehose_channels:
                await self._send_firehose(channel)
        self._kick.set()  # subscribe every wanted market again
        helpers = [
            asyncio.create_task(self._control_loop(), name=f"{self.name}-control"),
            asyncio.create_task(self._keepalive(ws), name=f"{self.name}-keepalive"),
        ]
        try:
            first = True
            ingest = self._ingest.record
            feed = self.proto.feed
            receive = ws.receive
            text, binary = WSMsgType.TEXT, WSMsgType.BINARY
            while True:
                msg = await receive()
                kind = msg.type
                if kind is not text and kind is not binary:
                    if await self._not_data(ws, msg):
                        return
                    continue
                received = now_us()
                self.frames += 1
                self.last_frame_mono = time.monotonic()
                if first:
                    backoff.reset()  # the link works: the next failure starts from base again
                    first = False
                for event in feed(msg.data):
                    if type(event) is Data:
                        ingest(event.record, event.type, received)
                    else:
                        await self._control_event(event, received)
                if self._stopping.is_set() or not self._reading.is_set():
                    break
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _not_data(self, ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> bool:
        """A ping, pong or close; True when the session is over without an error."""
        kind = msg.type
        if kind is WSMsgType.PING:
            await ws.pong(msg.data)  # the server's heartbeat (§3.3)
            return False
        if kind is WSMsgType.PONG:
            self._pong.set()
            return False
        if kind is WSMsgType.ERROR:
            raise ConnectionError(f"websocket error: {describe_error(msg.data)}")
        if self._stopping.is_set() or not self._reading.is_set():
            return True
        if kind is WSMsgType.CLOSE and msg.data in _CLEAN_CLOSE:
            log.info("%s: the server closed the connection (code %s)", self.name, msg.data)
            return True
        code = ws.close_code if msg.data is None else msg.data
        raise ConnectionError(f"websocket closed (code {code})")

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Ping every ``ping_interval_s``; no pong within ``ping_timeout_s`` ends the session."""
        interval = self._cfg.kalshi.ping_interval_s
        timeout = self._cfg.kalshi.ping_timeout_s
        while not ws.closed:
            await asyncio.sleep(interval)
            self._pong.clear()
            try:
                await ws.ping(b"kd")
                async with asyncio.timeout(timeout):
                    await self._pong.wait()
            except TimeoutError:
                log.warning(
                    "%s: no pong within %.1f s: dropping the connection",
                    self.name,
                    timeout,
                    extra={"connection": self.name},
                )
                # The reader wakes with CLOSING and reconnects; the close handshake with a dead
                # peer gives up after its own short timeout.
                await ws.close(code=1011, message=b"ping timeout")
                return
            except (ConnectionError, RuntimeError):
                return  # the socket is going away: the reader sees it

    def _disconnected(self) -> None:
        was_up = self.up
        self.up = False
        self._ws = None
        if not was_up or self._stopping.is_set():
            return
        # Everything this connection carried may have missed messages until resubscribed: one gap
        # for the order books (fresh snapshots recover it), one per firehose channel.
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
        if self.firehose:
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

    async def _control_loop(self) -> None:
        """Send the commands that converge subscriptions to the wanted markets."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._stopping.is_set():
                return
            await self._sync()

    async def _sync(self) -> None:
        for channel in sorted(self._firehose_retry):
            self._firehose_retry.discard(channel)
            await self._send_firehose(channel)
        retry, self._cmd_retry = self._cmd_retry, []
        for p in retry:
            await self._resend(p)
        for action in self.layout.plan():
            if isinstance(action, Subscribe):
                cmd = self.proto.subscribe(
                    [ORDERBOOK], action.markets, use_yes_price=self._cfg.use_yes_price
                )
                self._pending[cmd.id] = _Pending("subscribe", action.slot_id, action.markets)
            elif isinstance(action, AddMarkets):
                cmd = self.proto.add_markets(action.sid, action.markets)
                self._pending[cmd.id] = _Pending("add", action.slot_id, action.markets)
            else:
                assert isinstance(action, DeleteMarkets)
                cmd = self.proto.delete_markets(action.sid, action.markets)
                self._pending[cmd.id] = _Pending("delete", action.slot_id, action.markets)
            await self._send(cmd.text)

    async def _resend(self, p: _Pending) -> None:
        """Send again a delete, get_snapshot or unsubscribe refused with 18/27."""
        slot = self.layout.slot(p.slot_id) if p.slot_id is not None else None
        if slot is None or slot.sid is None:
            return  # the slot is gone (reconnect, terminal error): nothing left to do
        if p.kind == "delete":
            cmd = self.proto.delete_markets(slot.sid, p.markets)
        elif p.kind == "snapshot":
            wanted = tuple(m for m in p.markets if m in slot.markets)
            if not wanted:
                return
            cmd = self.proto.get_snapshot(slot.sid, wanted)
            p = _Pending("snapshot", p.slot_id, wanted, gap=p.gap)
        else:
            cmd = self.proto.unsubscribe([slot.sid])
        self._pending[cmd.id] = p
        await self._send(cmd.text)

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send_str(text)
        except Exception as exc:  # the reader sees the close and reconnects
            log.info("%s: send failed (%s)", self.name, type(exc).__name__)

    async def _send_firehose(self, channel: str) -> None:
        cmd = self.proto.subscribe([channel])
        self._pending[cmd.id] = _Pending("firehose", None, channel=channel)
        await self._send(cmd.text)

    # -- events other than data -------------------------------------------------------------
    async def _control_event(self, event: object, received: int) -> None:
        if isinstance(event, Subscribed):
            self._on_subscribed(event)
        elif isinstance(event, Ok):
            p = self._pending.pop(event.cmd_id, None) if event.cmd_id is not None else None
            if p is not None and p.slot_id is not None and p.kind in {"add", "delete"}:
                self.layout.acknowledged(p.slot_id)
                self._kick.set()
        elif isinstance(event, Gap):
            await self._on_gap(event, received)
        elif isinstance(event, Duplicate):
            log.debug("%s: duplicate seq %s on sid %s dropped", self.name, event.seq, event.sid)
        elif isinstance(event, Resubscribe):
            await self._on_terminal(event, received)
        elif isinstance(event, CommandError):
            await self._on_command_error(event)
        elif isinstance(event, Unsubscribed):
            self._on_unsubscribed(event)
        elif isinstance(event, DeadLetter):
            self._ingest.dead_letter(event.reason, event.raw, "ws", received)
        elif isinstance(event, SubscriptionList):
            log.debug("%s: subscriptions %s", self.name, event.subscriptions)

    def _on_subscribed(self, event: Subscribed) -> None:
        p = self._pending.pop(event.cmd_id, None) if event.cmd_id is not None else None
        if p is None:
            return
        if p.kind == "firehose":
            self._firehose_sids[event.sid] = event.channel
            gap = self._firehose_gaps.pop(event.channel, None)
            if gap is not None:
                self._ingest.gap_recovered(gap)
        elif p.kind == "subscribe" and p.slot_id is not None:
            self.layout.acknowledged(p.slot_id, event.sid)
            self._kick.set()

    async def _on_gap(self, event: Gap, received: int) -> None:
        metrics = self._metrics
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
                received_at_us=received,
            )
            self._ingest.gap_recovered(gap, received)
            return
        markets = tuple(sorted(slot.markets))
        gap = self._ingest.open_gap(
            sid=event.sid,
            channel=ORDERBOOK,
            markets=markets,
            expected=event.expected,
            received=event.received,
            how="get_snapshot",
            received_at_us=received,
        )
        metrics.resyncs.labels(metrics.gatherer_id).inc()
        if markets:
            cmd = self.proto.get_snapshot(event.sid, markets)
            self._pending[cmd.id] = _Pending("snapshot", slot.slot_id, markets, gap=gap)
            await self._send(cmd.text)

    async def _on_terminal(self, event: Resubscribe, received: int) -> None:
        metrics = self._metrics
        metrics.resyncs.labels(metrics.gatherer_id).inc()
        log.warning(
            "%s: subscription %s (%s) ended by error %s, resubscribing",
            self.name,
            event.sid,
            event.channel,
            event.code,
        )
        channel = self._firehose_sids.pop(event.sid, None)
        if channel is not None:
            self._firehose_gaps[channel] = self._ingest.open_gap(
                sid=event.sid,
                channel=channel,
                markets=(),
                expected=None,
                received=None,
                how=f"resubscribe (error {event.code})",
                received_at_us=received,
            )
            await self._send_firehose(channel)
            return
        slot = self.layout.slot_by_sid(event.sid)
        if slot is None:
            return
        markets = self.layout.drop_slot(slot.slot_id)
        if markets:
            self._ingest.open_gap(
                sid=event.sid,
                channel=ORDERBOOK,
                markets=markets,
                expected=None,
                received=None,
                how=f"resubscribe (error {event.code})",
                received_at_us=received,
            )
            self._kick.set()

    async def _on_command_error(self, event: CommandError) -> None:
        p = self._pending.pop(event.cmd_id, None) if event.cmd_id is not None else None
        log.warning(
            "%s: command %s refused: code %s %s",
            self.name,
            p.kind if p is not None else event.cmd_id,
            event.code,
            event.msg,
        )
        if p is None:
            return
        if event.code in RETRY_CODES and p.kind in {"delete", "snapshot", "unsubscribe"}:
            # A timeout or the per-subscription command rate: the same command again after a
            # pause. The subscription is unchanged meanwhile, so nothing is lost (a pending
            # snapshot's markets stay suspect until it arrives).
            self._cmd_retry.append(p)
            asyncio.get_running_loop().call_later(self._cfg.backoff_base_s, self._kick.set)
            return
        if p.kind == "firehose" and p.channel is not None:
            # Retried by the control loop after a pause (never sleep in the reader).
            self._firehose_retry.add(p.channel)
            asyncio.get_running_loop().call_later(self._cfg.backoff_base_s, self._kick.set)
        elif p.kind in {"subscribe", "add"} and p.slot_id is not None:
            self.layout.failed(p.slot_id, p.markets, full=event.code == MARKET_LIMIT)
            # Retried by the next plan; a short pause keeps a persistent refusal from spinning.
            asyncio.get_running_loop().call_later(self._cfg.backoff_base_s, self._kick.set)
        elif p.kind == "delete" and p.slot_id is not None:
            self.layout.acknowledged(p.slot_id)
        elif p.kind == "snapshot" and p.slot_id is not None:
            # get_snapshot refused: resubscribe the slot. Wait for `unsubscribed` before the
            # markets go anywhere else, or two subscriptions would carry them (doubled k).
            slot = self.layout.slot(p.slot_id)
            if slot is not None and slot.sid is not None:
                if p.gap is not None:
                    self._ingest.gaps.set_how(p.gap.gap_id, "resubscribe")
                slot.busy = True
                cmd = self.proto.unsubscribe([slot.sid])
                self._pending[cmd.id] = _Pending("unsubscribe", p.slot_id)
                await self._send(cmd.text)

    def _on_unsubscribed(self, event: Unsubscribed) -> None:
        slot = self.layout.slot_by_sid(event.sid)
        if slot is not None:
            self.layout.drop_slot(slot.slot_id)
            self._kick.set()


class ConnectionManager:
    """Markets sharded over N connections; connection 0 also carries the firehose channels."""

    def __init__(
        self, cfg: GathererConfig, signer: Signer, ingest: Ingest, metrics: GathererMetrics
    ) -> None:
        self._ingest = ingest
        self.plan = ShardPlan(cfg.connections)
        self.connections = [
            Connection(i, cfg, signer, ingest, metrics, firehose=i == 0)
            for i in range(cfg.connections)
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._paused = False

    def add_markets(self, markets: Iterable[str]) -> int:
        """Start carrying ``markets`` (each on one connection); returns how many were new."""
        by_conn: dict[int, list[str]] = {}
        for m in markets:
            i = self.plan.assign(m)
            if i is not None:
                by_conn.setdefault(i, []).append(m)
        for i, ms in by_conn.items():
            self.connections[i].want(add=ms)
        return sum(len(v) for v in by_conn.values())

    def remove_markets(self, markets: Iterable[str]) -> int:
        """Stop carrying ``markets``; returns how many were carried."""
        n = 0
        for m in markets:
            i = self.plan.remove(m)
            if i is not None:
                self.connections[i].want(remove=[m])
                self._ingest.forget_market(m)
                n += 1
        return n

    def is_live(self, market: str) -> bool:
        """Is ``market`` in an acknowledged order-book subscription with no command pending?"""
        i = self.plan.owner(market)
        if i is None:
            return False
        layout = self.connections[i].layout
        slot_id = layout.slot_of(market)
        slot = layout.slot(slot_id) if slot_id is not None else None
        return slot is not None and slot.sid is not None and not slot.busy

    @property
    def markets(self) -> int:
        """Markets carried."""
        return len(self.plan)

    @property
    def paused(self) -> bool:
        """True while reading is paused (:meth:`set_reading`)."""
        return self._paused

    def set_reading(self, reading: bool) -> None:
        """Pause (False) or resume (True) every connection: the writer's back-pressure hook."""
        if reading == (not self._paused):
            return
        self._paused = not reading
        if self._paused:
            log.error(
                "spool full: closing every WebSocket until it drains (a recorded gap per channel)"
            )
        else:
            log.warning("spool drained below its low-water mark: reconnecting")
        for c in self.connections:
            if reading:
                c.resume()
            else:
                c.pause()

    @property
    def up(self) -> int:
        """Connections currently open."""
        return sum(1 for c in self.connections if c.up)

    def start(self) -> None:
        """Start every connection's run loop (named, kept tasks)."""
        for c in self.connections:
            self._tasks.append(asyncio.create_task(c.run(), name=f"gatherer-{c.name}"))

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The connection tasks (supervised by the service)."""
        return list(self._tasks)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading on every connection and wait for the loops to end."""
        await asyncio.gather(*(c.stop() for c in self.connections), return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
