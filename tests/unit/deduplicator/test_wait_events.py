"""sync.wait_events: the claim and wake waits never leave a waiter task behind."""

from __future__ import annotations

import asyncio

import pytest

from deduplicator.sync import wait_events


def _waiters() -> set[asyncio.Task[object]]:
    me = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not me and not t.done()}


async def _settle() -> None:
    for _ in range(3):  # cancelled tasks finish on the next loop iterations
        await asyncio.sleep(0)


async def test_first_returns_on_any_event_and_cancels_the_rest() -> None:
    a, b = asyncio.Event(), asyncio.Event()
    a.set()
    await asyncio.wait_for(wait_events([a, b], 60.0, first=True), timeout=5.0)
    await _settle()
    assert _waiters() == set()


async def test_all_waits_for_every_event() -> None:
    a, b = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(wait_events([a, b], 60.0))
    a.set()
    await _settle()
    assert not task.done()
    b.set()
    await asyncio.wait_for(task, timeout=5.0)
    await _settle()
    assert _waiters() == set()


async def test_timeout_and_cancellation_leave_no_waiter() -> None:
    never = asyncio.Event()
    await wait_events([never], 0.01)
    await _settle()
    assert _waiters() == set()
    task = asyncio.create_task(wait_events([never, asyncio.Event()], 60.0))
    await _settle()
    assert len(_waiters()) == 3  # the wait and its two waiters
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _settle()
    assert _waiters() == set()
