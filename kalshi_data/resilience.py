"""One of each resilience primitive for the whole project (reliability-notes §3, §4).

- :func:`classify`: retryable or permanent, by SQLSTATE and exception type, never message text;
- :class:`Backoff`: capped exponential backoff with Full Jitter (AWS, Brooker 2015);
- :class:`CircuitBreaker`: closed → open after N failures → half-open probe → closed;
- :class:`TokenBucket`: request budgets (Kalshi's read limit, REST snapshot polling);
- :func:`retry`: the one retry loop, combining the three.

Every time decision takes an injectable monotonic clock; :func:`set_testing` zeroes backoff.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from kalshi_data.errors import PermanentError, TransientError

T = TypeVar("T")
Clock = Callable[[], float]

_TESTING = False


class ErrorClass(enum.Enum):
    """What to do about an error."""

    RETRYABLE = "retryable"
    PERMANENT = "permanent"


#: SQLSTATEs worth retrying: connection loss, shutdowns, serialization, read-only after a
#: failover (25006), resource exhaustion, lock timeouts, statement timeouts, idle timeouts.
RETRYABLE_SQLSTATES = frozenset(
    {"57P01", "57P02", "57P03", "40001", "40P01", "25006", "55P03", "57014", "25P03", "57P05"}
)
RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "53"})
#: 08P01 (protocol violation) is in class 08 but is a bug, not a passing fault.
PERMANENT_SQLSTATES = frozenset({"08P01"})


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _classify_one(exc: BaseException) -> ErrorClass | None:
    """A verdict for this exception alone, or None when it carries no information."""
    if isinstance(exc, PermanentError):
        return ErrorClass.PERMANENT
    if isinstance(exc, TransientError):
        return ErrorClass.RETRYABLE
    state = _sqlstate(exc)
    if state is not None:
        if state in PERMANENT_SQLSTATES:
            return ErrorClass.PERMANENT
        if state in RETRYABLE_SQLSTATES or state[:2] in RETRYABLE_SQLSTATE_CLASSES:
            return ErrorClass.RETRYABLE
        return ErrorClass.PERMANENT
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, EOFError)):
        return ErrorClass.RETRYABLE
    name = type(exc).__name__
    module = type(exc).__module__
    if module.startswith("asyncpg") and name in {
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "ConnectionFailureError",
        # No host of a multi-host DSN is writable yet: the middle of a failover.
        "TargetServerAttributeNotMatched",
    }:
        return ErrorClass.RETRYABLE
    if module.startswith("psycopg") and name in {"OperationalError", "InterfaceError"}:
        # No SQLSTATE: the connection broke (reset, EOF, refused). NOTE: psycopg also reports a
        # wrong password at connect time without a SQLSTATE; services therefore connect with
        # asyncpg, which reports 28P01/3D000, and only the one-shot CLI tools use psycopg.
        return ErrorClass.RETRYABLE
    if module.startswith("aiohttp") and name in {
        "ClientConnectionError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ClientOSError",
        "ServerTimeoutError",
        "ConnectionTimeoutError",
        "SocketTimeoutError",
        "ClientConnectionResetError",
    }:
        return ErrorClass.RETRYABLE
    if module.startswith("websockets") and name.startswith(
        ("ConnectionClosed", "InvalidStatus", "InvalidHandshake", "InvalidMessage")
    ):
        return ErrorClass.RETRYABLE
    return None


def classify(exc: BaseException) -> ErrorClass:
    """Retryable or permanent: SQLSTATE first, then the exception's type, then its cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _classify_one(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return ErrorClass.PERMANENT


def set_testing(enabled: bool) -> None:
    """Zero every backoff delay (tests that exercise retry paths without waiting)."""
    global _TESTING
    _TESTING = enabled


class Backoff:
    """Capped exponential backoff with Full Jitter: ``uniform(0, min(cap, base * 2**attempt))``."""

    def __init__(
        self, base_s: float = 0.1, cap_s: float = 30.0, *, rng: random.Random | None = None
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return float(min(self.cap_s, self.base_s * float(2 ** min(self.attempt, 62))))

    def next_delay(self) -> float:
        """The delay before the next attempt (then the attempt count grows)."""
        ceiling = self.ceiling()
        self.attempt += 1
        if _TESTING:
            return 0.0
        return float(self._rng.uniform(0.0, ceiling))

    def reset(self) -> None:
        """Back to the first attempt (after a success)."""
        self.attempt = 0


class BreakerState(enum.Enum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stop hammering a dependency that keeps failing; probe it now and then.

    CLOSED counts consecutive failures and opens at ``failure_threshold``. OPEN refuses until
    ``reset_timeout_s`` has passed, then turns HALF_OPEN and allows one probe at a time: a success
    closes it, a failure opens it again with a fresh timer.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self.failures = 0
        self.opened_total = 0

    @property
    def state(self) -> BreakerState:
        """The state now (OPEN becomes HALF_OPEN once the timeout has elapsed)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_timeout_s
        ):
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        return self._state

    def allow(self) -> bool:
        """May a call go through now?"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        """A call succeeded: close."""
        self._state = BreakerState.CLOSED
        self._probing = False
        self.failures = 0

    def record_failure(self) -> None:
        """A call failed: count, and open at the threshold (or at once when half-open)."""
        self.failures += 1
        state = self.state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self.failures >= self.failure_threshold
        ):
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probing = False
            self.opened_total += 1

    def seconds_until_probe(self) -> float:
        """How long until a probe is allowed (0 when calls may go through)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))


class TokenBucket:
    """A token bucket: ``rate_per_s`` tokens refill per second up to ``capacity``."""

    def __init__(
        self, rate_per_s: float, capacity: float, *, clock: Clock = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("token bucket needs a positive rate and capacity")
        self.rate = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available now."""
        self._refill()
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def delay_for(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available (0 when they are now)."""
        self._refill()
        return max(0.0, (cost - self._tokens) / self.rate)

    async def acquire(self, cost: float = 1.0) -> None:
        """Wait until ``cost`` tokens are available, then take them."""
        if cost > self.capacity:
            raise ValueError(f"cost {cost} exceeds the bucket capacity {self.capacity}")
        while not self.try_acquire(cost):  # noqa: ASYNC110 (waiting for refill time, not an event)
            await asyncio.sleep(self.delay_for(cost))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How :func:`retry` retries: backoff bounds, and when to give up (None = never)."""

    base_s: float = 0.1
    cap_s: float = 30.0
    max_attempts: int | None = None
    deadline_s: float | None = None


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    name: str,
    breaker: CircuitBreaker | None = None,
    classify_fn: Callable[[BaseException], ErrorClass] = classify,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> T:
    """Run ``op`` until it succeeds, a permanent error occurs, or the policy gives up.

    ``name`` identifies the operation in callbacks and logs. Cancellation always propagates.
    """
    backoff = Backoff(policy.base_s, policy.cap_s)
    started = clock()
    attempt = 0
    while True:
        if breaker is not None and not breaker.allow():
            await sleep(max(breaker.seconds_until_probe(), 0.01 if not _TESTING else 0.0))
            continue
        attempt += 1
        try:
            result = await op()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if classify_fn(exc) is ErrorClass.PERMANENT:
                raise
            if breaker is not None:
                breaker.record_failure()
            if policy.max_attempts is not None and attempt >= policy.max_attempts:
                raise
            delay = backoff.next_delay()
            if policy.deadline_s is not None and clock() - started + delay > policy.deadline_s:
                raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await sleep(delay)
            continue
        if breaker is not None:
            breaker.record_success()
        return result
