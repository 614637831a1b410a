"""The simulator's admin API (simulator/admin.py) over real HTTP on loopback: each request's
effect on the running simulator, and each refused request's status and message (the
connection- and subscription-level faults are exercised end to end in
tests/integration/test_simulator_ws.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulator import SimConfig, Simulator
from simulator.admin import AdminError, cutoff_us


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(seed=9, markets=5, rate=100, workdir=tmp_path)) as s:
        yield s


async def _post(
    sim: Simulator, name: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        kw: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with http.post(f"{sim.admin_url}/{name}", **kw) as resp:
            return resp.status, await resp.json()


def test_cutoff_us_reads_rfc3339_and_unix_seconds() -> None:
    assert cutoff_us(None) is None
    assert cutoff_us(1.5) == 1_500_000
    assert cutoff_us("1970-01-01T00:00:02Z") == 2_000_000
    assert cutoff_us("1970-01-01T00:00:03") == 3_000_000  # naive = UTC
    when = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert cutoff_us(when.isoformat()) == round(when.timestamp() * 1_000_000)
    for bad in (True, "yesterday", [1]):
        with pytest.raises(AdminError) as exc:
            cutoff_us(bad)
        assert exc.value.status == 400


async def test_pause_resume_rate_and_withhold_change_the_simulator(sim: Simulator) -> None:
    assert await _post(sim, "pause") == (200, {"ok": True})
    assert sim.stats()["paused"] is True
    assert await _post(sim, "resume") == (200, {"ok": True})
    assert sim.stats()["paused"] is False
    assert (await _post(sim, "rate", {"rate": 42.5}))[0] == 200
    assert sim.rate == 42.5
    assert await _post(sim, "withhold_trades", {"n": 3}) == (200, {"ok": True, "withholding": 3})
    assert sim.hub.withhold == 3


async def test_rest_faults_are_armed(sim: Simulator) -> None:
    assert (await _post(sim, "rest_faults", {"status": 429, "count": 2}))[0] == 200
    assert (await _post(sim, "rest_faults", {"status": 503}))[0] == 200
    faults = sim.rest.faults
    assert (faults.pending_429, faults.pending_5xx, faults.status_5xx) == (2, 1, 503)


async def test_historical_cutoff_moves(sim: Simulator) -> None:
    status, body = await _post(sim, "historical_cutoff", {"ts": 12})
    assert (status, body["historical_cutoff_us"]) == (200, 12_000_000)
    assert sim.rest.historical_cutoff_us == 12_000_000
    assert (await _post(sim, "historical_cutoff", {"ts": None}))[1]["historical_cutoff_us"] is None


async def test_truth_flush_and_listings_answer(sim: Simulator) -> None:
    status, body = await _post(sim, "truth_flush")
    assert (status, body["ok"]) == (200, True)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{sim.admin_url}/connections") as resp,
    ):
        assert (resp.status, await resp.json()) == (200, {"connections": []})


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("drop", {"mode": "explode"}, 400, "mode must be abort or close"),
        ("drop", {"conn": 999}, 404, "unknown connection"),
        ("skip_seq", {"conn": 999, "sid": 1}, 404, "unknown connection"),
        ("skip_seq", {"conn": "one", "sid": 1}, 400, "conn must be an integer"),
        ("malformed", {"kind": "nonsense"}, 400, "kind must be one of"),
        ("sub_error", {"code": 11}, 400, "code must be 10 or 25"),
        ("command_error", {"code": 12}, 400, "code must be 18 or 27"),
        ("pings", {"conn": 999}, 404, "unknown connection"),
        ("rest_faults", {"status": 404}, 400, "status must be 429, 500"),
        ("rest_faults", {"status": True}, 400, "status must be an integer"),
        ("rate", {"rate": -1}, 400, "rate must be a non-negative number"),
        ("withhold_trades", {"n": 0}, 400, "n must be >= 1"),
        ("historical_cutoff", {}, 400, "ts is required"),
        ("historical_cutoff", {"ts": "soon"}, 400, "ts must be RFC 3339"),
    ],
)
async def test_refused_requests_say_why(
    sim: Simulator, name: str, body: dict[str, Any], status: int, message: str
) -> None:
    before = sim.stats()
    got_status, got = await _post(sim, name, body)
    assert got_status == status
    assert got["ok"] is False
    assert message in got["error"]
    after = sim.stats()
    assert (after["rate"], after["paused"], sim.hub.withhold) == (
        before["rate"],
        before["paused"],
        0,
    )


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]"])
async def test_body_must_be_a_json_object(sim: Simulator, raw: bytes) -> None:
    assert await _post(sim, "rate", raw=raw) == (
        400,
        {"ok": False, "error": "body must be a JSON object"},
    )
