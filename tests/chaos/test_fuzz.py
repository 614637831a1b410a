"""Fuzzing behind ``-m chaos``: 10^5 inputs per target, zero crashes (bench/fuzz.py)."""

from __future__ import annotations

import pytest

from bench import fuzz

pytestmark = pytest.mark.chaos


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_fuzz_target_never_crashes(target: str) -> None:
    stats = fuzz.TARGETS[target](100_000, 1)
    print(stats.line())
    assert stats.inputs == 100_000
    assert stats.accepted > 0
    assert stats.rejected > 0
    assert stats.crashes == 0, stats.crash_samples
