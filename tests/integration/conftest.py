"""Shared fixtures of the integration tests.

asyncio's reports of lost work (an exception nobody retrieved, a task destroyed while pending,
a coroutine never awaited) fail the test for every suite: tests/loopguard.py.
"""

from __future__ import annotations
