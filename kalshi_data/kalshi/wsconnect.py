"""Open an authenticated Kalshi WebSocket (kalshi-protocol.md §2, §3.3): the one I/O helper.

The upgrade request carries the ``KALSHI-ACCESS-*`` headers signed over ``GET`` + the URL path
(``/trade-api/ws/v2``). Frames are capped at :data:`~kalshi_data.kalshi.parse.MAX_FRAME_BYTES`
(enforced by websockets while inflating, so compressed bombs are refused too). The server pings
every 10 s and websockets answers automatically; the client's own pings detect dead peers.
A rejected handshake raises websockets' ``InvalidStatus``, which
:func:`kalshi_data.resilience.classify` judges by its HTTP status (429/5xx retryable).
"""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection, connect

from kalshi_data.kalshi.parse import MAX_FRAME_BYTES
from kalshi_data.kalshi.signer import Signer

DEFAULT_WS_URL = "wss://external-api-ws.kalshi.com/trade-api/ws/v2"


async def ws_connect(
    ws_url: str = DEFAULT_WS_URL,
    signer: Signer | None = None,
    *,
    open_timeout_s: float = 10.0,
    ping_interval_s: float | None = 20.0,
    ping_timeout_s: float | None = 20.0,
    max_queue: int = 1024,
    now_ms: int | None = None,
) -> ClientConnection:
    """Connect and return the open connection (send ``Command.text``; ``recv()`` text frames).

    Args:
        ws_url: ``wss://.../trade-api/ws/v2`` (or a simulator's ``ws_url``).
        signer: signs the upgrade; Kalshi requires it even for public channels (§2).
        open_timeout_s: handshake timeout.
        ping_interval_s: client ping period (None: rely on the server's pings).
        ping_timeout_s: close when a pong takes longer than this.
        max_queue: received frames buffered before reading pauses (TCP back-pressure).
        now_ms: signing time in Unix ms (default: now).
    """
    headers = signer.auth_headers("GET", ws_url, now_ms) if signer is not None else None
    return await connect(
        ws_url,
        additional_headers=headers,
        max_size=MAX_FRAME_BYTES,
        max_queue=max_queue,
        open_timeout=open_timeout_s,
        ping_interval=ping_interval_s,
        ping_timeout=ping_timeout_s,
    )
