"""Integration-test guard: a Future or Task whose exception nobody retrieved fails the test.

asyncio reports such an object when it is garbage-collected, through the running loop's
exception handler (``call_exception_handler``), whose default writes to the ``asyncio``
logger; uvloop does the same. The fixture installs an exception handler on the loop of async
tests, listens on the ``asyncio`` logger for everything else (loops of sync tests, objects
collected after their loop ended), collects garbage at teardown so that what leaked in this
test is reported in this test, and fails it naming the object. Subprocesses are checked by the
tests themselves, in their logs (tests/integration/test_dedup_failover.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from typing import Any

import pytest

#: What asyncio says about an exception nobody retrieved, or a task dropped while pending.
LOST = ("exception was never retrieved", "Task was destroyed but it is pending")


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lost: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(s in text for s in LOST):
            self.lost.append(
                text.splitlines()[0] + f" ({record.exc_info and record.exc_info[1]!r})"
            )


def _install_on_running_loop(collector: _Collector) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if any(s in message for s in LOST):
            collector.lost.append(f"{message}: {context.get('exception')!r}")
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)


@pytest.fixture(autouse=True)
def _no_lost_exceptions(request: pytest.FixtureRequest) -> Iterator[_Collector]:
    """Fail the test if asyncio reports an exception that was never retrieved."""
    collector = _Collector()
    logger = logging.getLogger("asyncio")
    logger.addHandler(collector)
    try:
        yield collector
        gc.collect()
    finally:
        logger.removeHandler(collector)
    # The loop's own handler may have reported the same object through the logger as well.
    lost = sorted(set(collector.lost))
    if lost:
        pytest.fail("asyncio lost exceptions in this test:\n" + "\n".join(lost), pytrace=False)


@pytest.fixture(autouse=True)
async def _loop_exception_handler(_no_lost_exceptions: _Collector) -> None:
    """On the loop of async tests, collect through the loop's exception handler too."""
    _install_on_running_loop(_no_lost_exceptions)
