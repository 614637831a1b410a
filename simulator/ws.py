"""The WebSocket shell at ``/trade-api/ws/v2``: authenticate, upgrade, move frames, keep alive.

Protocol decisions live in :mod:`simulator.session`; this module only reads client frames,
writes queued frames (optionally slowed by the admin API), sends Ping ``heartbeat`` every
``ping_interval_s`` and answers client Pings — both switchable off per connection (§3.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from asyncio import Transport
from collections import deque
from collections.abc import Mapping

from aiohttp import WSMsgType, web

from simulator.auth import AuthRefused, PublicKey, verify
from simulator.frames import ws_text_frames
from simulator.hub import Hub, wall_ms
from simulator.session import Session

WS_PATH = "/trade-api/ws/v2"
#: The writer waits while the socket's write buffer holds more than this many bytes.
WRITE_HIGH_WATER = 1 << 16
#: At most this many frame bytes per transport write.
WRITE_BATCH_BYTES = 1 << 16
#: How often a writer above the high water mark looks again.
WRITE_POLL_S = 0.002
log = logging.getLogger("simulator.ws")


class Connection:
    """One accepted WebSocket: its session, socket and the two tasks that serve it."""

    def __init__(self, conn_id: int, ws: web.WebSocketResponse, session: Session) -> None:
        self.conn_id = conn_id
        self.ws = ws
        self.session = session
        self.transport: Transport | None = None
        self.wake = asyncio.Event()
        session.on_output = self.wake.set
        self.tasks: list[asyncio.Task[None]] = []

    async def writer(self) -> None:
        """Send queued frames in order; stop (and cut the socket) on a send failure.

        Frames queued together go out in one ``transport.write`` (built by
        :func:`~simulator.frames.ws_text_frames`): one aiohttp ``send_frame`` per frame cost
        more CPU than the rest of the replay path. Flow control: while the socket's write buffer
        is above :data:`WRITE_HIGH_WATER` the writer waits, so a slow reader backs frames up in
        ``Session.out`` (where error 25 watches) exactly as before. An admin ``send_delay_s``
        sends one frame at a time.
        """
        out = self.session.out
        ws = self.ws
        try:
            while not ws.closed:
                await self.wake.wait()
                self.wake.clear()
                while out and not ws.closed:
                    if self.session.send_delay_s > 0 or self.transport is None:
                        await ws.send_frame(out.popleft(), WSMsgType.TEXT)
                        await asyncio.sleep(self.session.send_delay_s)
                        continue
                    await self._send_batch(out, self.transport)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("connection %d: send failed: %s", self.conn_id, exc)
            self.abort()

    async def _send_batch(self, out: deque[bytes], transport: Transport) -> None:
        while transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            if transport.is_closing():
                raise ConnectionError("transport closing")
            await asyncio.sleep(WRITE_POLL_S)
        if transport.is_closing():
            raise ConnectionError("transport closing")
        batch: list[bytes] = []
        size = 0
        while out and size < WRITE_BATCH_BYTES:
            frame = out.popleft()
            batch.append(frame)
            size += len(frame)
        transport.write(ws_text_frames(batch))
        await asyncio.sleep(0)  # let the driver and the other connections run

    async def pinger(self, interval_s: float) -> None:
        """Ping with payload ``heartbeat`` every ``interval_s`` while pings are enabled."""
        try:
            while not self.ws.closed:
                await asyncio.sleep(interval_s)
                if self.session.pings_enabled and not self.ws.closed:
                    await self.ws.ping(b"heartbeat")
        except (ConnectionError, RuntimeError):
            self.abort()

    def abort(self) -> None:
        """Cut the TCP connection without a close frame (a network drop)."""
        if self.transport is not None:
            self.transport.abort()

    async def close(self, code: int = 1001) -> None:
        """Close politely with ``code`` (1001 going away)."""
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
            await asyncio.wait_for(self.ws.close(code=code), 2.0)
        self.abort()


class WsServer:
    """Accepts connections, authenticates them and keeps a registry for the admin API."""

    def __init__(self, hub: Hub, keys: Mapping[str, PublicKey]) -> None:
        self.hub = hub
        self.keys = keys
        self.connections: dict[int, Connection] = {}
        self.refused = 0
        self.accepted = 0
        self._ids = itertools.count(1)

    def route(self) -> web.RouteDef:
        """The GET route for the upgrade."""
        return web.get(WS_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Check the signature, then upgrade and serve until the socket closes."""
        cfg = self.hub.config
        try:
            verify(
                request.headers,
                "GET",
                WS_PATH,
                self.keys,
                wall_ms(),
                int(cfg.auth_skew_s * 1000),
            )
        except AuthRefused as exc:
            self.refused += 1
            body = {"error": {"code": "unauthorized", "message": exc.reason, "service": "auth"}}
            return web.json_response(body, status=401)
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 20)
        transport = request.transport
        await ws.prepare(request)
        conn_id = next(self._ids)
        peer = transport.get_extra_info("peername") if transport is not None else None
        # host:port, so that a harness can tell which client process holds the connection.
        remote = f"{peer[0]}:{peer[1]}" if peer else (request.remote or "")
        session = Session(conn_id, self.hub, remote)
        conn = Connection(conn_id, ws, session)
        conn.transport = transport
        self.connections[conn_id] = conn
        self.hub.add(session)
        self.accepted += 1
        conn.tasks = [
            asyncio.create_task(conn.writer(), name=f"sim-ws-{conn_id}-writer"),
            asyncio.create_task(conn.pinger(cfg.ping_interval_s), name=f"sim-ws-{conn_id}-ping"),
        ]
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    session.handle(msg.data)
                elif msg.type == WSMsgType.PING:
                    if session.pings_enabled:
                        await ws.pong(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        except (ConnectionError, RuntimeError) as exc:
            log.debug("connection %d: read failed: %s", conn_id, exc)
        finally:
            self.hub.remove(session)
            self.connections.pop(conn_id, None)
            for task in conn.tasks:
                task.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        return ws

    async def close_all(self) -> None:
        """Close every connection (server shutdown)."""
        await asyncio.gather(*(c.close() for c in list(self.connections.values())))
