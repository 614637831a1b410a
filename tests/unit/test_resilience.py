"""Classification, backoff, circuit breaker, token bucket and the retry loop (injected clock)."""

from __future__ import annotations

import asyncio
import random
import ssl
import statistics
from collections.abc import Iterator

import aiohttp
import asyncpg
import psycopg
import psycopg.errors
import pytest
import websockets.datastructures
import websockets.exceptions
import websockets.frames
import websockets.http11

from kalshi_data.errors import CircuitOpenError, PermanentError, TransientError
from kalshi_data.resilience import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    ErrorClass,
    RetryPolicy,
    TokenBucket,
    classify,
    is_testing,
    retry,
    set_testing,
)

R, P = ErrorClass.RETRYABLE, ErrorClass.PERMANENT


class FakeClock:
    """A monotonic clock the test moves by hand; `sleep` advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def testing_mode() -> Iterator[None]:
    set_testing(True)
    try:
        yield
    finally:
        set_testing(False)


# ------------------------------------------------------------------------------ classify
RETRYABLE_STATES = [
    "08000", "08003", "08006", "08001", "08004", "08007", "57P01", "57P02", "57P03", "40001",
    "40P01", "25006", "53300", "53100", "53200", "55P03", "57014", "25P03", "57P05",
]  # fmt: skip
PERMANENT_STATES = [
    "28P01", "28000", "3D000", "42601", "42P01", "42501", "22003", "23505", "0A000", "XX000",
    "08P01", "P0001", "54000",
]  # fmt: skip


@pytest.mark.parametrize("state", RETRYABLE_STATES)
def test_retryable_sqlstates_asyncpg_and_psycopg(state: str) -> None:
    """Failover, shutdown, serialization and exhaustion SQLSTATEs retry, from both drivers."""
    assert classify(asyncpg.PostgresError.new({"C": state, "M": "x"})) is R
    assert classify(psycopg.errors.lookup(state)()) is R


@pytest.mark.parametrize("state", PERMANENT_STATES)
def test_permanent_sqlstates_asyncpg_and_psycopg(state: str) -> None:
    """Auth, catalog, syntax, data, integrity and protocol SQLSTATEs fail fast."""
    assert classify(asyncpg.PostgresError.new({"C": state, "M": "x"})) is P
    assert classify(psycopg.errors.lookup(state)()) is P


def test_psycopg_class_is_a_trap() -> None:
    """psycopg files 25006 under InternalError and 28P01 under OperationalError: SQLSTATE wins."""
    read_only = psycopg.errors.lookup("25006")()
    bad_password = psycopg.errors.lookup("28P01")()
    assert isinstance(read_only, psycopg.InternalError)
    assert isinstance(bad_password, psycopg.OperationalError)
    assert classify(read_only) is R
    assert classify(bad_password) is P
    assert classify(psycopg.OperationalError("the connection is closed")) is R  # no SQLSTATE


def test_classify_by_type_never_by_text() -> None:
    """Our own types and network errors are classified by type; message text is ignored."""
    assert classify(TransientError("x", component="ws")) is R
    assert classify(PermanentError("connection reset")) is P
    assert classify(ConnectionResetError()) is R
    assert classify(ConnectionRefusedError()) is R
    assert classify(TimeoutError()) is R
    assert classify(OSError(101, "network unreachable")) is R
    assert classify(ValueError("connection reset")) is P
    assert classify(RuntimeError("57P01 timeout")) is P
    assert classify(FileNotFoundError(2, "no such file")) is P
    assert classify(ssl.SSLCertVerificationError("bad cert")) is P


def test_classify_driver_types() -> None:
    """asyncpg closed-connection, client-state and failover errors retry; client misuse does not."""
    assert classify(asyncpg.InterfaceError("connection is closed")) is R
    assert classify(asyncpg.exceptions.ConnectionDoesNotExistError("gone")) is R
    assert classify(asyncpg.TargetServerAttributeNotMatched("no writer yet")) is R
    assert classify(asyncpg.exceptions.DataError("bad argument")) is P
    # Client-side protocol state after a connection loss (issue 16): retry on a fresh
    # connection; with a permanent error behind it, that error decides.
    assert classify(asyncpg.exceptions.InternalClientError("cannot switch to state 15")) is R
    behind = asyncpg.exceptions.InternalClientError("cannot switch to state 15")
    behind.__context__ = asyncpg.exceptions.UndefinedTableError("no such table")
    assert classify(behind) is P


def test_classify_aiohttp() -> None:
    """aiohttp connection drops, truncated bodies and 5xx/429 retry; 4xx and pinning do not."""
    assert classify(aiohttp.ServerDisconnectedError()) is R
    assert classify(aiohttp.ClientConnectionError()) is R
    assert classify(aiohttp.ClientPayloadError()) is R
    assert classify(aiohttp.ServerFingerprintMismatch(b"a", b"b", "h", 443)) is P

    def response_error(status: int) -> aiohttp.ClientResponseError:
        return aiohttp.ClientResponseError(None, (), status=status)  # type: ignore[arg-type]

    assert classify(response_error(503)) is R
    assert classify(response_error(429)) is R
    assert classify(response_error(401)) is P
    assert classify(response_error(404)) is P


def test_classify_websockets() -> None:
    """A closed WebSocket retries; a refused upgrade retries only for 5xx/429."""
    close = websockets.frames.Close(1006, "")
    assert classify(websockets.exceptions.ConnectionClosedError(close, None)) is R
    assert classify(websockets.exceptions.ConnectionClosedOK(close, None)) is R

    def refused(status: int) -> websockets.exceptions.InvalidStatus:
        headers = websockets.datastructures.Headers()
        return websockets.exceptions.InvalidStatus(websockets.http11.Response(status, "x", headers))

    assert classify(refused(503)) is R
    assert classify(refused(429)) is R
    assert classify(refused(401)) is P
    assert classify(websockets.exceptions.InvalidMessage("cut off")) is R
    assert classify(websockets.exceptions.InvalidURI("x", "bad")) is P


def _bug_while_handling_a_reset() -> None:
    try:
        raise ConnectionResetError
    except ConnectionResetError:
        raise KeyError("bug while handling") from None


def _cleanup_fails_after_a_reset() -> None:
    try:
        raise ConnectionResetError
    finally:
        raise asyncpg.exceptions.InternalClientError("cannot switch state")


def test_classify_follows_cause_and_unsuppressed_context() -> None:
    """An uninformative error defers to its __cause__ or __context__, unless `from None`."""
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ConnectionRefusedError()
    assert classify(wrapped) is R
    informative = PermanentError("bad config")
    informative.__cause__ = ConnectionRefusedError()
    assert classify(informative) is P
    with pytest.raises(KeyError) as info:
        _bug_while_handling_a_reset()
    assert info.value.__context__ is not None
    assert classify(info.value) is P  # the chain was cut on purpose
    with pytest.raises(asyncpg.exceptions.InternalClientError) as cleanup:
        _cleanup_fails_after_a_reset()
    assert classify(cleanup.value) is R  # a rollback failing after the connection broke
    loop = RuntimeError("a")
    loop.__cause__ = loop  # a cycle must not hang
    assert classify(loop) is P


def test_classify_exception_groups() -> None:
    """A group retries only when every member is retryable."""
    assert classify(ExceptionGroup("g", [ConnectionResetError(), TimeoutError()])) is R
    assert classify(ExceptionGroup("g", [ConnectionResetError(), ValueError()])) is P


# ------------------------------------------------------------------------------- backoff
def test_backoff_bounds_grow_then_cap() -> None:
    """Every delay lies in [0, min(cap, base * 2**attempt)]; reset starts over."""
    b = Backoff(0.1, 2.0, rng=random.Random(1))
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        d = b.next_delay()
        assert 0.0 <= d <= ceiling
    assert b.attempt == 12
    b.reset()
    assert b.attempt == 0
    assert b.ceiling() == 0.1
    b.attempt = 10_000  # no overflow after a very long outage
    assert b.ceiling() == 2.0


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


def test_testing_mode_zeroes_backoff(testing_mode: None) -> None:
    """set_testing(True) makes every delay 0 while still counting attempts."""
    assert is_testing()
    b = Backoff(5.0, 60.0)
    assert [b.next_delay() for _ in range(5)] == [0.0] * 5
    assert b.attempt == 5


def test_backoff_rejects_nonsense() -> None:
    """A zero base or a cap below the base is refused."""
    with pytest.raises(ValueError, match="base_s"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="base_s"):
        Backoff(2.0, 1.0)


# ------------------------------------------------------------------------------- breaker
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
    assert br.seconds_until_probe() == pytest.approx(10)
    clock.now += 9.9
    assert not br.allow()
    clock.now += 0.2
    assert _state(br) is BreakerState.HALF_OPEN
    assert br.allow()
    assert not br.allow()  # one probe at a time
    br.record_success()
    assert _state(br) is BreakerState.CLOSED
    assert br.failures == 0
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


def test_breaker_lost_probe_does_not_wedge_it() -> None:
    """A probe that never reports back is released, explicitly or after another timeout."""
    clock = FakeClock()
    br = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=5, clock=clock)
    br.record_failure()
    clock.now += 5
    assert br.allow()  # the probe's task is then cancelled: no success, no failure
    assert not br.allow()
    assert br.seconds_until_probe() == pytest.approx(5)  # never 0 while refusing (no spin)
    clock.now += 5
    assert br.allow()  # the lost probe expired: a new one may go
    br.release()
    assert br.allow()  # released at once
    assert _state(br) is BreakerState.HALF_OPEN


# -------------------------------------------------------------------------- token bucket
def test_token_bucket_refills_at_rate() -> None:
    """The bucket allows a burst of capacity, then `rate` tokens per second."""
    clock = FakeClock()
    tb = TokenBucket(rate_per_s=10, capacity=20, clock=clock)
    assert all(tb.try_acquire(10) for _ in range(2))
    assert not tb.try_acquire(10)
    assert tb.delay_for(10) == pytest.approx(1.0)
    clock.now += 1.0
    assert tb.try_acquire(10)
    clock.now += 3600
    assert tb.delay_for(20) == 0.0  # refills up to capacity, not beyond
    assert not tb.try_acquire(20) or not tb.try_acquire(1)
    with pytest.raises(ValueError, match="capacity"):
        tb.try_acquire(21)


async def test_token_bucket_acquire_waits_for_refill() -> None:
    """acquire() sleeps just long enough for the tokens it needs."""
    clock = FakeClock()
    tb = TokenBucket(rate_per_s=2, capacity=4, clock=clock)
    for _ in range(4):
        await tb.acquire(sleep=clock.sleep)
    assert clock.slept == []
    await tb.acquire(3, sleep=clock.sleep)
    assert sum(clock.slept) == pytest.approx(1.5)


# --------------------------------------------------------------------------------- retry
async def test_retry_stops_on_permanent_and_retries_transient() -> None:
    """The retry loop retries transient errors, re-raises permanent ones at once."""
    clock = FakeClock()
    calls: list[int] = []
    seen: list[tuple[int, str, float]] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("again")
        return "ok"

    result = await retry(
        flaky,
        policy=RetryPolicy(0.01, 0.1),
        name="flaky",
        sleep=clock.sleep,
        clock=clock,
        on_retry=lambda n, e, d: seen.append((n, type(e).__name__, d)),
    )
    assert result == "ok"
    assert len(calls) == 3
    assert [(n, t) for n, t, _ in seen] == [(1, "TransientError"), (2, "TransientError")]
    assert [d for *_, d in seen] == clock.slept
    assert all(0 <= d <= 0.1 for d in clock.slept)

    async def broken() -> str:
        calls.append(1)
        raise PermanentError("bad credentials")

    calls.clear()
    with pytest.raises(PermanentError):
        await retry(broken, policy=RetryPolicy(), name="broken", sleep=clock.sleep, clock=clock)
    assert len(calls) == 1


async def test_retry_gives_up_after_max_attempts_and_feeds_the_breaker() -> None:
    """max_attempts bounds the loop; each failure counts against the breaker."""
    clock = FakeClock()
    br = CircuitBreaker("x", failure_threshold=10, clock=clock)

    async def always() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError):
        await retry(
            always,
            policy=RetryPolicy(max_attempts=4),
            name="x",
            breaker=br,
            sleep=clock.sleep,
            clock=clock,
        )
    assert br.failures == 4


async def test_retry_deadline_reraises_the_last_error() -> None:
    """With a deadline, the loop stops before an attempt would start past it."""
    clock = FakeClock()
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError

    with pytest.raises(ConnectionRefusedError):
        await retry(
            down,
            policy=RetryPolicy(1.0, 1.0, deadline_s=10.0),
            name="d",
            sleep=clock.sleep,
            clock=clock,
        )
    assert clock.now - 1000.0 <= 10.0
    assert calls >= 2


async def test_retry_waits_for_the_breaker_then_probes() -> None:
    """An open breaker stretches the wait to its probe time; the probe's success closes it."""
    clock = FakeClock()
    br = CircuitBreaker("db", failure_threshold=2, reset_timeout_s=30, clock=clock)
    outcomes = [ConnectionResetError(), ConnectionResetError(), None]

    async def op() -> str:
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc
        return "up"

    assert await retry(
        op, policy=RetryPolicy(0.1, 1.0), name="db", breaker=br, sleep=clock.sleep, clock=clock
    )
    assert max(clock.slept) == pytest.approx(30)  # slept until the probe at once...
    assert sum(clock.slept) < 32  # ...not in short backoff-sized loops
    assert _state(br) is BreakerState.CLOSED
    assert br.opened_total == 1


