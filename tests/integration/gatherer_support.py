"""Helpers for gatherer integration tests: simulator + real PostgreSQL + the real gatherer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from gatherer.config import GathererConfig
from gatherer.service import GathererService
from kalshi_data.config import load_config
from kalshi_data.migrate import migrate
from kalshi_data.testing.truth import TableDiff, compare
from simulator.config import SimConfig
from simulator.server import Simulator

ROOT = Path(__file__).resolve().parents[2]


async def wait_for(
    cond: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.05
) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(every_s)


def config_data(sim: Simulator, dsn: str, tmp: Path, **over: Any) -> dict[str, Any]:
    """A gatherer configuration mapping pointing at ``sim`` and ``dsn``."""
    data: dict[str, Any] = {
        "gatherer_id": "g1",
        "kalshi": {
            "rest_url": sim.rest_url,
            "ws_url": sim.ws_url,
            "key_id": sim.key_id,
            "private_key_file": str(sim.private_key_path),
            "rest_rate_per_s": 50,
            "rest_burst": 50,
            "ping_interval_s": 2,
            "ping_timeout_s": 5,
        },
        "database": {"dsn": dsn, "flush_interval_s": 0.02},
        "spool_dir": str(tmp / "spool"),
        "http": {"listen": "127.0.0.1:0"},
        "connections": 2,
        "markets_per_subscription": 10,
        "snapshot_interval_s": 0,
        "reconcile_interval_s": 60,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.5,
        "stop_timeout_s": 20,
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def gatherer_db(dsn: str) -> str:
    """Migrate a fresh database for a gatherer; returns the DSN."""
    migrate(dsn, "gatherer")
    return dsn


@asynccontextmanager
async def simulator(tmp: Path, **over: Any) -> AsyncIterator[Simulator]:
    """An in-process simulator, paused at start (resume when the gatherer is subscribed)."""
    cfg = SimConfig(
        **{
            "markets": 40,
            "rate": 400.0,
            "truth_path": tmp / "truth.jsonl",
            "workdir": tmp / "sim",
            "ping_interval_s": 1.0,
            "seed": 7,
            **over,
        }
    )
    sim = Simulator(cfg)
    await sim.start()
    sim.pause()
    try:
        yield sim
    finally:
        await sim.stop()


@dataclass
class Running:
    """An in-process gatherer run."""

    service: GathererService
    stop: asyncio.Event
    task: asyncio.Task[int]

    async def finish(self, timeout_s: float = 60.0) -> int:
        """SIGTERM-equivalent: set stop, wait for the exit code."""
        self.stop.set()
        return await asyncio.wait_for(self.task, timeout_s)


@asynccontextmanager
async def gatherer(data: dict[str, Any]) -> AsyncIterator[Running]:
    """Run a GathererService in this loop; always stopped at exit."""
    cfg = load_config(GathererConfig, None, env={}, data=data)
    service = GathererService(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name="gatherer-under-test")
    run = Running(service, stop, task)
    try:
        yield run
    finally:
        if not task.done():
            stop.set()
            try:
                await asyncio.wait_for(task, 60)
            except BaseException:
                task.cancel()
                raise


def subscribed(service: GathererService) -> bool:
    """Every carried market sits in an acknowledged subscription; firehose is live."""
    manager, registry = service.manager, service.registry
    if manager is None or registry is None or not registry.loaded or not registry.markets:
        return False
    for conn in manager.connections:
        if not conn.up:
            return False
        if conn.layout.placed != conn.layout.desired:
            return False
        if any(s.busy or s.sid is None for s in conn.layout.slots):
            return False
    return len(manager.connections[0].session.firehose_sids) == 3


async def quiesce(sim: Simulator, service: GathererService, timeout_s: float = 30.0) -> None:
    """Pause the exchange, wait until the gatherer stops receiving and the writer is idle."""
    sim.pause()
    sim.truth_flush()
    ingest = service.ingest
    assert ingest is not None
    last = [-1, 0]

    def stable() -> bool:
        total = sum(ingest.frames.values())
        if total == last[0]:
            last[1] += 1
        else:
            last[0], last[1] = total, 0
        return last[1] >= 4

    await wait_for(stable, timeout_s, "the gatherer to stop receiving", every_s=0.1)
    writer = service.writer
    assert writer is not None
    assert await writer.wait_idle(timeout_s), "writer did not drain"


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one query on a fresh connection."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql.encode(), params)
        return cur.fetchall() if cur.description else []


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a YAML config file."""
    path.write_text(yaml.safe_dump(data))
    return path


@contextmanager
def gatherer_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m gatherer --config F`` as a real subprocess; killed at exit if still alive."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatherer", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def assert_truth(dsn: str, truth: Path, **window: int) -> dict[str, Any]:
    """The database equals the truth, and the gatherer reported no gap at all: a market created
    mid-run announces its ``open_ts`` (the simulator opens it no sooner), so its subscription
    exists before its first delta and no ``late_subscribe`` gap is excused. Returns the report."""
    gaps = query(dsn, "SELECT state, channel, how, markets FROM gaps")
    assert gaps == [], gaps
    report = compare(dsn, truth, **window)
    for table, diff in report.items():
        assert not diff.extra, (table, diff.extra)
        assert not diff.missing, (table, diff.expected, diff.found, list(diff.missing)[:5])
        assert diff.expected > 0, table
    return report


def assert_loss_only_inside_gaps(dsn: str, truth_path: Path) -> tuple[dict[str, TableDiff], int]:
    """Nothing extra anywhere, every missing row inside a recorded gap window
    ([detected_at, recovered_at] ± 1 s), and trades and deltas exact (and present) after the
    last window. Returns the whole-run report and the windows' lower bound."""
    windows = query(
        dsn,
        "SELECT (extract(epoch FROM o.detected_at) * 1e6)::bigint,"
        " (extract(epoch FROM r.recovered_at) * 1e6)::bigint"
        " FROM gaps o JOIN gaps r USING (gap_id) WHERE o.state = 'open' AND r.state = 'recovered'",
    )
    assert windows, "no gap window was recorded"
    lo = min(int(w[0]) for w in windows) - 1_000_000
    hi = max(int(w[1]) for w in windows) + 1_000_000
    report = compare(dsn, truth_path)
    for table, diff in report.items():
        assert not diff.extra, (table, list(diff.extra)[:5])
        for ident in diff.missing:
            assert lo <= ident[1] <= hi, (table, ident, lo, hi)
    after = compare(dsn, truth_path, since_us=hi)
    for table in ("trades", "orderbook_deltas"):
        assert after[table].exact, (table, list(after[table].missing)[:5])
        assert after[table].expected > 0, (table, "no traffic after the last gap window")
    return report, lo
