"""Health and metrics HTTP server, embedded in the service's own asyncio loop (aiohttp).

``GET /health`` → the service's health JSON (200 healthy/degraded, 503 unhealthy),
``GET /ready`` → 200/503, ``GET /metrics`` → Prometheus text exposition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kalshi_data.config import validate_listen

HealthFn = Callable[[], Awaitable[dict[str, Any]]]
ReadyFn = Callable[[], Awaitable[bool]]


class HealthServer:
    """``/health``, ``/ready`` and ``/metrics`` on ``listen`` (``host:port``; port 0 = any)."""

    def __init__(
        self, listen: str, *, health: HealthFn, ready: ReadyFn, registry: CollectorRegistry
    ) -> None:
        self.host, self._port = validate_listen(listen)
        self._health = health
        self._ready = ready
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = self._port

    async def _get_health(self, _request: web.Request) -> web.Response:
        try:
            body = await self._health()
        except Exception as exc:
            return web.json_response(
                {"status": "unhealthy", "error": type(exc).__name__}, status=503
            )
        status = 503 if body.get("status") == "unhealthy" else 200
        return web.json_response(body, status=status)

    async def _get_ready(self, _request: web.Request) -> web.Response:
        try:
            ok = await self._ready()
        except Exception:
            ok = False
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        """Bind and serve; ``port`` holds the real port afterwards."""
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/ready", self._get_ready)
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        # aiohttp exposes the bound socket (needed when port 0 picked one) only here
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
