"""``python -m simulator`` as a real subprocess: the JSON line, SIGTERM, --duration, seeds."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator",
                "--workdir",
                str(tmp_path / f"w{len(procs)}"),
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "simulator printed nothing within 20 s"
        return proc, json.loads(proc.stdout.readline())

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_cli_prints_urls_and_stops_cleanly_on_sigterm(spawn, tmp_path: Path):
    """The first stdout line is the JSON with URLs and key; SIGTERM exits 0 with truth flushed."""
    truth = tmp_path / "truth.jsonl"
    proc, info = spawn("--truth", str(truth), "--rate", "2000", "--markets", "100", "--seed", "3")
    assert set(info) == {"rest_url", "ws_url", "admin_url", "key_id", "private_key_file"}
    assert info["ws_url"].startswith("ws://127.0.0.1:")
    assert info["ws_url"].endswith("/trade-api/ws/v2")
    assert Path(info["private_key_file"]).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert fetch(info["rest_url"] + "/exchange/status")["exchange_active"] is True
    deadline = time.monotonic() + 10
    while fetch(info["admin_url"] + "/stats")["events_total"] < 500:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    lines = truth.read_bytes().splitlines()
    assert len(lines) >= 500
    assert all(set(json.loads(line)) == {"type", "msg"} for line in lines)


def test_cli_duration_stops_by_itself(spawn):
    """--duration ends the process with exit code 0."""
    proc, _ = spawn("--duration", "0.5", "--markets", "50")
    assert proc.wait(15) == 0


def test_same_seed_same_catalogue_across_processes(spawn):
    """Two processes with one seed list the same markets; another seed lists others."""
    pages = []
    for seed in ("4", "4", "5"):
        proc, info = spawn("--seed", seed, "--markets", "60", "--rate", "0")
        pages.append(
            [m["ticker"] for m in fetch(info["rest_url"] + "/markets?limit=1000")["markets"]]
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    assert pages[0] == pages[1]
    assert pages[0] != pages[2]
    assert len(pages[0]) == 60


def test_bad_flags_exit_2(tmp_path: Path):
    """--key-id without --public-key is refused with exit code 2."""
    out = subprocess.run(
        [sys.executable, "-m", "simulator", "--key-id", "abc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "--key-id" in out.stderr
