"""A TCP fault proxy (asyncio, loopback): latency, stall, blackhole and reset between two parties.

``kalshi-data chaos`` puts one in front of a gatherer's PostgreSQL and one in front of
production, and points the deduplicator at the proxies; switching a proxy's mode is a network
fault between exactly those two parties, without root, iptables or network namespaces.

Modes (:meth:`FaultProxy.set_mode`, thread-safe):

- ``pass``: bytes flow both ways.
- ``latency``: every chunk waits ``latency_s`` before it is forwarded (order kept).
- ``stall``: bytes are held, connections stay open; when the mode changes they are delivered in
  order (a short partition that TCP's retransmissions ride out).
- ``blackhole``: nothing is forwarded and new connections hang unanswered; when the blackhole
  ends, every connection that lived through it is reset (the kernel gives up retransmitting), so
  held bytes are never delivered late (a long partition).
- ``reset``: every open connection is reset (RST) at once, and so is each new one while the mode
  lasts.

:class:`ProxyThread` runs a proxy on its own event loop in a daemon thread for synchronous
callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")

Mode = Literal["pass", "latency", "stall", "blackhole", "reset"]
MODES: tuple[Mode, ...] = ("pass", "latency", "stall", "blackhole", "reset")
_CHUNK = 1 << 16


@dataclass
class ProxyStats:
    """Counters since start."""

    connections: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    mode_changes: int = 0


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    blackholed: bool = False


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forward ``listen_host:listen_port`` to ``upstream_host:upstream_port`` with faults.

    Args:
        upstream_host: where connections go.
        upstream_port: its port.
        listen_host: the proxy's address (loopback).
        listen_port: the proxy's port (0 = any free; see :attr:`port` after :meth:`start`).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen = (listen_host, listen_port)
        self.mode: Mode = "pass"
        self.latency_s = 0.0
        self.stats = ProxyStats()
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()
        self.port = listen_port

    async def start(self) -> FaultProxy:
        """Listen; returns self."""
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._drop(conn, reset=False)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def retarget(self, upstream_host: str, upstream_port: int) -> None:
        """Send new connections elsewhere (a database that moved); open ones are reset."""
        self.upstream = (upstream_host, upstream_port)
        for conn in list(self._conns):
            self._drop(conn, reset=True)

    def set_mode(self, mode: Mode, latency_s: float = 0.0) -> None:
        """Switch the fault mode (call on the proxy's loop; :class:`ProxyThread` does that)."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        previous = self.mode
        self.mode = mode
        self.latency_s = latency_s
        self.stats.mode_changes += 1
        if mode == "reset":
            for conn in list(self._conns):
                self._drop(conn, reset=True)
        elif mode == "blackhole":
            for conn in self._conns:
                conn.blackholed = True
        if previous == "blackhole" and mode != "blackhole":
            for conn in list(self._conns):
                if conn.blackholed:
                    self._drop(conn, reset=True)
        self._changed.set()
        self._changed = asyncio.Event()

    def _drop(self, conn: _Conn, *, reset: bool) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        if reset:
            self.stats.resets += 1
            _rst(conn.client)
            _rst(conn.upstream)
        else:
            conn.client.close()
            if conn.upstream is not None:
                conn.upstream.close()
        for t in conn.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        conn = _Conn(writer, blackholed=self.mode == "blackhole")
        self._conns.add(conn)
        if self.mode == "reset":
            self._drop(conn, reset=True)
            return
        try:
            while self.mode in ("blackhole", "stall") and conn in self._conns:
                await self._wait_change()
            if conn not in self._conns:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                self._drop(conn, reset=True)
                return
            conn.upstream = up_writer
            if conn not in self._conns:
                up_writer.transport.abort()
                return
            up = asyncio.create_task(self._pump(conn, reader, up_writer, "up"))
            down = asyncio.create_task(self._pump(conn, up_reader, writer, "down"))
            conn.tasks = [up, down]
            await asyncio.gather(up, down, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            self._drop(conn, reset=False)

    async def _pump(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Literal["up", "down"],
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                while self.mode in ("stall", "blackhole"):
                    await self._wait_change()
                if self.mode == "latency" and self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (ConnectionError, OSError):
            self._drop(conn, reset=True)


class ProxyThread:
    """A :class:`FaultProxy` on its own event loop in a daemon thread (for sync callers)."""

    def __init__(self, upstream_host: str, upstream_port: int, *, listen_port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = self._call(self._make(upstream_host, upstream_port, listen_port))

    async def _make(self, host: str, port: int, listen_port: int) -> FaultProxy:
        return await FaultProxy(host, port, listen_port=listen_port).start()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    @property
    def port(self) -> int:
        """The proxy's listening port on 127.0.0.1."""
        return self.proxy.port

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self.proxy.mode

    def set_mode(self, mode: Mode, latency_s: float = 0.0) -> None:
        """Switch the mode (waits until the proxy's loop applied it)."""

        async def _set() -> None:
            self.proxy.set_mode(mode, latency_s)

        self._call(_set())

    def retarget(self, host: str, port: int) -> None:
        """Send new connections to another upstream; open ones are reset."""

        async def _re() -> None:
            self.proxy.retarget(host, port)

        self._call(_re())

    def close(self) -> None:
        """Stop the proxy and its loop."""
        with contextlib.suppress(Exception):
            self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
