"""The supervised reconnect primitive (resilience.Supervisor): fake clock and sleep, no waiting."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from kalshi_data.errors import CircuitOpenError, PermanentError, TransientError, describe_error
from kalshi_data.resilience import (
    BreakerState,
    CircuitBreaker,
    ErrorClass,
    RetryPolicy,
    Supervisor,
)

R, P = ErrorClass.RETRYABLE, ErrorClass.PERMANENT
SECRET_DSN = "postgresql://kd:hunter2-secret@db.internal:5432/kalshi"


class FakeClock:
    """A monotonic clock the test moves by hand; `sleep` advances it and records the delay."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Events:
    """Records every hook call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def failure(self, exc: BaseException, verdict: ErrorClass, delay: float) -> None:
        self.calls.append(("failure", type(exc).__name__, verdict, delay))

    def giveup(self, exc: BaseException, verdict: ErrorClass) -> None:
        self.calls.append(("giveup", type(exc).__name__, verdict))

    def success(self) -> None:
        self.calls.append(("success",))

    def connected(self) -> None:
        self.calls.append(("connected",))

    def kinds(self) -> list[object]:
        return [c[0] for c in self.calls]


def supervisor(
    clock: FakeClock, events: Events, policy: RetryPolicy | None = None, **kw: object
) -> Supervisor:
    return Supervisor(
        "test",
        policy=policy or RetryPolicy(1.0, 8.0),
        on_failure=events.failure,
        on_giveup=events.giveup,
        on_success=events.success,
        on_connected=events.connected,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
        **kw,  # type: ignore[arg-type]
    )


def script(*outcomes: BaseException | str) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    """An op that raises or returns the outcomes in turn; the list counts its calls."""
    calls: list[int] = []
    queue = list(outcomes)

    async def op() -> str:
        calls.append(1)
        out = queue.pop(0)
        if isinstance(out, BaseException):
            raise out
        return out

    return calls, op


# ------------------------------------------------------------------------ fatal vs transient
async def test_transient_errors_retry_with_growing_jittered_delays() -> None:
    """Retryable errors sleep a Full-Jitter delay under a doubling ceiling, then succeed."""
    clock, ev = FakeClock(), Events()
    sup = supervisor(clock, ev)
    calls, op = script(ConnectionResetError(), TimeoutError(), TransientError("x"), "ok")
    assert await sup.run(op) == "ok"
    assert len(calls) == 4
    assert ev.kinds() == ["failure", "failure", "failure", "success"]
    assert [c[2] for c in ev.calls[:3]] == [R, R, R]
    assert [c[3] for c in ev.calls[:3]] == clock.slept
    for i, d in enumerate(clock.slept):
        assert 0 <= d <= 1.0 * 2**i
    assert sup.attempt == 0  # the success reset it
    assert sup.backoff.attempt == 0
    assert sup.failures_total == 3


async def test_permanent_error_gives_up_at_once() -> None:
    """A permanent error is re-raised on the first attempt, through on_giveup, with no sleep."""
    clock, ev = FakeClock(), Events()
    sup = supervisor(clock, ev)
    bad_auth = asyncpg.PostgresError.new({"C": "28P01", "M": "password authentication failed"})
    calls, op = script(bad_auth, "never")
    with pytest.raises(asyncpg.PostgresError):
        await sup.run(op)
    assert len(calls) == 1
    assert clock.slept == []
    assert ev.calls == [("giveup", type(bad_auth).__name__, P)]


async def test_custom_classifier_decides() -> None:
    """classify_fn overrides the default verdict (a loop that knows its connection was lost)."""
    clock, ev = FakeClock(), Events()
    sup = supervisor(clock, ev, classify_fn=lambda exc: R)
    _calls, op = script(PermanentError("would be fatal"), "ok")
    assert await sup.run(op) == "ok"
    assert ev.kinds() == ["failure", "success"]


async def test_max_attempts_gives_up_with_the_last_error() -> None:
    clock, ev = FakeClock(), Events()
    sup = supervisor(clock, ev, RetryPolicy(1.0, 8.0, max_attempts=3))
    _calls, op = script(TimeoutError("a"), TimeoutError("b"), TimeoutError("c"), "never")
    with pytest.raises(TimeoutError) as info:
        await sup.run(op)
    assert str(info.value) == "c"
    assert ev.kinds() == ["failure", "failure", "giveup"]
    assert len(clock.slept) == 2


async def test_backoff_persists_across_runs_until_a_success() -> None:
    """A loop calling run() once per round keeps escalating until a round succeeds."""
    clock, ev = FakeClock(), Events()
    sup = supervisor(clock, ev, RetryPolicy(1.0, 64.0, max_attempts=1))
    for _ in range(3):
        _calls, op = script(ConnectionResetError())
        with pytest.raises(ConnectionResetError):
            await sup.run(op)
    # max_attempts=1 gives up each round, but the backoff counted every failure.
    assert sup.backoff.attempt == 3
    _calls, op = script("ok")
    assert await sup.run(op) == "ok"
    assert sup.backoff.attempt == 0


# ---------------------------------------------------------------- backoff reset after stable run
async def test_backoff_resets_after_a_session_that_stayed_up() -> None:
    """websockets' model: a session that connected and stayed up stable_s starts afresh; one that
    dropped sooner (a flapping peer) keeps escalating."""
    clock, ev = FakeClock(), Events()
    sup = supervisor(clock, ev, RetryPolicy(1.0, 1024.0, stable_s=60.0))
    ceilings: list[float] = []
    uptimes = iter([0.0, 0.0, 5.0, 120.0, 1.0])

    async def session() -> str:
        ceilings.append(sup.backoff.ceiling())
        up = next(uptimes, None)
        if up is None:
            return "stopped cleanly"
        sup.connected()
        clock.now += up
        raise ConnectionResetError

    assert await sup.run(session) == "stopped cleanly"
    # The ceiling each session starts under. Up 0 s, 0 s, 5 s: 1, 2, 4, 8 (escalating); up
    # 120 s: its delay is drawn under 1 again, so the next starts under 2, not 16.
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 2.0, 4.0]
    assert clock.slept[3] <= 1.0
    assert ev.kinds().count("connected") == 5
    assert ev.kinds()[-1] == "success"


async def test_without_stable_s_connecting_resets_at_once() -> None:
    clock, ev = FakeClock(), Events()
    sup = supervisor(clock, ev, RetryPolicy(1.0, 1024.0))
    ceilings: list[float] = []
    runs = iter([False, False, True, False])

    async def session() -> str:
        ceilings.append(sup.backoff.ceiling())
        up = next(runs, None)
        if up is None:
            return "done"
        if up:
            sup.connected()
        raise ConnectionResetError

    assert await sup.run(session) == "done"
    assert ceilings == [1.0, 2.0, 4.0, 2.0, 4.0]  # the connect reset it before that failure
    assert clock.slept[2] <= 1.0


# --------------------------------------------------------------------------------- breaker
async def test_breaker_opens_then_half_open_probe_closes_it() -> None:
    """Failures open the breaker; the wait stretches to the probe time; the probe's success
    closes it. The breaker refuses further attempts while open (no hammering)."""
    clock, ev = FakeClock(), Events()
    br = CircuitBreaker("db", failure_threshold=2, reset_timeout_s=30.0, clock=clock)
    sup = supervisor(clock, ev, RetryPolicy(0.1, 1.0), breaker=br)
    states: list[BreakerState] = []
    calls, op = script(ConnectionRefusedError(), ConnectionRefusedError(), "up")

    async def probe() -> str:
        states.append(br.state)
        return await op()

    assert await sup.run(probe) == "up"
    assert len(calls) == 3
    assert states == [BreakerState.CLOSED, BreakerState.CLOSED, BreakerState.HALF_OPEN]
    assert max(clock.slept) == pytest.approx(30.0)  # slept until the probe at once
    assert sum(clock.slept) < 32.0
    assert br.state is BreakerState.CLOSED
    assert br.opened_total == 1


async def test_failed_probe_reopens_the_breaker() -> None:
    clock, ev = FakeClock(), Events()
    br = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=10.0, clock=clock)
    sup = supervisor(clock, ev, RetryPolicy(0.1, 1.0), breaker=br)
    _calls, op = script(ConnectionRefusedError(), ConnectionRefusedError(), "up")
    assert await sup.run(op) == "up"
    assert br.opened_total == 2  # the first failure opened it, the failed probe reopened it
    assert clock.slept == [pytest.approx(10.0), pytest.approx(10.0)]


async def test_breaker_open_past_the_deadline_raises_circuit_open() -> None:
    """A breaker opened by another caller, shut past the deadline: CircuitOpenError, op never
    called, on_giveup told."""
    clock, ev = FakeClock(), Events()
    br = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=60.0, clock=clock)
    br.record_failure()
    sup = supervisor(clock, ev, RetryPolicy(deadline_s=5.0), breaker=br)
    calls, op = script("never")
    with pytest.raises(CircuitOpenError):
        await sup.run(op)
    assert calls == []
    assert ev.calls == [("giveup", "CircuitOpenError", R)]


async def test_connected_closes_the_breaker() -> None:
    """A session that connects is a success for the breaker even though it fails later."""
    clock, ev = FakeClock(), Events()
    br = CircuitBreaker("ws", failure_threshold=2, reset_timeout_s=30.0, clock=clock)
    sup = supervisor(clock, ev, RetryPolicy(0.1, 1.0, max_attempts=5), breaker=br)
    count = 0

    async def flapping() -> str:
        nonlocal count
        count += 1
        if count == 4:
            return "done"
        sup.connected()
        raise ConnectionResetError

    assert await sup.run(flapping) == "done"
    assert br.opened_total == 0  # each connect reset the consecutive-failure count
    assert max(clock.slept) <= 1.0


# ----------------------------------------------------------------------- stop and cancellation
async def test_stop_event_interrupts_the_sleep() -> None:
    """Setting stop during a backoff sleep ends run() at once with None; op is not called
    again. The real clock is used here: the sleep would last an hour."""
    stop = asyncio.Event()
    failed = asyncio.Event()
    sup = Supervisor(
        "t",
        policy=RetryPolicy(3600.0, 3600.0),
        stop=stop,
        on_failure=lambda exc, verdict, delay: failed.set(),
        rng=random.Random(1),
    )
    sup.backoff.next_delay = lambda: 3600.0  # type: ignore[method-assign]
    calls, op = script(ConnectionResetError(), "never")
    task = asyncio.create_task(sup.run(op))
    await failed.wait()
    stop.set()
    assert await asyncio.wait_for(task, timeout=5.0) is None
    assert len(calls) == 1
    assert sup.stopped


async def test_stop_set_before_run_never_calls_op() -> None:
    stop = asyncio.Event()
    stop.set()
    sup = Supervisor("t", stop=stop)
    calls, op = script("never")
    assert await sup.run(op) is None
    assert calls == []
    assert await sup.sleep(10.0) is False


async def test_sleep_runs_in_full_without_stop() -> None:
    clock = FakeClock()
    sup = Supervisor("t", stop=asyncio.Event(), sleep=clock.sleep, clock=clock)
    assert await sup.sleep(2.5) is True
    assert clock.slept == [2.5]


async def test_cancellation_propagates_frees_the_probe_and_calls_no_hook() -> None:
    clock, ev = FakeClock(), Events()
    br = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=5.0, clock=clock)
    br.record_failure()
    clock.now += 5.0
    sup = supervisor(clock, ev, breaker=br)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(sup.run(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert br.allow()  # the probe slot is free again
    assert ev.calls == []


# ------------------------------------------------------------------------ hooks and masking
async def test_hooks_see_the_exception_and_its_summary_is_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hook gets the exception itself; the supervisor's own log line and the one summary
    (describe_error) that hooks use never show the password in a DSN."""
    clock = FakeClock()
    seen: list[str] = []
    sup = Supervisor(
        "db",
        policy=RetryPolicy(0.1, 1.0),
        on_failure=lambda exc, verdict, delay: seen.append(describe_error(exc)),
        on_giveup=lambda exc, verdict: seen.append(describe_error(exc)),
        sleep=clock.sleep,
        clock=clock,
    )
    _calls, op = script(
        ConnectionRefusedError(f"connect to {SECRET_DSN} failed"),
        PermanentError(f"refused {SECRET_DSN} password=hunter2-secret"),
    )
    with (
        caplog.at_level(logging.DEBUG, logger="kalshi_data.resilience"),
        pytest.raises(PermanentError),
    ):
        await sup.run(op)
    assert len(seen) == 2
    assert seen[0].startswith("ConnectionRefusedError: connect to postgresql://kd:")
    assert "db.internal" in seen[0]
    assert seen[1].startswith("PermanentError: refused")
    logged = caplog.text
    assert "ConnectionRefusedError" in logged
    for text in (*seen, logged):
        assert "hunter2" not in text


async def test_breaker_fault_counts_only_its_own_dependency() -> None:
    """A loop with two dependencies: errors of the other one do not open this breaker, and
    they free its half-open probe slot instead of holding it."""
    clock, ev = FakeClock(), Events()
    br = CircuitBreaker("gatherer", failure_threshold=1, reset_timeout_s=30.0, clock=clock)
    sup = supervisor(
        clock,
        ev,
        RetryPolicy(0.1, 1.0),
        breaker=br,
        breaker_fault=lambda exc: isinstance(exc, ConnectionRefusedError),
    )
    _calls, op = script(ConnectionResetError(), ConnectionResetError(), "ok")
    assert await sup.run(op) == "ok"
    assert br.opened_total == 0
    assert max(clock.slept) <= 1.0
    _calls, op = script(ConnectionRefusedError(), ConnectionResetError(), "ok")
    assert await sup.run(op) == "ok"
    assert br.opened_total == 1
    # Opened by the refusal; the probe failed on the other dependency: the slot was freed, so
    # the next attempt came right after its backoff, not a second reset_timeout later.
    assert clock.slept[-2] == pytest.approx(30.0)
    assert clock.slept[-1] <= 1.0
