"""Health and metrics HTTP server, embedded in the service's own asyncio loop (aiohttp).

``GET /health`` → the service's health JSON (200 healthy/degraded, 503 otherwise),
``GET /ready`` → ``{"ready": bool}`` with 200/503, ``GET /metrics`` → Prometheus text exposition.

A health or readiness function that raises, hangs past ``timeout_s`` or returns something
malformed makes the answer 503 ``{"status": "unhealthy", "error": "<exception type>"}``: the
type only, since exception text may hold a DSN (reliability-notes §7).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kalshi_data.config import validate_listen

HealthFn = Callable[[], Awaitable[dict[str, Any]]]
ReadyFn = Callable[[], Awaitable[bool]]

#: Health statuses answered with 200; anything else (``unhealthy``, unknown) is 503.
SERVING_STATUSES = frozenset({"healthy", "degraded"})
DEFAULT_TIMEOUT_S = 5.0
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class _Probes:
    health: HealthFn
    ready: ReadyFn
    registry: CollectorRegistry
    timeout_s: float


_PROBES = web.AppKey("kalshi_data_probes", _Probes)


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.json_response(
        body, status=status, headers=_NO_STORE, dumps=lambda o: json.dumps(o, default=str)
    )


def _failure(exc: BaseException) -> web.Response:
    return _json({"status": "unhealthy", "error": type(exc).__name__}, 503)


async def _get_health(request: web.Request) -> web.Response:
    probes = request.app[_PROBES]
    try:
        async with asyncio.timeout(probes.timeout_s):
            body = await probes.health()
        if not isinstance(body, dict):
            raise TypeError("health function must return a dict")  # noqa: TRY301
        status = 200 if body.get("status") in SERVING_STATUSES else 503
        return _json(body, status)
    except Exception as exc:
        return _failure(exc)


async def _get_ready(request: web.Request) -> web.Response:
    probes = request.app[_PROBES]
    try:
        async with asyncio.timeout(probes.timeout_s):
            ok = await probes.ready()
    except Exception as exc:
        return _json({"ready": False, "error": type(exc).__name__}, 503)
    ready = ok is True
    return _json({"ready": ready}, 200 if ready else 503)


async def _get_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[_PROBES].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, **_NO_STORE})


class HealthServer:
    """``/health``, ``/ready`` and ``/metrics`` on ``listen``.

    Args:
        listen: ``host:port`` (port 0 = any free port; read :attr:`port` after :meth:`start`).
        health: Returns ``{"status": "healthy"|"degraded"|"unhealthy", "components": ...}``.
        ready: True when the service should receive work.
        registry: Prometheus registry to expose.
        timeout_s: Longest wait for ``health``/``ready`` before answering 503.

    Raises:
        ValueError: ``listen`` is not ``host:port``.
    """

    def __init__(
        self,
        listen: str,
        *,
        health: HealthFn,
        ready: ReadyFn,
        registry: CollectorRegistry,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.host, self.port = validate_listen(listen)
        self._probes = _Probes(health, ready, registry, timeout_s)
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._runner is not None

    async def start(self) -> None:
        """Bind and serve; :attr:`port` holds the bound port afterwards.

        Raises:
            RuntimeError: Already started.
            OSError: The address cannot be bound (nothing is left running).
        """
        if self._runner is not None:
            raise RuntimeError("health server already started")
        app = web.Application()
        app[_PROBES] = self._probes
        app.router.add_get("/health", _get_health)
        app.router.add_get("/ready", _get_ready)
        app.router.add_get("/metrics", _get_metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for address in runner.addresses:  # the real port when 0 was asked for
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
