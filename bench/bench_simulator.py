"""Simulator fan-out: data messages/s delivered to one WebSocket client at a rate above 20,000/s.

The simulator runs as its own process (``python -m simulator``) so the client and the exchange
each get a core; the client subscribes to every channel (order books of every market) and counts
data frames over a fixed window. Also reports the activity model alone (messages generated/s).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from simulator.auth import sign_headers
from simulator.market import Emitted, Exchange

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATE = 40_000
WINDOW_S = 4.0
MARKETS = 2000


def model_rate(steps: int = 100_000) -> float:
    """Messages per second the activity model alone generates (no serialisation, no I/O)."""
    ex = Exchange(1, MARKETS, 1_700_000_000)
    out: list[Emitted] = []
    t = time.perf_counter()
    for i in range(steps):
        ex.step(1_700_000_000_000 + i // 100, out)
    return len(out) / (time.perf_counter() - t)


async def fan_out(info: dict[str, str], pem: bytes, tickers: list[str]) -> tuple[int, float, int]:
    """Subscribe to everything; count data frames for WINDOW_S; return (frames, seconds, gaps)."""
    headers = sign_headers(pem, info["key_id"], "GET", "/trade-api/ws/v2", time.time_ns() // 10**6)
    data_types = {"orderbook_delta", "trade", "ticker", "market_lifecycle_v2", "event_lifecycle"}
    async with connect(
        info["ws_url"], additional_headers=headers, max_size=None, ping_interval=None
    ) as ws:
        for i, params in enumerate(
            [
                {"channels": ["orderbook_delta"], "market_tickers": tickers},
                {"channels": ["trade", "ticker", "market_lifecycle_v2"]},
            ]
        ):
            await ws.send(
                orjson.dumps({"id": i + 1, "cmd": "subscribe", "params": params}).decode()
            )
        last: dict[int, int] = {}
        gaps = 0
        count = 0
        warm_until = time.perf_counter() + 1.0
        started = 0.0
        while True:
            frame = orjson.loads(await ws.recv())
            now = time.perf_counter()
            seq = frame.get("seq")
            if seq is not None:
                sid = frame["sid"]
                if sid in last and seq != last[sid] + 1:
                    gaps += 1
                last[sid] = seq
            if now < warm_until or frame["type"] not in data_types:
                continue
            if not started:
                started = now
            count += 1
            if now - started >= WINDOW_S:
                return count, now - started, gaps


def main() -> None:
    """Print the model's generation rate and the WebSocket fan-out rate to one client."""
    print(f"activity model alone: {model_rate():,.0f} messages/s")
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator",
                "--rate",
                str(TARGET_RATE),
                "--markets",
                str(MARKETS),
                "--workdir",
                tmp,
                "--seed",
                "1",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            if not ready:
                raise RuntimeError("simulator did not start")
            info = json.loads(proc.stdout.readline())
            with urllib.request.urlopen(info["rest_url"] + "/markets?limit=1000") as r:
                page = json.loads(r.read())
            tickers = [m["ticker"] for m in page["markets"]]
            with urllib.request.urlopen(
                info["rest_url"] + f"/markets?limit=1000&cursor={page['cursor']}"
            ) as r:
                tickers += [m["ticker"] for m in json.loads(r.read())["markets"]]
            frames, seconds, gaps = asyncio.run(
                fan_out(info, Path(info["private_key_file"]).read_bytes(), tickers)
            )
            with urllib.request.urlopen(info["admin_url"] + "/stats") as r:
                stats = json.loads(r.read())
        finally:
            proc.terminate()
            proc.wait(15)
            if proc.stdout is not None:
                proc.stdout.close()
    rate = frames / seconds
    print(
        f"ws fan-out to one client: {rate:,.0f} data messages/s "
        f"(target {TARGET_RATE:,}/s, {len(tickers)} order books + all trades/tickers/lifecycle; "
        f"{frames:,} frames in {seconds:.1f} s; seq gaps {gaps}; "
        f"driver lag ticks {stats['driver_lag_ticks']})"
    )
    print(f"required >= 20,000/s: {'PASS' if rate >= 20_000 else 'FAIL'}")


if __name__ == "__main__":
    main()
