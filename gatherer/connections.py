"""WebSocket connections: the thin I/O shell around the sans-I/O cores.

One :class:`Connection` per configured WebSocket; :class:`ConnectionManager` shards markets over
them (:class:`~gatherer.shards.ShardPlan`). The protocol state is
:class:`~kalshi_data.kalshi.wsproto.WsProtocol`; which subscriptions to hold, and what to do on
every reply, gap, error and reconnect, is :class:`~gatherer.subscription.SubscriptionSession`
(one per connection; connection 0 also carries ``trade``, ``ticker`` and
``market_lifecycle_v2`` for all markets). A connection only:

- connects with the signed upgrade headers (kalshi-protocol.md §2) through aiohttp
  (:func:`~kalshi_data.kalshi.wsconnect.ws_connect`); liveness from ping/pong: a ping every
  ``ping_interval_s``, the connection dropped when its pong takes longer than ``ping_timeout_s``,
  and the server's ``heartbeat`` pings answered (§3.3) — never from data silence, most markets
  are quiet for minutes (DESIGN §5);
- reads frames: data records straight to :class:`~gatherer.ingest.Ingest`, every other event to
  the session, whose actions it carries out (send a command; run the session's ``sync`` now or
  after a pause, from a control task so the reader never sleeps);
- on a disconnect tells the session (a recorded gap for everything it carried) and reconnects
  forever through the shared :class:`~kalshi_data.resilience.Supervisor` (Full Jitter backoff,
  reset by the first frame of a connection; a clean close is reconnected too, without a
  warning); the next session start resubscribes everything (fresh snapshots recover the gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import aiohttp
from aiohttp import WSMsgType

from gatherer.config import GathererConfig
from gatherer.errors import SessionEnded
from gatherer.ingest import Ingest, now_us
from gatherer.metrics import GathererMetrics
from gatherer.shards import ShardPlan, SubscriptionLayout
from gatherer.subscription import (
    FIREHOSE,
    MVE_LIFECYCLE,
    Action,
    Send,
    SubscriptionSession,
    Wake,
)
from kalshi_data.errors import describe_error
from kalshi_data.kalshi.signer import Signer
from kalshi_data.kalshi.wsconnect import ws_connect
from kalshi_data.kalshi.wsproto import Data
from kalshi_data.resilience import ErrorClass, RetryPolicy, Supervisor

log = logging.getLogger(__name__)

#: A close code after which the server's close is not worth a warning (normal, going away).
_CLEAN_CLOSE = frozenset({1000, 1001})


def _always_reconnect(_exc: BaseException) -> ErrorClass:
    """Every end of a connection is retried: the gatherer reconnects forever (DESIGN §5); a
    refused key or URL shows as a connection down in health, never as a dead task."""
    return ErrorClass.RETRYABLE


class Connection:
    """One WebSocket connection: reading, writing and timers around its subscription session."""

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
        channels = FIREHOSE + ((MVE_LIFECYCLE,) if cfg.mve_markets == "include" else ())
        resyncs = metrics.resyncs.labels(metrics.gatherer_id)
        self.session = SubscriptionSession(
            ingest,
            per_subscription=cfg.markets_per_subscription,
            firehose=channels if firehose else (),
            use_yes_price=cfg.use_yes_price,
            retry_pause_s=cfg.backoff_base_s,
            name=self.name,
            on_resync=resyncs.inc,
        )
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

    @property
    def layout(self) -> SubscriptionLayout:
        """The session's market -> subscription slot layout (read it, do not change it)."""
        return self.session.layout

    # -- control from the manager -----------------------------------------------------------
    def want(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Change the markets this connection should carry; commands follow asynchronously."""
        for wake in self.session.want(add, remove):
            self._wake(wake)

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
        """Connect, subscribe, read; on any end back off (Full Jitter) and reconnect, until
        :meth:`stop` (the shared supervisor: kalshi_data.resilience.Supervisor)."""
        supervisor = Supervisor(
            self.name,
            policy=RetryPolicy(base_s=self._cfg.backoff_base_s, cap_s=self._cfg.backoff_cap_s),
            stop=self._stopping,
            classify_fn=_always_reconnect,
            on_failure=self._on_lost,
        )
        async with aiohttp.ClientSession() as http:
            await supervisor.run(lambda: self._connection(http, supervisor))

    async def _connection(self, http: aiohttp.ClientSession, supervisor: Supervisor) -> None:
        """One connection, from the wait while paused to its end; returns only on stop."""
        await self._reading.wait()  # paused (full spool); stop() sets it too
        if self._stopping.is_set():
            return
        kalshi = self._cfg.kalshi
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
                await self._session(ws, supervisor)
            finally:
                await ws.close()
        finally:
            self._disconnected()
        if not self._stopping.is_set():
            raise SessionEnded(self.name)  # a clean close is reconnected too, after the backoff

    def _on_lost(self, exc: BaseException, _verdict: ErrorClass, _delay_s: float) -> None:
        """The supervisor's failure hook: warn about a fault (not a clean end, not stop)."""
        if isinstance(exc, SessionEnded) or self._stopping.is_set():
            return
        log.warning(
            "%s: connection failed or lost (%s)",
            self.name,
            describe_error(exc),
            extra={"connection": self.name},
        )

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, supervisor: Supervisor) -> None:
        self._ws = ws
        if not self._reading.is_set():
            return  # paused while connecting: never up, nothing missed to record
        start = self.session.start()
        self.up = True
        self.connects += 1
        if self._connected_once:
            self._metrics.reconnects.labels(self._metrics.gatherer_id).inc()
            log.info("%s: reconnected, resubscribing", self.name)
        self._connected_once = True
        await self._apply(start)
        helpers = [
            asyncio.create_task(self._control_loop(), name=f"{self.name}-control"),
            asyncio.create_task(self._keepalive(ws), name=f"{self.name}-keepalive"),
        ]
        try:
            await self._read(ws, supervisor)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, supervisor: Supervisor) -> None:
        """Frames until the socket closes, stop() or pause(): data to ingest, the rest to the
        session (its actions carried out before the next frame)."""
        first = True
        ingest = self._ingest.record
        feed = self.session.proto.feed
        handle = self.session.handle
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
                supervisor.connected()  # the link works: the next failure starts from base
                first = False
            for event in feed(msg.data):
                if type(event) is Data:
                    ingest(event.record, event.type, received)
                else:
                    await self._apply(handle(event, received))
            if self._stopping.is_set() or not self._reading.is_set():
                return

    async def _apply(self, actions: list[Action]) -> None:
        """Carry out the session's actions: sends in order, wake-ups to the control task."""
        for action in actions:
            if isinstance(action, Send):
                await self._send(action.command.text)
            else:
                self._wake(action)

    def _wake(self, wake: Wake) -> None:
        """Run the session's sync from the control task, now or after the pause it asks for."""
        if wake.after_s > 0:
            asyncio.get_running_loop().call_later(wake.after_s, self._kick.set)
        else:
            self._kick.set()

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
        if was_up and not self._stopping.is_set():
            self.session.lost()

    async def _control_loop(self) -> None:
        """Send the commands that converge subscriptions to the wanted markets."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._stopping.is_set():
                return
            await self._apply(self.session.sync())

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send_str(text)
        except Exception as exc:  # the reader sees the close and reconnects
            log.info("%s: send failed (%s)", self.name, type(exc).__name__)


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
        return self.connections[i].session.is_live(market)

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