async def test_retry_breaker_open_past_deadline_raises_circuit_open() -> None:
    """A breaker opened by others that stays shut past the deadline ends the loop."""
    clock = FakeClock()
    br = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=60, clock=clock)
    br.record_failure()
    called = False

    async def op() -> None:
        nonlocal called
        called = True

    with pytest.raises(CircuitOpenError) as info:
        await retry(
            op,
            policy=RetryPolicy(deadline_s=5),
            name="db",
            breaker=br,
            sleep=clock.sleep,
            clock=clock,
        )
    assert not called
    assert info.value.fields["breaker"] == "db"
    assert classify(info.value) is R


async def test_retry_cancellation_propagates_and_frees_the_probe() -> None:
    """Cancelling the probe's task propagates and lets the next caller probe."""
    clock = FakeClock()
    br = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=5, clock=clock)
    br.record_failure()
    clock.now += 5
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(
        retry(hang, policy=RetryPolicy(), name="db", breaker=br, sleep=clock.sleep, clock=clock)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert br.allow()


async def test_retry_permanent_error_frees_the_probe() -> None:
    """A permanent error from a probe is re-raised without counting as a breaker failure."""
    clock = FakeClock()
    br = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=5, clock=clock)
    br.record_failure()
    clock.now += 5

    async def bad_sql() -> None:
        raise asyncpg.PostgresError.new({"C": "42601", "M": "syntax"})

    with pytest.raises(asyncpg.PostgresError):
        await retry(bad_sql, policy=RetryPolicy(), name="db", breaker=br, sleep=clock.sleep)
    assert br.opened_total == 1
    assert br.allow()


async def test_retry_in_testing_mode_does_not_wait(testing_mode: None) -> None:
    """With set_testing(True), retries happen back to back."""
    clock = FakeClock()
    outcomes: list[BaseException | None] = [TimeoutError(), TimeoutError(), None]

    async def op() -> int:
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc
        return 7

    assert await retry(op, policy=RetryPolicy(5, 60), name="t", sleep=clock.sleep) == 7
    assert clock.slept == [0.0, 0.0]
