"""The gatherer as a real process: SIGTERM mid-burst loses nothing; bad config and unsafe DBs."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from pathlib import Path

import orjson

from kalshi_data.testing.pgcluster import free_port
from kalshi_data.testing.truth import compare
from kalshi_data.tools.users import create_user
from tests.integration.gatherer_support import (
    config_data,
    gatherer_process,
    query,
    simulator,
    wait_for,
    write_config,
)


def writer_dsn(superuser_dsn: str) -> str:
    """A least-privilege login (kd_gatherer_writer member) for the same database."""
    password = secrets.token_hex(12)
    user = f"gw_{secrets.token_hex(4)}"
    create_user(superuser_dsn, "gatherer_writer", user, password)
    head, _, tail = superuser_dsn.partition("@")
    scheme = head.split("//", 1)[0]
    return f"{scheme}//{user}:{password}@{tail}"


def log_records(path: Path) -> list[dict[str, object]]:
    """The JSON log lines of a gatherer process."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


def sim_subscribed(sim, markets: set[str]) -> bool:
    """The exchange sees every open market in some order-book subscription, plus the firehose."""
    placed: list[str] = []
    channels = set()
    for conn in sim.ws.connections.values():
        for sub in conn.session.subs.values():
            channels.add(sub.channel)
            if sub.channel == "orderbook_delta" and sub.tickers:
                placed.extend(sub.tickers)
    return (
        {"trade", "ticker", "market_lifecycle_v2"} <= channels
        and set(placed) == markets
        and len(placed) == len(markets)
    )


async def test_sigterm_mid_burst_loses_nothing(gatherer_dsn, tmp_path):
    """SIGTERM during a burst: exit 0, and the DB holds exactly what the process received."""
    dsn = gatherer_dsn
    port = free_port()
    async with simulator(tmp_path, rate=4000.0, markets=40, lifecycle_share=0.0) as sim:
        data = config_data(sim, writer_dsn(dsn), tmp_path, http={"listen": f"127.0.0.1:{port}"})
        cfg = write_config(tmp_path / "g.yaml", data)
        log = tmp_path / "gatherer.log"
        open_markets = {
            m.ticker for m in sim.exchange.market_list if m.status_filter in {"open", "unopened"}
        }
        with gatherer_process(cfg, log) as proc:
            await wait_for(lambda: sim_subscribed(sim, open_markets), 60, "subscriptions")
            sim.resume()
            await wait_for(lambda: sim.truth_lines >= 8000, 30, "a burst")
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 60)
            sim.pause()
            sim.truth_flush()
        assert code == 0, log.read_text()[-3000:]
    records = log_records(log)
    final = [r for r in records if "rows_received" in r]
    assert final, "no final log line"
    received = final[-1]["rows_received"]
    assert isinstance(received, dict)
    for table in ("trades", "orderbook_deltas"):  # events: every row received is a row stored
        n = query(dsn, f"SELECT count(*) FROM {table}")[0][0]
        assert n == received.get(table, 0), (table, n, received)
    for table in ("tickers", "orderbook_snapshots"):  # states: identical ones are one fact
        n = query(dsn, f"SELECT count(*) FROM {table}")[0][0]
        assert 0 < n <= received.get(table, 0), (table, n, received)
    assert received["orderbook_deltas"] > 1000
    report = compare(dsn, tmp_path / "truth.jsonl")
    for table, diff in report.items():
        assert not diff.extra, (table, diff.extra)
    # The trade stream is one subscription without gaps: the DB holds a prefix of the truth.
    truth_trades = [
        orjson.loads(line)["msg"]["trade_id"]
        for line in (tmp_path / "truth.jsonl").read_bytes().splitlines()
        if b'"type":"trade"' in line
    ]
    got = {str(r[0]) for r in query(dsn, "SELECT trade_id FROM trades")}
    assert got == set(truth_trades[: len(got)])
    assert len(got) < len(truth_trades), "the burst should outlast the gatherer"
    assert not any(r.get("level") == "ERROR" for r in records), [
        r for r in records if r.get("level") == "ERROR"
    ]


def test_bad_config_exits_2_naming_the_key(tmp_path):
    """A bad value exits with status 2 and a message naming the key."""
    cfg = tmp_path / "bad.yaml"
    data = {
        "gatherer_id": "g1",
        "kalshi": {
            "rest_url": "http://127.0.0.1:1/trade-api/v2",
            "ws_url": "ws://127.0.0.1:1/trade-api/ws/v2",
            "key_id": "k",
            "private_key_file": str(tmp_path / "missing.pem"),
        },
        "database": {"dsn": "postgresql:///nowhere"},
        "spool_dir": str(tmp_path / "spool"),
        "connections": 0,
    }
    write_config(cfg, data)
    with gatherer_process(cfg, tmp_path / "log") as proc:
        assert proc.wait(60) == 2
    assert "'connections'" in (tmp_path / "log").read_text()
    data["connections"] = 1
    write_config(cfg, data)
    with gatherer_process(cfg, tmp_path / "log") as proc:
        assert proc.wait(60) == 2
    assert "'kalshi.private_key_file'" in (tmp_path / "log").read_text()


async def test_refuses_timescaledb_without_preload(gatherer_dsn, tmp_path):
    """Extension installed but not preloaded (DESIGN §3a): exit 1 before writing anything."""
    dsn = gatherer_dsn
    # TimescaleDB is not installable here: make the definer function report that state.
    query(
        dsn,
        "CREATE OR REPLACE FUNCTION kd_timescale_status(OUT installed boolean,"
        " OUT preloaded boolean) LANGUAGE sql AS $$ SELECT true, false $$",
    )
    async with simulator(tmp_path, markets=5) as sim:
        cfg = write_config(tmp_path / "g.yaml", config_data(sim, dsn, tmp_path))
        with gatherer_process(cfg, tmp_path / "log") as proc:
            code = await asyncio.to_thread(proc.wait, 60)
    assert code == 1
    text = (tmp_path / "log").read_text()
    assert "shared_preload_libraries" in text
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    assert any(x["level"] == "ERROR" for x in lines)
    assert query(dsn, "SELECT count(*) FROM markets")[0][0] == 0
