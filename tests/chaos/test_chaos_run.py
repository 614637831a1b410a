"""A short ``kalshi-data chaos`` schedule of every fault kind, ending in the truth verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos


@pytest.mark.timeout(900)
def test_short_chaos_schedule_loses_and_doubles_nothing(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    duration = os.environ.get("KALSHI_DATA_CHAOS_DURATION", "180")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kalshi_data.cli",
            "chaos",
            "--seed",
            "14",
            "--duration",
            duration,
            "--rate",
            "1000",
            "--faults-per-minute",
            "20",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(figures),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    print(proc.stderr[-6000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(figures.read_text())
    assert out["exact"] is True
    assert out["faults_total"] >= 20
    assert out["kinds"] >= 8
    for table, _truth, _prod, missing, invented, doubled in out["verdict"]:
        assert (missing, invented, doubled) == (0, 0, 0), table
