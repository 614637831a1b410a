"""Backoff, circuit breaker, token bucket and the retry loop, with an injected clock."""

from __future__ import annotations

import random
import statistics

import asyncpg
import pytest

from kalshi_data.errors import PermanentError, TransientError
from kalshi_data.resilience import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    ErrorClass,
    RetryPolicy,
    TokenBucket,
    classify,
    retry,
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_bounds_grow_then_cap() -> None:
    """Every delay lies in [0, min(cap, base * 2**attempt)]."""
    b = Backoff(0.1, 2.0, rng=random.Random(1))
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        d = b.next_delay()
        assert 0.0 <= d <= ceiling
    assert b.attempt == 12
    b.reset()
    assert b.ceiling() == 0.1


def test_full_jitter_spreads_delays() -> None:
    """Full jitter spreads retries across the whole window (no synchronised herd)."""
    delays = []
    for seed in range(2000):
        b = Backoff(1.0, 100.0, rng=random.Random(seed))
        for _ in range(3):
            b.next_delay()
        delays.append(b.next_delay())  # window [0, 8]
    assert min(delays) < 0.5
    assert max(delays) > 7.5
    assert 3.5 < statistics.mean(delays) < 4.5  # uniform on [0, 8]


def _state(br: CircuitBreaker) -> BreakerState:
    """The state, read through a function so type narrowing does not assume it is constant."""
    return br.state


def test_breaker_opens_half_opens_and_closes() -> None:
    """closed -> open at the threshold -> half-open after the timeout -> closed on success."""
    clock = FakeClock()
    br = CircuitBreaker("db", failure_threshold=3, reset_timeout_s=10, clock=clock)
    for _ in range(2):
        br.record_failure()
        assert _state(br) is BreakerState.CLOSED
    br.record_failure()
    assert _state(br) is BreakerState.OPEN
    assert not br.allow()
    clock.now += 9.9
    assert not br.allow()
    clock.now += 0.2
    assert _state(br) is BreakerState.HALF_OPEN
    assert br.allow()
    assert not br.allow()  # one probe at a time
    br.record_success()
    assert _state(br) is BreakerState.CLOSED
    assert br.opened_total == 1


def test_breaker_failed_probe_reopens_with_a_fresh_timer() -> None:
    """A failed half-open probe opens the breaker again for a whole timeout."""
    clock = FakeClock()
    br = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=5, clock=clock)
    br.record_failure()
    clock.now += 5
    assert br.allow()
    br.record_failure()
    assert _state(br) is BreakerState.OPEN
    assert br.seconds_until_probe() == pytest.approx(5)
    assert br.opened_total == 2


def test_token_bucket_refills_at_rate() -> None:
    """The bucket allows a burst of capacity, then `rate` tokens per second."""
    clock = FakeClock()
    tb = TokenBucket(rate_per_s=10, capacity=20, clock=clock)
    assert all(tb.try_acquire(10) for _ in range(2))
    assert not tb.try_acquire(10)
    assert tb.delay_for(10) == pytest.approx(1.0)
    clock.now += 1.0
    assert tb.try_acquire(10)


def test_classify_by_type() -> None:
    """Our own exception types and network errors are classified without message text."""
    assert classify(TransientError("x")) is ErrorClass.RETRYABLE
    assert classify(PermanentError("x")) is ErrorClass.PERMANENT
    assert classify(ConnectionResetError()) is ErrorClass.RETRYABLE
    assert classify(TimeoutError()) is ErrorClass.RETRYABLE
    assert classify(ValueError("connection reset")) is ErrorClass.PERMANENT
    no_writer = asyncpg.TargetServerAttributeNotMatched("no host is read-write")
    assert classify(no_writer) is ErrorClass.RETRYABLE  # mid-failover: nobody promoted yet
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ConnectionRefusedError()
    assert classify(wrapped) is ErrorClass.RETRYABLE


async def test_retry_stops_on_permanent_and_retries_transient() -> None:
    """The retry loop retries transient errors, re-raises permanent ones at once."""
    calls: list[int] = []
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("again")
        return "ok"

    result = await retry(flaky, policy=RetryPolicy(0.01, 0.1), name="flaky", sleep=sleep)
    assert result == "ok"
    assert len(calls) == 3
    assert len(slept) == 2

    async def broken() -> str:
        calls.append(1)
        raise PermanentError("bad credentials")

    calls.clear()
    with pytest.raises(PermanentError):
        await retry(broken, policy=RetryPolicy(), name="broken", sleep=sleep)
    assert len(calls) == 1


async def test_retry_gives_up_after_max_attempts_and_feeds_the_breaker() -> None:
    """max_attempts bounds the loop; each failure counts against the breaker."""
    clock = FakeClock()
    br = CircuitBreaker("x", failure_threshold=10, clock=clock)

    async def sleep(_d: float) -> None:
        return None

    async def always() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError):
        await retry(always, policy=RetryPolicy(max_attempts=4), name="x", breaker=br, sleep=sleep)
    assert br.failures == 4
