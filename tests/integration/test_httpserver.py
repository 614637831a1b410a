"""The embedded health/metrics server over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from kalshi_data.httpserver import HealthServer

Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start HealthServers on 127.0.0.1:0; every one is stopped after the test."""
    started: list[HealthServer] = []

    async def start(health: Any, ready: Any = None, **kwargs: Any) -> str:
        async def always_ready() -> bool:
            return True

        server = HealthServer(
            "127.0.0.1:0",
            health=health,
            ready=ready or always_ready,
            registry=kwargs.pop("registry", CollectorRegistry()),
            **kwargs,
        )
        await server.start()
        started.append(server)
        assert server.port != 0
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in started:
        await server.stop()


async def _get(url: str) -> tuple[int, str, dict[str, Any] | None]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
        body = await r.json() if r.content_type == "application/json" else None
        return r.status, text, body


async def test_endpoints_answer(serve: Serve) -> None:
    """/health mirrors the status (200 healthy/degraded, 503 unhealthy), /ready and /metrics."""
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc(3)
    state: dict[str, Any] = {"status": "healthy", "components": {"db": "up"}}

    async def health() -> dict[str, Any]:
        return state

    async def ready() -> bool:
        return bool(state["status"] != "unhealthy")

    base = await serve(health, ready, registry=registry)
    status, _, body = await _get(f"{base}/health")
    assert status == 200
    assert body == state
    status, text, _ = await _get(f"{base}/metrics")
    assert status == 200
    assert "demo_things_total 3.0" in text
    assert (await _get(f"{base}/ready"))[::2] == (200, {"ready": True})
    state["status"] = "degraded"
    assert (await _get(f"{base}/health"))[0] == 200
    state["status"] = "unhealthy"
    assert (await _get(f"{base}/health"))[0] == 503
    assert (await _get(f"{base}/ready"))[::2] == (503, {"ready": False})
    state["status"] = "confused"  # an unknown status is not a healthy one
    assert (await _get(f"{base}/health"))[0] == 503


async def test_a_failing_health_check_is_unhealthy_without_details(serve: Serve) -> None:
    """A health function that raises yields 503 with the error type only (no message text)."""
    password = secrets.token_hex(6)

    async def health() -> dict[str, Any]:
        raise RuntimeError(f"postgresql://u:{password}@db")

    async def ready() -> bool:
        raise RuntimeError(password)

    base = await serve(health, ready)
    status, text, body = await _get(f"{base}/health")
    assert status == 503
    assert body == {"status": "unhealthy", "error": "RuntimeError"}
    assert password not in text
    status, text, body = await _get(f"{base}/ready")
    assert status == 503
    assert body == {"ready": False, "error": "RuntimeError"}
    assert password not in text


async def test_a_hanging_or_malformed_health_check_is_unhealthy(serve: Serve) -> None:
    """A health function past its timeout, or one returning a non-dict, answers 503."""
    never = asyncio.Event()

    async def hangs() -> dict[str, Any]:
        await never.wait()
        return {}

    async def malformed() -> dict[str, Any]:
        return ["healthy"]  # type: ignore[return-value]

    hanging = await serve(hangs, timeout_s=0.2)
    assert (await _get(f"{hanging}/health"))[::2] == (
        503,
        {"status": "unhealthy", "error": "TimeoutError"},
    )
    bad = await serve(malformed)
    assert (await _get(f"{bad}/health"))[::2] == (
        503,
        {"status": "unhealthy", "error": "TypeError"},
    )


async def test_values_that_are_not_json_are_rendered_as_text(serve: Serve) -> None:
    """Component details such as timestamps do not break the health endpoint."""
    import datetime

    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)

    async def health() -> dict[str, Any]:
        return {"status": "healthy", "last_batch": when}

    base = await serve(health)
    status, _, body = await _get(f"{base}/health")
    assert status == 200
    assert body == {"status": "healthy", "last_batch": str(when)}


async def test_port_in_use_fails_and_stop_frees_the_port(serve: Serve) -> None:
    """Binding a taken port raises without leaving a server; after stop() the port is free."""

    async def health() -> dict[str, Any]:
        return {"status": "healthy"}

    async def ready() -> bool:
        return True

    first = HealthServer("127.0.0.1:0", health=health, ready=ready, registry=CollectorRegistry())
    await first.start()
    port = first.port
    second = HealthServer(
        f"127.0.0.1:{port}", health=health, ready=ready, registry=CollectorRegistry()
    )
    try:
        with pytest.raises(OSError):
            await second.start()
        assert not second.running
    finally:
        await first.stop()
    await first.stop()  # idempotent
    with pytest.raises(aiohttp.ClientConnectorError):
        await _get(f"http://127.0.0.1:{port}/health")
    try:
        await second.start()  # the port was released
        assert (await _get(f"http://127.0.0.1:{port}/health"))[0] == 200
    finally:
        await second.stop()
