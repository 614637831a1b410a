"""Messages/s one gatherer process sustains into its local PostgreSQL with zero loss.

Setup (all local, real processes): a temporary PostgreSQL cluster, the simulator
(``python -m simulator --replay N``: the events are generated before the run, so the exchange
costs a few µs per message instead of ~15 and leaves a core for the gatherer) and one gatherer
(``python -m gatherer``). The simulator's rate is raised stage by stage; each stage runs a few
seconds, pauses the exchange, waits until the gatherer has drained (no new messages, empty
queues and spool), then compares the database with the truth file (nothing missing, nothing
extra, no gaps). A stage "holds" when it is lossless and the gatherer drained within
``MAX_DRAIN_S`` of the pause (it kept up rather than buffering).

Baseline, same run: the rows the gatherer stored are COPYed straight into an empty gatherer
database with asyncpg (binary COPY, one transaction per 5,000 rows), rows/s printed as the ratio.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from kalshi_data.migrate import migrate
from kalshi_data.tables import BY_NAME
from kalshi_data.testing import pgcluster
from kalshi_data.testing.truth import compare

ROOT = Path(__file__).resolve().parent.parent
STAGES = (10_000, 30_000, 50_000, 60_000)
STAGE_S = 5.0
#: A stage keeps up when the gatherer has drained this soon after the pause. The metrics it is
#: judged by refresh every ~0.5 s, so a gatherer that never fell behind shows 0.0-0.5 s.
MAX_DRAIN_S = 1.0
#: Events the simulator pre-generates: every stage's share plus a margin.
REPLAY = int(sum(STAGES) * STAGE_S * 1.1)
MARKETS = 400
TABLES = ("orderbook_deltas", "trades", "tickers", "lifecycle_events")
#: Gap rows (open and recovered) other than late_subscribe ones.
NOT_LATE = (
    "SELECT {cols} FROM gaps g WHERE NOT EXISTS (SELECT 1 FROM gaps r"
    " WHERE r.gap_id = g.gap_id AND r.how = 'late_subscribe')"
)


def _http(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    return json.loads(text) if text.startswith(("{", "[")) else text


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(cond: Any, timeout_s: float, what: str, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every_s)


class Bench:
    def __init__(self, tmp: Path, dsn: str) -> None:
        self.tmp = tmp
        self.dsn = dsn
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_sim(self) -> dict[str, str]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator",
                "--markets",
                str(MARKETS),
                "--rate",
                "0",
                "--truth",
                str(self.tmp / "truth.jsonl"),
                "--workdir",
                str(self.tmp / "sim"),
                "--rest-rate",
                "0",
                "--ping-interval",
                "5",
                "--seed",
                "11",
                "--replay",
                str(REPLAY),
            ],
            stdout=subprocess.PIPE,
            stderr=(self.tmp / "sim.log").open("wb"),
            cwd=ROOT,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        info: dict[str, str] = json.loads(proc.stdout.readline())
        return info

    def start_gatherer(self, info: dict[str, str], port: int) -> None:
        cfg = {
            "gatherer_id": "bench",
            "kalshi": {
                "rest_url": info["rest_url"],
                "ws_url": info["ws_url"],
                "key_id": info["key_id"],
                "private_key_file": info["private_key_file"],
                "rest_rate_per_s": 100,
                "rest_burst": 100,
            },
            "database": {"dsn": self.dsn},
            "spool_dir": str(self.tmp / "spool"),
            "http": {"listen": f"127.0.0.1:{port}"},
            "connections": 2,
            "markets_per_subscription": 250,
            "snapshot_interval_s": 0,
            "log_level": "WARNING",
        }
        path = self.tmp / "gatherer.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatherer", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=(self.tmp / "gatherer.log").open("wb"),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.procs.append(proc)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _db_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(run())


def _db_count(dsn: str, sql: str) -> int:
    async def run() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


async def _copy_baseline(src_dsn: str, dst_dsn: str) -> tuple[int, float]:
    """COPY the gatherer's rows straight into an empty database; (rows, seconds)."""
    src = await asyncpg.connect(src_dsn)
    dst = await asyncpg.connect(dst_dsn)
    try:
        data: dict[str, list[tuple[Any, ...]]] = {}
        for name in TABLES:
            cols = ", ".join(BY_NAME[name].column_names)
            data[name] = [tuple(r) for r in await src.fetch(f"SELECT {cols} FROM {name}")]
        rows = sum(len(v) for v in data.values())
        started = time.perf_counter()
        for name, records in data.items():
            for i in range(0, len(records), 5000):
                async with dst.transaction():
                    await dst.copy_records_to_table(
                        name, records=records[i : i + 5000], columns=BY_NAME[name].column_names
                    )
        return rows, time.perf_counter() - started
    finally:
        await src.close()
        await dst.close()


