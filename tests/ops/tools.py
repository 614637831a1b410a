"""Helpers for the operations tests: find a real tool or skip with the reason, run it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
# Generous: the tools run on a shared, loaded machine (promtool test takes ~16 s of CPU).
TOOL_TIMEOUT_S = 300
#: Tool name -> reason, for every tool an ops test wanted and did not find (conftest.py prints
#: them at the end of the run, so a missing tool is never a silent skip).
MISSING: dict[str, str] = {}
#: Where a missing tool comes from (Debian has no terraform or cfn-lint package).
HOW_TO_INSTALL = {
    "terraform": "HashiCorp's release binary or apt repository",
    "cfn-lint": "pip install cfn-lint",
}


def skip_missing(name: str, reason: str) -> NoReturn:
    """Record a missing tool (for the run's summary) and skip the test with ``reason``."""
    MISSING[name] = reason
    pytest.skip(reason)


def require_tool(name: str, *extra_dirs: Path) -> str:
    """Path of ``name`` in ``extra_dirs`` or on PATH; skip the test when absent."""
    found = None
    for directory in extra_dirs:  # preferred over PATH (e.g. the project's .venv/bin)
        candidate = directory / name
        if found is None and candidate.is_file():
            found = str(candidate)
    found = found or shutil.which(name)
    if found is None:
        how = HOW_TO_INSTALL.get(name, "make pg installs the system tools")
        skip_missing(name, f"{name} is not installed, its checks did NOT run ({how})")
    return found


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion with a deadline; output captured as text."""
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )
