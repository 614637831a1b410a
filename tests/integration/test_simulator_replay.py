"""Replay mode (``--replay N``) and the batched send path, over real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator import SimConfig, Simulator
from tests.integration.test_simulator_ws import admin, auth, open_ws, seqs_by_sid, wait_for

EVENTS = 6000


@pytest.fixture
async def replay_sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    s = Simulator(
        SimConfig(
            seed=7,
            markets=60,
            rate=0,
            truth_path=tmp_path / "truth.jsonl",
            workdir=tmp_path,
            replay=EVENTS,
        )
    )
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def _subscribe_all(sim: Simulator, ws: Any) -> None:
    tickers = [m.ticker for m in sim.exchange.market_list]
    for i, params in enumerate(
        [
            {"channels": ["orderbook_delta"], "market_tickers": tickers},
            {"channels": ["trade", "ticker", "market_lifecycle_v2"]},
        ]
    ):
        await ws.send(orjson.dumps({"id": i + 1, "cmd": "subscribe", "params": params}).decode())


async def _read_until_quiet(ws: Any, quiet_s: float = 0.5) -> list[Any]:
    frames: list[Any] = []
    while True:
        try:
            frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), quiet_s)))
        except TimeoutError:
            return frames


async def test_replay_emits_the_pregenerated_stream_exactly_once_and_in_order(
    replay_sim: Simulator,
):
    """Every pre-generated event reaches a full subscriber once, in truth order, seq gap-free;
    pause/resume/rate work; exhaustion stops emission and shows in stats."""
    sim = replay_sim
    stats = await admin(sim, "stats")
    assert (stats["replay_total"], stats["replay_remaining"]) == (EVENTS, EVENTS)
    assert sim.truth_lines == 0  # nothing emitted before a rate is set
    async with await open_ws(sim) as ws:
        await _subscribe_all(sim, ws)
        replies = await _read_until_quiet(ws)
        assert any(f["type"] == "orderbook_snapshot" for f in replies)
        await admin(sim, "rate", {"rate": 4000})
        await wait_for(lambda: sim.truth_lines > 1000)
        await admin(sim, "pause")
        paused_at = sim.truth_lines
        await asyncio.sleep(0.3)
        assert sim.truth_lines == paused_at < EVENTS
        await admin(sim, "resume")
        await wait_for(lambda: sim.truth_lines == EVENTS, 10)
        frames = await _read_until_quiet(ws)
        await asyncio.sleep(0.3)
        assert sim.truth_lines == EVENTS  # exhausted: nothing more
    stats = await admin(sim, "stats")
    assert stats["replay_remaining"] == 0
    assert stats["events_total"] == EVENTS
    sim.truth_flush()
    assert sim.truth is not None
    truth = [orjson.loads(line) for line in sim.truth.path.read_bytes().splitlines()]
    data = [f for f in frames if f["type"] in {"orderbook_delta", "trade", "ticker"}]
    assert len(truth) == EVENTS
    assert {t["type"] for t in truth} <= {"orderbook_delta", "trade", "ticker"}  # no lifecycle
    assert [(f["type"], f["msg"]) for f in data] == [(t["type"], t["msg"]) for t in truth]
    for sid, seqs in seqs_by_sid(replies + frames).items():
        assert seqs == list(range(1, len(seqs) + 1)), sid


async def test_replay_skip_fault_still_makes_a_seq_gap(replay_sim: Simulator):
    """Admin faults act on delivery, so they work in replay mode too."""
    sim = replay_sim
    async with await open_ws(sim) as ws:
        await ws.send(
            orjson.dumps({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}}).decode()
        )
        await _read_until_quiet(ws, 0.3)
        conn = (await admin(sim, "connections"))["connections"][0]["id"]
        await admin(sim, "skip_seq", {"conn": conn, "sid": 1, "n": 2})
        await admin(sim, "rate", {"rate": 3000})
        await wait_for(lambda: sim.truth_lines == EVENTS, 10)
        frames = await _read_until_quiet(ws)
    seqs = [f["seq"] for f in frames if f["type"] == "trade"]
    assert seqs[0] == 3  # seq 1 and 2 were skipped
    assert seqs == list(range(3, 3 + len(seqs)))


async def test_batched_writer_delivers_a_large_burst_in_order_to_a_slow_reader(
    tmp_path: Path,
):
    """80,000 events sent as fast as possible to a reader that stalls: flow control holds the
    frames (no error 25 at this size), then every frame arrives in order."""
    n = 80_000
    sim = Simulator(
        SimConfig(
            seed=3,
            markets=40,
            rate=0,
            workdir=tmp_path,
            replay=n,
            max_buffered_frames=200_000,
        )
    )
    await sim.start()
    try:
        import websockets

        async with websockets.connect(
            sim.ws_url, additional_headers=auth(sim), max_size=None, ping_interval=None
        ) as ws:
            await ws.send(
                orjson.dumps(
                    {"id": 1, "cmd": "subscribe", "params": {"channels": ["trade", "ticker"]}}
                ).decode()
            )
            await admin(sim, "rate", {"rate": 200_000})
            await asyncio.sleep(1.0)  # stall: the server's socket buffer fills up
            conn = (await admin(sim, "connections"))["connections"][0]
            assert conn["queued_frames"] > 0  # frames wait in the session, not in the kernel
            frames = await _read_until_quiet(ws, 1.0)
    finally:
        await sim.stop()
    expected = sum(1 for t, _, _ in sim._replay if t in {"trade", "ticker"})
    data = [f for f in frames if f["type"] in {"trade", "ticker"}]
    assert len(data) == expected
    trade_seqs = [f["seq"] for f in data if f["type"] == "trade"]
    assert trade_seqs == list(range(1, len(trade_seqs) + 1))
