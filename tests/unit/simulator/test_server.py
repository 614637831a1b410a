"""The simulator's wiring (simulator/server.py) on real loopback sockets: start binds every
listener and gives URLs, events flow while running and stop while paused, the truth is
flushed on demand and at stop, a failed start leaves nothing listening, and stop closes every
socket."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from simulator import SimConfig, Simulator


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _until(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_start_serves_rest_ws_and_admin_then_stop_closes_them(tmp_path: Path) -> None:
    sim = Simulator(SimConfig(seed=1, markets=5, rate=200, workdir=tmp_path))
    await sim.start()
    try:
        ports = {_port(sim.rest_url), _port(sim.ws_url), _port(sim.admin_url)}
        assert len(ports) == 2  # REST and WebSocket share one port; admin has its own
        assert sim.ws_url.startswith("ws://127.0.0.1:")
        assert sim.private_key_path is not None
        assert sim.private_key_path.is_file()
        assert sim.key_id
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{sim.admin_url}/stats") as resp,
        ):
            assert resp.status == 200
            stats = await resp.json()
        assert stats["markets"] == 5
        assert stats["paused"] is False
    finally:
        await sim.stop()
    assert not any(_listening(p) for p in ports)
    await asyncio.wait_for(sim.wait_stopped(), 5)


async def test_events_flow_while_running_and_stop_while_paused(tmp_path: Path) -> None:
    async with Simulator(SimConfig(seed=2, markets=5, rate=2000, workdir=tmp_path)) as sim:
        await _until(lambda: sim.stats()["events_total"] > 0)
        sim.pause()
        await asyncio.sleep(0.05)  # a driver tick under way finishes
        frozen = sim.stats()["events_total"]
        await asyncio.sleep(0.2)
        assert sim.stats()["events_total"] == frozen
        assert sim.stats()["paused"] is True
        sim.resume()
        await _until(lambda: sim.stats()["events_total"] > frozen)


async def test_truth_is_flushed_on_demand_and_at_stop(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    sim = Simulator(SimConfig(seed=3, markets=5, rate=1000, workdir=tmp_path, truth_path=truth))
    await sim.start()
    try:
        await _until(lambda: sim.stats()["events_total"] >= 10)
        sim.truth_flush()
        assert sim.truth_lines > 0
        assert len(truth.read_bytes().splitlines()) == sim.truth_lines
    finally:
        await sim.stop()
    assert len(truth.read_bytes().splitlines()) == sum(sim.hub.events.values())


async def test_a_failed_start_leaves_nothing_listening(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = int(taken.getsockname()[1])
        with socket.socket() as probe:  # a port free now for the REST listener
            probe.bind(("127.0.0.1", 0))
            rest_port = int(probe.getsockname()[1])
        sim = Simulator(
            SimConfig(seed=4, markets=3, workdir=tmp_path, port=rest_port, admin_port=port)
        )
        with pytest.raises(OSError):
            await sim.start()
        assert not _listening(rest_port)  # the REST listener bound first was closed again
    finally:
        taken.close()


async def test_replay_emits_the_pregenerated_events_and_no_more(tmp_path: Path) -> None:
    async with Simulator(
        SimConfig(seed=5, markets=5, rate=5000, workdir=tmp_path, replay=200)
    ) as sim:
        assert sim.stats()["replay_total"] == 200
        await _until(lambda: sim.stats()["replay_remaining"] == 0)
        await asyncio.sleep(0.05)
        assert sim.stats()["events_total"] == 200