async def _pipeline_ceiling(dsn: str, truth: Path, limit: int = 300_000) -> tuple[int, float]:
    """The gatherer's own code path without the network: frames -> WsProtocol.feed -> Ingest ->
    Writer -> PostgreSQL, as fast as it goes; (frames, seconds) until the writer is idle."""
    import orjson  # noqa: PLC0415

    from gatherer.ingest import Ingest  # noqa: PLC0415
    from gatherer.metrics import GathererMetrics  # noqa: PLC0415
    from gatherer.writer import Writer  # noqa: PLC0415
    from kalshi_data.kalshi.wsproto import Data, WsProtocol  # noqa: PLC0415

    frames = []
    seq = 0
    with truth.open("rb") as f:
        for line in f:
            obj = orjson.loads(line)
            seq += 1
            frame = {"type": obj["type"], "sid": 1, "seq": seq, "msg": obj["msg"]}
            frames.append(orjson.dumps(frame).decode())  # text, as aiohttp hands it over
            if len(frames) >= limit:
                break
    writer = Writer(dsn, truth.parent / "ceiling-spool", metrics=GathererMetrics("ceiling"))
    await writer.start()
    ingest = Ingest(writer.put)
    proto = WsProtocol()
    started = time.perf_counter()
    for i, raw in enumerate(frames):
        received = time.time_ns() // 1000
        for event in proto.feed(raw):
            if isinstance(event, Data):
                ingest.record(event.record, event.type, received)
        if i % 2000 == 0:
            await asyncio.sleep(0)  # let the writer run, as the socket reads do
    assert await writer.wait_idle(300)
    elapsed = time.perf_counter() - started
    await writer.stop()
    return len(frames), elapsed


def main() -> None:
    """Run the stages and the COPY baseline on plain PostgreSQL, then (when the extension is
    installed) on TimescaleDB, in the same run; print a table and the ratio for each."""
    backends = [False]
    missing = pgcluster.timescaledb_missing()
    if missing is None:
        backends.append(True)
    else:
        print(f"TimescaleDB not measured: {missing}")
    for timescaledb in backends:
        print(f"--- backend: {'TimescaleDB' if timescaledb else 'plain PostgreSQL'}", flush=True)
        _measure(timescaledb=timescaledb)


def _measure(*, timescaledb: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="kd-bench-gatherer-") as tmpdir:
        tmp = Path(tmpdir)
        with pgcluster.temporary_cluster(tmp / "pg", timescaledb=timescaledb) as cluster:
            dsn = cluster.create_database("gatherer")
            migrate(dsn, "gatherer")
            base = cluster.create_database("baseline")
            migrate(base, "gatherer")
            ceiling = cluster.create_database("ceiling")
            migrate(ceiling, "gatherer")
            bench = Bench(tmp, dsn)
            try:
                _run(bench, tmp, dsn, base)
            finally:
                bench.stop()
            n, secs = asyncio.run(_pipeline_ceiling(ceiling, tmp / "truth.jsonl"))
            stored = sum(
                _db_count(ceiling, f"SELECT count(*) FROM {t}")
                for t in ("orderbook_deltas", "trades")
            )
            print(
                f"gatherer code path without sockets (feed -> ingest -> writer -> DB, one "
                f"process): {n / secs:,.0f} frames/s ({n:,} frames, {stored:,} event rows)"
            )


