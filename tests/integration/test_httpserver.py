"""The embedded health/metrics server over real HTTP on loopback."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from kalshi_data.httpserver import HealthServer


async def test_endpoints_answer() -> None:
    """/health mirrors the status (503 when unhealthy), /ready and /metrics answer."""
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc(3)
    state: dict[str, Any] = {"status": "healthy", "components": {"db": "up"}}

    async def health() -> dict[str, Any]:
        return state

    async def ready() -> bool:
        return bool(state["status"] != "unhealthy")

    server = HealthServer("127.0.0.1:0", health=health, ready=ready, registry=registry)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/health") as r:
                assert r.status == 200
                assert (await r.json())["components"] == {"db": "up"}
            async with http.get(f"{base}/metrics") as r:
                assert "demo_things_total 3.0" in await r.text()
            state["status"] = "unhealthy"
            async with http.get(f"{base}/health") as r:
                assert r.status == 503
            async with http.get(f"{base}/ready") as r:
                assert r.status == 503
    finally:
        await server.stop()


async def test_a_failing_health_check_is_unhealthy_without_details() -> None:
    """A health function that raises yields 503 with the error type only (no message text)."""

    async def health() -> dict[str, Any]:
        raise RuntimeError("postgresql://u:secret@db")

    async def ready() -> bool:
        return True

    server = HealthServer("127.0.0.1:0", health=health, ready=ready, registry=CollectorRegistry())
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{server.port}/health") as r,
        ):
            body = await r.text()
            assert r.status == 503
    finally:
        await server.stop()
    assert "RuntimeError" in body
    assert "secret" not in body
