"""Ops tests: say at the end of the run which checks did not run for want of a tool."""

from __future__ import annotations

import pytest

from tests.ops.tools import MISSING


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A visible section naming every missing tool and why its checks were skipped."""
    if not MISSING:
        return
    terminalreporter.section("ops checks NOT run (missing tools)", sep="=", yellow=True)
    for name, reason in sorted(MISSING.items()):
        terminalreporter.write_line(f"{name}: {reason}")