def _run(bench: Bench, tmp: Path, dsn: str, base: str) -> None:
    info = bench.start_sim()
    admin = info["admin_url"].rstrip("/")
    port = pgcluster.free_port()
    bench.start_gatherer(info, port)
    gurl = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            _http(gurl + "/ready")
        except Exception:
            return False
        conns = _http(admin + "/connections")["connections"]
        placed = sum(
            s["markets"] or 0 for c in conns for s in c["sids"] if s["channel"] == "orderbook_delta"
        )
        health = _http(gurl + "/health")
        return placed > 0 and placed == health["components"]["markets"]

    _wait(ready, 120, "the gatherer to subscribe every market")
    print(
        f"{'target/s':>9} {'emitted/s':>10} {'recv/s':>9} {'drain s':>8} "
        f"{'missing':>8} {'covered':>8} {'extra':>6} {'gaps':>5}  "
        f"{'cpu: gatherer':>13} {'sim':>5} {'pg':>5}  verdict"
    )
    sim_pid, gatherer_pid = (p.pid for p in bench.procs[:2])
    best = 0.0
    for rate in STAGES:
        metrics = _http(gurl + "/metrics")
        before = _metric(metrics, "gatherer_messages_total")
        lines0 = _http(admin + "/truth_flush", {})["truth_lines"]
        _http(admin + "/rate", {"rate": rate})
        pg_pids = _postgres_pids()
        cpu0 = (_cpu_s([gatherer_pid]), _cpu_s([sim_pid]), _cpu_s(pg_pids))
        t0 = time.monotonic()
        _http(admin + "/resume", {})
        time.sleep(STAGE_S)
        _http(admin + "/pause", {})
        t1 = time.monotonic()
        emitted = _http(admin + "/truth_flush", {})["truth_lines"] - lines0
        last = [-1.0, 0.0]

        def drained(last: list[float] = last) -> bool:
            text = _http(gurl + "/metrics")
            total = _metric(text, "gatherer_messages_total")
            depth = _metric(text, "gatherer_queue_depth") + _metric(text, "gatherer_spool_bytes")
            if total == last[0] and depth == 0:
                last[1] += 1.0
            else:
                last[0], last[1] = total, 0.0
            return last[1] >= 3  # polls 0.5 s apart: stable across two metric refreshes

        _wait(drained, 300, "the gatherer to drain", every_s=0.5)
        t2 = time.monotonic() - 2.0  # the first of the stable polls
        cpu1 = (_cpu_s([gatherer_pid]), _cpu_s([sim_pid]), _cpu_s(pg_pids))
        busy = max(t2 - t0, t1 - t0)  # cores used while sending and draining
        cores = [(b - a) / busy for a, b in zip(cpu0, cpu1, strict=True)]
        received = last[0] - before
        report = compare(dsn, tmp / "truth.jsonl")
        # A market created and activated within milliseconds (the simulator's churn) can send
        # deltas before any subscription to it can exist; the gatherer records that as a
        # late_subscribe gap (the other gatherers cover it). Such rows are "covered", not lost.
        late = {
            str(m)
            for (m,) in _db_rows(
                dsn, "SELECT DISTINCT unnest(markets) FROM gaps WHERE how = 'late_subscribe'"
            )
        }
        covered = sum(
            n for ident, n in report["orderbook_deltas"].missing.items() if ident[0] in late
        )
        missing = sum(sum(d.missing.values()) for d in report.values()) - covered
        extra = sum(sum(d.extra.values()) for d in report.values())
        gaps = _db_count(dsn, NOT_LATE.format(cols="count(*)"))
        drain = max(0.0, t2 - t1)
        active = t1 - t0
        ok = missing == 0 and extra == 0 and gaps == 0 and drain <= MAX_DRAIN_S
        if ok:
            best = max(best, received / active)
        print(
            f"{rate:>9,} {emitted / active:>10,.0f} {received / max(t2 - t0, active):>9,.0f} "
            f"{drain:>8.1f} {missing:>8} {covered:>8} {extra:>6} {gaps:>5}  "
            f"{cores[0]:>13.2f} {cores[1]:>5.2f} {cores[2]:>5.2f}  "
            f"{'holds' if ok else 'FAILS'}",
            flush=True,
        )
        if not ok:
            time.sleep(5)
            again = compare(dsn, tmp / "truth.jsonl")
            print(f"  5 s later: missing {sum(sum(d.missing.values()) for d in again.values())}")
            cols = "state, channel, sid, how, expected, received, cardinality(markets)"
            for row in _db_rows(dsn, NOT_LATE.format(cols=cols)):
                print(f"  gap {row}")
            for name, d in report.items():
                if d.missing or d.extra:
                    print(f"  {name}: missing {list(d.missing)[:3]} extra {list(d.extra)[:3]}")
            break
    stored = _db_count(dsn, "SELECT count(*) FROM orderbook_deltas") + _db_count(
        dsn, "SELECT count(*) FROM trades"
    )
    rows, secs = asyncio.run(_copy_baseline(dsn, base))
    copy_rate = rows / secs
    print(f"gatherer, lossless and keeping up: {best:,.0f} msg/s ({stored:,} event rows stored)")
    print(f"baseline, same rows COPYed straight: {copy_rate:,.0f} rows/s ({rows:,} rows)")
    print(f"ratio gatherer / raw COPY: {best / copy_rate:.2f}")
    sim_log = (tmp / "sim.log").read_text()
    lag = re.findall(r"lag", sim_log)
    if lag:
        print(f"note: the simulator logged {len(lag)} lag lines (it may be the limit)")


if __name__ == "__main__":
    main()
