"""The loop guard (tests/loopguard.py) fails a test that leaks, on every kind of loop.

Run in a pytest of its own (pytester, in a subprocess, so that the leaks of the inner run
reach neither this run's guard nor its loggers), configured with this project's own
``filterwarnings`` and ``asyncio_mode`` from pyproject.toml.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

LEAKS = '''
import asyncio
import threading

import uvloop


async def boom():
    raise ValueError("lost-in-task")


async def test_task_exception_never_retrieved():
    asyncio.ensure_future(boom())
    await asyncio.sleep(0.01)


async def test_future_exception_never_retrieved():
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(KeyError("lost-in-future"))
    del fut


def test_coroutine_never_awaited():
    boom()


def test_coroutine_in_a_cycle_never_awaited():
    """Freed only by the collector: the guard's collection at teardown reports it here."""
    cycle = {"coro": boom()}
    cycle["self"] = cycle


def test_asyncio_run_in_thread():
    async def main():
        asyncio.ensure_future(boom())
        await asyncio.sleep(0.01)

    t = threading.Thread(target=asyncio.run, args=(main(),), name="leaky-thread")
    t.start()
    t.join()


def test_uvloop_run():
    async def main():
        asyncio.ensure_future(boom())
        await asyncio.sleep(0.01)

    uvloop.run(main())


def test_silenced_logger_still_caught():
    import logging

    logging.getLogger("asyncio").disabled = True

    async def main():
        asyncio.ensure_future(boom())
        await asyncio.sleep(0.01)

    asyncio.run(main())


async def test_clean():
    task = asyncio.ensure_future(boom())
    with __import__("pytest").raises(ValueError):
        await task


def test_own_handler_takes_it():
    seen = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda _l, c: seen.append(c))
        asyncio.ensure_future(boom())
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert "never retrieved" in seen[0]["message"]
'''


def _project_ini() -> str:
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    lines = "\n".join(f"    {w!r}," for w in opts["filterwarnings"])
    return (
        "[tool.pytest.ini_options]\n"
        f"asyncio_mode = {opts['asyncio_mode']!r}\n"
        "asyncio_default_fixture_loop_scope = 'function'\n"
        f"filterwarnings = [\n{lines}\n]\n"
    )


def test_guard_fails_each_leaking_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makefile(".toml", pyproject=_project_ini())
    pytester.makeconftest('pytest_plugins = ["tests.loopguard"]\n')
    pytester.makepyfile(test_leaks=LEAKS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    # An unawaited coroutine freed at once fails its phase (pytest's unraisable check) ...
    assert "FAILED test_leaks.py::test_coroutine_never_awaited - " in out, out
    # ... every other leaking test passes its body and errors at teardown.
    assert outcomes.get("failed") == 1, out
    assert outcomes.get("passed") == 8, out
    assert outcomes.get("errors") == 6, out
    for name in (
        "test_task_exception_never_retrieved",
        "test_future_exception_never_retrieved",
        "test_coroutine_in_a_cycle_never_awaited",
        "test_asyncio_run_in_thread",
        "test_uvloop_run",
        "test_silenced_logger_still_caught",
    ):
        assert f"ERROR test_leaks.py::{name} " in out, out
    for name in ("test_clean", "test_own_handler_takes_it"):
        assert f"PASSED test_leaks.py::{name}" in out, out
        assert f"ERROR test_leaks.py::{name} " not in out, out
    assert "lost-in-task" in out
    assert "lost-in-future" in out
    assert "was never awaited" in out
    assert "[thread leaky-thread]" in out
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_guard_passes_a_clean_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: without leaks the same configuration passes (the guard is not what fails)."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makefile(".toml", pyproject=_project_ini())
    pytester.makeconftest('pytest_plugins = ["tests.loopguard"]\n')
    pytester.makepyfile(
        test_ok="import asyncio\n\nasync def test_ok():\n    await asyncio.sleep(0)\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
