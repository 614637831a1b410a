"""Loop guard: asyncio's reports of lost work fail the test that lost it.

asyncio reports a Task or Future whose exception nobody retrieved, a task destroyed while
pending, and an exception in a callback through the loop's exception handler
(``call_exception_handler``); when no handler is set, the default one writes the report to the
``asyncio`` logger at ERROR, and uvloop's loop does the same. A coroutine never awaited is a
``RuntimeWarning`` from its finaliser: ``filterwarnings`` in pyproject makes it an error, which
Python hands to ``sys.unraisablehook``, and pytest's unraisable-exception plugin turns that into
a failing ``PytestUnraisableExceptionWarning``.

This plugin (loaded from tests/conftest.py) covers every loop a test can make:

* it installs an event-loop policy whose loops get an exception handler that records the
  context and then reports as usual, so loops made by pytest-asyncio, ``asyncio.run`` (in any
  thread) and ``asyncio.new_event_loop`` are recorded even if a test silences the logger;
* it listens on the ``asyncio`` logger for the reports of loops the policy did not make (uvloop,
  ``asyncio.Runner(loop_factory=...)``), whichever thread they run in;
* it collects garbage as each test's fixtures are torn down, so that a Task, Future or
  coroutine leaked in this test is reported in this test (before pytest's unraisable check of
  the phase), and fails the teardown naming each report.

A test that deliberately provokes such a report must catch it with its own exception handler
on its loop (as tests/integration/test_dedup_failover.py does), which replaces the guard's.
Reports made outside any test (at collection, or after the last teardown) fail the session.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Generator
from typing import Any

import pytest

_ASYNCIO_LOGGER = "asyncio"


class Reports:
    """Everything asyncio reported since the last check, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[str] = []
        self._in_handler = threading.local()

    def add(self, text: str) -> None:
        with self._lock:
            self._items.append(text)

    def take(self) -> list[str]:
        with self._lock:
            items, self._items = self._items, []
        return items

    def recording(self) -> bool:
        """True while the policy's handler reports through the logger (already recorded)."""
        return bool(getattr(self._in_handler, "on", False))

    def set_recording(self, on: bool) -> None:
        self._in_handler.on = on


def describe_context(context: dict[str, Any]) -> str:
    """One line per report: asyncio's message, the object and the exception."""
    parts = [str(context.get("message", "asyncio error"))]
    for key in ("future", "task", "handle"):
        if context.get(key) is not None:
            parts.append(f"{key}: {context[key]!r}")
    if context.get("exception") is not None:
        parts.append(f"exception: {context['exception']!r}")
    return "; ".join(parts)


class _LogListener(logging.Handler):
    def __init__(self, reports: Reports) -> None:
        super().__init__(logging.ERROR)
        self.reports = reports

    def emit(self, record: logging.LogRecord) -> None:
        if self.reports.recording():
            return
        text = record.getMessage().replace("\n", "; ")
        if record.exc_info and record.exc_info[1] is not None:
            text += f"; exception: {record.exc_info[1]!r}"
        self.reports.add(f"{text} [thread {record.threadName}]")


class GuardPolicy(asyncio.DefaultEventLoopPolicy):
    """The default policy, whose new loops record every report to ``reports``."""

    def __init__(self, reports: Reports) -> None:
        super().__init__()
        self.reports = reports

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.set_exception_handler(self._handle)
        return loop

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.reports.add(f"{describe_context(context)} [thread {threading.current_thread().name}]")
        self.reports.set_recording(True)
        try:
            loop.default_exception_handler(context)
        finally:
            self.reports.set_recording(False)


@pytest.fixture(autouse=True)
def _loopguard_collect() -> Generator[None, None, None]:
    """The first function-scoped fixture of every test, so torn down after all the others and
    before pytest's unraisable check of the teardown phase: whatever this test left
    unreachable (a coroutine never awaited in a reference cycle, a Task holding its own
    traceback) is finalised now, so its report, or its unraisable warning, lands here."""
    yield
    gc.collect()


class _Check:
    """Fails the teardown, after every other teardown step, naming each report (collecting
    once more for what module- and session-scoped fixtures left as they were torn down)."""

    def __init__(self, reports: Reports) -> None:
        self.reports = reports

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            gc.collect()
            reports = self.reports.take()
            if reports:
                pytest.fail(
                    "asyncio reported lost work in this test:\n"
                    + "\n".join(f"  {r}" for r in dict.fromkeys(reports)),
                    pytrace=False,
                )


_reports_key = pytest.StashKey[Reports]()
_state_key = pytest.StashKey[tuple[asyncio.AbstractEventLoopPolicy, _LogListener]]()


def pytest_configure(config: pytest.Config) -> None:
    reports = Reports()
    config.stash[_reports_key] = reports
    listener = _LogListener(reports)
    logging.getLogger(_ASYNCIO_LOGGER).addHandler(listener)
    config.stash[_state_key] = (asyncio.get_event_loop_policy(), listener)
    asyncio.set_event_loop_policy(GuardPolicy(reports))
    config.pluginmanager.register(_Check(reports), "loopguard-check")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _state_key not in config.stash:
        return
    previous, listener = config.stash[_state_key]
    gc.unfreeze()  # pytest's last unraisable check collects everything
    asyncio.set_event_loop_policy(previous)
    logging.getLogger(_ASYNCIO_LOGGER).removeHandler(listener)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported lives for the session: moved out of the collector's sight, so
    the per-test collections cost what the test made, not a full heap (about 250 ms on a
    loaded machine, twice per test, otherwise). Garbage made so far is collected first."""
    gc.collect()
    gc.freeze()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test's logging setup may disable the ``asyncio`` logger or raise its level (as
    ``logging.config.dictConfig`` does to existing loggers): asyncio's reports are never to
    be silenced under test, so the guard undoes that before each test."""
    logger = logging.getLogger(_ASYNCIO_LOGGER)
    logger.disabled = False
    if logger.getEffectiveLevel() > logging.ERROR:
        logger.setLevel(logging.ERROR)
    _, listener = item.config.stash[_state_key]
    if listener not in logger.handlers:
        logger.addHandler(listener)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Reports made outside any test (at collection, or after the last teardown)."""
    gc.collect()
    reports = session.config.stash[_reports_key].take()
    if reports:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_sep("!", "asyncio reported lost work outside any test")
            for r in dict.fromkeys(reports):
                tr.write_line(f"  {r}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
