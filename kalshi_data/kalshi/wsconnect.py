"""Open an authenticated Kalshi WebSocket (kalshi-protocol.md §2, §3.3): the one I/O helper.

The upgrade request carries the ``KALSHI-ACCESS-*`` headers signed over ``GET`` + the URL path
(``/trade-api/ws/v2``). Frames are capped at ``max_frame_bytes`` (default
:data:`~kalshi_data.kalshi.parse.MAX_FRAME_BYTES`); no compression is negotiated.

The client is aiohttp's: its C frame reader receives a text frame in about 1.3 µs of CPU here,
websockets' in about 4.8 µs (``docs/gatherer.md``), which matters at 50,000 frames a second.
Read with ``receive()`` (``msg.data`` is the frame's text), send commands with
``send_str(command.text)``.

Pings: with ``autoping`` (the default) aiohttp answers the server's ``heartbeat`` pings itself and
``heartbeat_s`` makes it ping too, closing when no pong comes within half that period. A caller
that wants its own liveness policy (the gatherer: separate interval and timeout) passes
``autoping=False`` and then sees ``PING``/``PONG`` messages and must answer pings with ``pong``.

A rejected upgrade raises :class:`aiohttp.WSServerHandshakeError` (``.status`` the HTTP status),
which :func:`kalshi_data.resilience.classify` judges by that status (429/5xx retryable).
"""

from __future__ import annotations

import asyncio

import aiohttp

from kalshi_data.kalshi.parse import MAX_FRAME_BYTES
from kalshi_data.kalshi.signer import Signer

DEFAULT_WS_URL = "wss://external-api-ws.kalshi.com/trade-api/ws/v2"
#: How long a polite close waits for the server's close frame.
CLOSE_TIMEOUT_S = 2.0


async def ws_connect(
    session: aiohttp.ClientSession,
    ws_url: str = DEFAULT_WS_URL,
    signer: Signer | None = None,
    *,
    open_timeout_s: float = 10.0,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    autoping: bool = True,
    heartbeat_s: float | None = None,
    now_ms: int | None = None,
) -> aiohttp.ClientWebSocketResponse:
    """Connect and return the open WebSocket.

    Args:
        session: the aiohttp session the connection belongs to (it must outlive the socket).
        ws_url: ``wss://.../trade-api/ws/v2`` (or a simulator's ``ws_url``).
        signer: signs the upgrade; Kalshi requires it even for public channels (§2).
        open_timeout_s: TCP connect plus handshake.
        max_frame_bytes: a larger frame closes the connection (code 1009).
        autoping: answer pings and swallow pongs inside aiohttp (see the module docstring).
        heartbeat_s: with ``autoping``, ping this often (None: rely on the server's pings).
        now_ms: signing time in Unix ms (default: now).
    """
    headers = signer.auth_headers("GET", ws_url, now_ms) if signer is not None else None
    async with asyncio.timeout(open_timeout_s):
        return await session.ws_connect(
            ws_url,
            headers=headers,
            autoping=autoping,
            heartbeat=heartbeat_s if autoping else None,
            max_msg_size=max_frame_bytes,
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
        )
