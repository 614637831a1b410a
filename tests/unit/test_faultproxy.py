"""The TCP fault proxy against a real echo server on 127.0.0.1: each mode does what it says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from kalshi_data.testing.faultproxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = await FaultProxy("127.0.0.1", port).start()
    yield p
    await p.stop()
    server.close()
    await server.wait_closed()


async def _connect(p: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", p.port)


async def _roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes) -> bytes:
    w.write(data)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(data)), 5)


async def _closed(r: asyncio.StreamReader) -> bytes:
    """What a reset connection reads: nothing (EOF or ConnectionResetError)."""
    try:
        return await asyncio.wait_for(r.read(10), 5)
    except ConnectionResetError:
        return b""


async def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    r, w = await _connect(proxy)
    payload = bytes(range(256)) * 1000
    assert await _roundtrip(r, w, payload) == payload
    assert proxy.stats.bytes_up == len(payload)
    assert proxy.stats.bytes_down == len(payload)
    w.close()


async def test_latency_delays_each_chunk(proxy: FaultProxy) -> None:
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"warm") == b"warm"
    proxy.set_mode("latency", 0.2)
    started = time.monotonic()
    assert await _roundtrip(r, w, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.4  # once up, once down
    w.close()


async def test_stall_holds_bytes_and_delivers_them_in_order(proxy: FaultProxy) -> None:
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"a") == b"a"
    proxy.set_mode("stall")
    w.write(b"held-1,")
    w.write(b"held-2")
    await w.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(r.read(1), 0.3)
    proxy.set_mode("pass")
    assert await asyncio.wait_for(r.readexactly(13), 5) == b"held-1,held-2"
    w.close()


async def test_blackhole_then_reset_of_survivors(proxy: FaultProxy) -> None:
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"x") == b"x"
    proxy.set_mode("blackhole")
    w.write(b"lost")
    await w.drain()
    r2, w2 = await _connect(proxy)  # accepted, but never answered
    w2.write(b"new")
    await w2.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(r.read(1), 0.3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(r2.read(1), 0.1)
    proxy.set_mode("pass")
    assert await _closed(r) == b""  # survivors are reset: the held bytes never arrive
    r3, w3 = await _connect(proxy)
    assert await _roundtrip(r3, w3, b"healed") == b"healed"
    for writer in (w, w2, w3):
        writer.close()


async def test_reset_kills_open_and_new_connections(proxy: FaultProxy) -> None:
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"x") == b"x"
    proxy.set_mode("reset")
    assert await _closed(r) == b""
    r2, w2 = await _connect(proxy)
    assert await _closed(r2) == b""
    proxy.set_mode("pass")
    r3, w3 = await _connect(proxy)
    assert await _roundtrip(r3, w3, b"ok") == b"ok"
    assert proxy.stats.resets >= 2
    for writer in (w, w2, w3):
        writer.close()


async def test_unknown_mode_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown proxy mode"):
        proxy.set_mode("sideways")  # type: ignore[arg-type]
