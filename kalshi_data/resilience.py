"""One of each resilience primitive for the whole project (reliability-notes §3, §4).

- :func:`classify`: retryable or permanent, by SQLSTATE and exception type, never message text;
- :class:`Backoff`: capped exponential backoff with Full Jitter (AWS, Brooker 2015);
- :class:`CircuitBreaker`: closed → open after N failures → half-open probe → closed;
- :class:`TokenBucket`: request budgets (Kalshi's read limit, REST snapshot polling);
- :class:`Supervisor`: the one supervised retry/reconnect loop, combining the three with a stop
  event and hooks for logs and metrics; :func:`retry` is its one-shot form.

Every time decision takes an injectable monotonic clock; :func:`set_testing` zeroes backoff.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kalshi_data.errors import CircuitOpenError, PermanentError, TransientError, describe_error

T = TypeVar("T")
Clock = Callable[[], float]

log = logging.getLogger(__name__)

_TESTING = False


class ErrorClass(enum.Enum):
    """What to do about an error."""

    RETRYABLE = "retryable"
    PERMANENT = "permanent"


# ---------------------------------------------------------------------------------- classify
#: SQLSTATEs worth retrying (reliability-notes §3): shutdowns and startup (57P0x), serialization
#: and deadlock (40001, 40P01), read-only after a failover (25006), lock and statement timeouts,
#: idle timeouts, transaction resolution unknown (08007, verified by the caller's cursor CAS).
RETRYABLE_SQLSTATES = frozenset(
    {"57P01", "57P02", "57P03", "40001", "40P01", "25006", "55P03", "57014", "25P03", "57P05"}
)
#: Whole classes worth retrying: 08 connection exceptions, 53 insufficient resources.
RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "53"})
#: 08P01 (protocol violation) sits in class 08 but is a bug, not a passing fault. Every other
#: SQLSTATE (28xxx auth, 3D000, 42xxx, 22xxx, 23xxx, 0A000, XX000...) is permanent.
PERMANENT_SQLSTATES = frozenset({"08P01"})

#: HTTP statuses (REST or a WebSocket handshake) that a later attempt may not see.
RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

#: OSErrors that are about local files and permissions, not the network: a retry cannot fix them.
_LOCAL_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _sqlstate(exc: BaseException) -> str | None:
    # asyncpg PostgresError and psycopg Error both expose ``sqlstate`` (None when unknown).
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _by_sqlstate(state: str) -> ErrorClass:
    if state in PERMANENT_SQLSTATES:
        return ErrorClass.PERMANENT
    if state in RETRYABLE_SQLSTATES or state[:2] in RETRYABLE_SQLSTATE_CLASSES:
        return ErrorClass.RETRYABLE
    return ErrorClass.PERMANENT


def _by_http_status(status: object) -> ErrorClass:
    return ErrorClass.RETRYABLE if status in RETRYABLE_HTTP_STATUSES else ErrorClass.PERMANENT


def _module(name: str) -> Any:
    # A driver that was never imported cannot have raised: look it up instead of importing it.
    return sys.modules.get(name)


def _psycopg_verdict(exc: BaseException) -> ErrorClass | None:
    psycopg = _module("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return None
    # The trap (reliability-notes §3): libpq reports a rejected *connection attempt* without a
    # SQLSTATE, whether the server was unreachable or said "password authentication failed" /
    # "database does not exist". psycopg then attaches the finished attempt: if the password
    # stage was reached (or a password was demanded and missing), the server answered and
    # refused us after authentication began: bad credentials, role or database, i.e. config.
    # Startup (57P03) and "too many clients" are sent before that stage and stay retryable.
    pgconn = getattr(exc, "pgconn", None)
    finished = getattr(getattr(psycopg, "errors", None), "FinishedPGconn", None)
    if (
        finished is not None
        and isinstance(pgconn, finished)
        and (pgconn.used_password or pgconn.needs_password)
    ):
        return ErrorClass.PERMANENT
    # No SQLSTATE and no rejected login: the connection broke (reset, EOF, refused, closed).
    return ErrorClass.RETRYABLE


def _asyncpg_verdict(exc: BaseException) -> ErrorClass | None:
    asyncpg = _module("asyncpg")
    if asyncpg is None:
        return None
    # ConnectionDoesNotExistError carries 08003 and is handled by SQLSTATE. A bare
    # InterfaceError is what asyncpg raises on a closed connection; its subclasses
    # (DataError, ClientConfigurationError, Unsupported*) are client bugs or config.
    if type(exc) is asyncpg.InterfaceError:
        return ErrorClass.RETRYABLE
    # No host of a multi-host DSN is writable yet: the middle of a failover.
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return ErrorClass.RETRYABLE
    return None


def _client_state_error(exc: BaseException) -> bool:
    """asyncpg's protocol state machine is out of step with the socket ("cannot switch to
    state 15; another operation (2) is in progress"): what it raises when the server's FATAL
    arrived between two statements and the connection loss is not processed yet (issue 16)."""
    asyncpg = _module("asyncpg")
    return asyncpg is not None and isinstance(exc, asyncpg.InternalClientError)


def _aiohttp_verdict(exc: BaseException) -> ErrorClass | None:
    aiohttp = _module("aiohttp")
    if aiohttp is None or not isinstance(exc, aiohttp.ClientError):
        return None
    if isinstance(exc, aiohttp.ServerFingerprintMismatch | aiohttp.ClientConnectorCertificateError):
        return ErrorClass.PERMANENT  # the peer is not who we pinned or trust: config, not luck
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return ErrorClass.RETRYABLE
    if isinstance(exc, aiohttp.ClientResponseError):  # raise_for_status, WS handshake refused
        return _by_http_status(exc.status)
    return None


def _websockets_verdict(exc: BaseException) -> ErrorClass | None:
    wsx = _module("websockets.exceptions")
    if wsx is None or not isinstance(exc, wsx.WebSocketException):
        return None
    if isinstance(exc, wsx.ConnectionClosed):
        return ErrorClass.RETRYABLE
    if isinstance(exc, wsx.InvalidStatus):  # the HTTP answer to the upgrade request
        return _by_http_status(exc.response.status_code)
    if isinstance(exc, wsx.InvalidMessage):  # the handshake was cut off mid-way
        return ErrorClass.RETRYABLE
    return None


def _classify_one(exc: BaseException) -> ErrorClass | None:  # noqa: PLR0911  a verdict ladder, one return per rung
    """A verdict for this exception alone, or None when it carries no information."""
    if isinstance(exc, PermanentError):
        return ErrorClass.PERMANENT
    if isinstance(exc, TransientError):
        return ErrorClass.RETRYABLE
    state = _sqlstate(exc)
    if state is not None:
        return _by_sqlstate(state)
    if isinstance(exc, BaseExceptionGroup):
        # A TaskGroup failed: retry only when every branch is worth retrying.
        verdicts = {classify(e) for e in exc.exceptions}
        return ErrorClass.RETRYABLE if verdicts == {ErrorClass.RETRYABLE} else ErrorClass.PERMANENT
    for driver in (_psycopg_verdict, _asyncpg_verdict, _aiohttp_verdict, _websockets_verdict):
        verdict = driver(exc)
        if verdict is not None:
            return verdict
    if isinstance(exc, (ssl.SSLCertVerificationError, *_LOCAL_OS_ERRORS)):
        return ErrorClass.PERMANENT
    if isinstance(exc, OSError | TimeoutError | EOFError):  # reset, refused, DNS, timeouts
        return ErrorClass.RETRYABLE
    return None


def classify(exc: BaseException) -> ErrorClass:
    """Decide whether ``exc`` is worth retrying.

    Order: our own :class:`TransientError`/:class:`PermanentError`; a SQLSTATE on the exception
    (``exc.sqlstate``); the driver's exception type (psycopg, asyncpg, aiohttp, websockets,
    ``OSError``/``TimeoutError``); else the ``__cause__`` (or unsuppressed ``__context__``)
    chain. Message text is never read. An asyncpg ``InternalClientError`` (client-side protocol
    state after a connection loss) with nothing conclusive in its chain is retryable.

    Args:
        exc: The exception to judge.

    Returns:
        ``ErrorClass.RETRYABLE`` or ``ErrorClass.PERMANENT`` (the default when nothing says
        the fault is passing).
    """
    seen: set[int] = set()
    client_state = False
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        client_state = client_state or _client_state_error(current)
        verdict = _classify_one(current)
        if verdict is not None:
            return verdict
        # ``raise ... from cause`` first; else the error being handled when this one was raised
        # (asyncpg's rollback in ``transaction().__aexit__`` after a broken COPY fails with
        # InternalClientError, and the real fault is only in ``__context__``), unless the
        # raiser cut the chain with ``from None``.
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    # A client-side state error with nothing permanent behind it: the connection broke under
    # the driver. It is unusable, and a fresh one is the cure.
    return ErrorClass.RETRYABLE if client_state else ErrorClass.PERMANENT


# ----------------------------------------------------------------------------------- backoff
def set_testing(enabled: bool) -> None:
    """Zero every backoff delay (tests that exercise retry paths without waiting).

    Args:
        enabled: True to make :meth:`Backoff.next_delay` return 0.0 everywhere.
    """
    global _TESTING
    _TESTING = enabled


def is_testing() -> bool:
    """Whether :func:`set_testing` zeroed the backoff."""
    return _TESTING


#: Default first backoff ceiling and largest ceiling, in seconds. Services pass their own
#: (``backoff_base_s``/``backoff_cap_s`` in their config, or a named constant at the call site).
DEFAULT_BASE_S = 0.1
DEFAULT_CAP_S = 30.0


class Backoff:
    """Capped exponential backoff with Full Jitter: ``uniform(0, min(cap, base * 2**attempt))``.

    Args:
        base_s: First ceiling, in seconds.
        cap_s: Largest ceiling, in seconds.
        rng: Random source (seeded in tests).
    """

    def __init__(
        self,
        base_s: float = DEFAULT_BASE_S,
        cap_s: float = DEFAULT_CAP_S,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < base_s <= cap_s:
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


# ----------------------------------------------------------------------------------- breaker
class BreakerState(enum.Enum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stop hammering a dependency that keeps failing; probe it now and then.

    CLOSED counts consecutive failures and opens at ``failure_threshold``. OPEN refuses until
    ``reset_timeout_s`` has passed, then turns HALF_OPEN and allows one probe at a time: a success
    closes it, a failure opens it again with a fresh timer. A probe that never reports back (its
    task was cancelled, or it ended in an error that says nothing about the dependency) is given
    up after another ``reset_timeout_s``, so the breaker cannot stay shut forever.

    Args:
        name: Label for metrics and logs.
        failure_threshold: Consecutive failures that open the breaker.
        reset_timeout_s: Seconds open before a probe is allowed.
        clock: Monotonic clock (injected in tests).
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_s < 0:
            raise ValueError("breaker needs failure_threshold >= 1 and reset_timeout_s >= 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_at: float | None = None  # when the outstanding half-open probe started
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
            self._probe_at = None
        return self._state

    def _probe_outstanding(self) -> bool:
        return self._probe_at is not None and self._clock() - self._probe_at < self.reset_timeout_s

    def allow(self) -> bool:
        """May a call go through now? (HALF_OPEN: True for one probe at a time.)"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_outstanding():
            self._probe_at = self._clock()
            return True
        return False

    def record_success(self) -> None:
        """A call succeeded: close."""
        self._state = BreakerState.CLOSED
        self._probe_at = None
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
            self._probe_at = None
            self.opened_total += 1

    def release(self) -> None:
        """A call ended without a verdict on the dependency (cancelled, or a caller's bug).

        Frees the half-open probe slot so the next caller can probe; the state is unchanged.
        """
        self._probe_at = None

    def seconds_until_probe(self) -> float:
        """How long until :meth:`allow` can say yes (0 when it can now)."""
        state = self.state
        now = self._clock()
        if state is BreakerState.OPEN:
            return max(0.0, self.reset_timeout_s - (now - self._opened_at))
        if state is BreakerState.HALF_OPEN and self._probe_at is not None:
            return max(0.0, self.reset_timeout_s - (now - self._probe_at))
        return 0.0


# ------------------------------------------------------------------------------ token bucket
class TokenBucket:
    """A token bucket: ``rate_per_s`` tokens refill per second up to ``capacity``.

    Args:
        rate_per_s: Refill rate.
        capacity: Burst size (and the largest single cost).
        clock: Monotonic clock (injected in tests).
    """

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
        self._tokens = min(self.capacity, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now

    def _check(self, cost: float) -> None:
        if not 0 <= cost <= self.capacity:
            raise ValueError(f"cost {cost} must lie in [0, capacity {self.capacity}]")

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available now; True when taken."""
        self._check(cost)
        self._refill()
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def delay_for(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available (0 when they are now)."""
        self._check(cost)
        self._refill()
        return max(0.0, (cost - self._tokens) / self.rate)

    async def acquire(
        self, cost: float = 1.0, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """Wait until ``cost`` tokens are available, then take them.

        Args:
            cost: Tokens to take (at most ``capacity``).
            sleep: Awaitable sleep (injected with a fake clock in tests).
        """
        self._check(cost)
        while not self.try_acquire(cost):  # waits for refill time, not for an event
            # Never sleep 0: float rounding can leave a hair short of ``cost``.
            await sleep(max(self.delay_for(cost), 1e-3))


# -------------------------------------------------------------------------- supervise / retry
OnFailure = Callable[[BaseException, ErrorClass, float], None]
OnGiveUp = Callable[[BaseException, ErrorClass], None]
Hook = Callable[[], None]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a :class:`Supervisor` (and :func:`retry`) retries.

    Attributes:
        base_s: First backoff ceiling, seconds.
        cap_s: Largest backoff ceiling, seconds.
        max_attempts: Give up after this many consecutive failed attempts (None = never).
        deadline_s: Give up when the next attempt would start later than this many seconds
            after :meth:`Supervisor.run` began (None = never).
        stable_s: A session that called :meth:`Supervisor.connected` and then stayed up this
            long before failing starts the backoff afresh; one that failed sooner (a flapping
            peer) keeps escalating. None: reset as soon as it connects (websockets' model).
    """

    base_s: float = DEFAULT_BASE_S
    cap_s: float = DEFAULT_CAP_S
    max_attempts: int | None = None
    deadline_s: float | None = None
    stable_s: float | None = None


class _Stopped:
    """What :meth:`Supervisor._run` returns when the stop event ended it."""


_STOPPED = _Stopped()


class Supervisor:
    """The one supervised retry/reconnect loop: classify → backoff → breaker → stop → hooks.

    Models: websockets' reconnecting ``connect()`` (the backoff starts afresh after a
    connection that stayed up), psycopg_pool's ``AttemptWithBackoff`` (one object owns the
    attempt count and the next delay) and stamina's hooks (callers log and count through
    callbacks; the loop itself logs only at debug level, with :func:`describe_error`).

    One :meth:`run` calls ``op`` until it returns, and returns what it returned:

    1. While ``breaker`` refuses calls, sleep until it will allow a probe.
    2. Call ``op()``. Cancellation (any non-``Exception``) frees the breaker's probe slot and
       propagates, with no hook called.
    3. ``classify_fn(exc)`` is PERMANENT: free the probe slot, ``on_giveup(exc, verdict)``,
       re-raise.
    4. RETRYABLE: count it (``attempt``; the breaker, unless ``breaker_fault(exc)`` says its
       dependency is not to blame: then only free its probe slot). If ``max_attempts`` or
       ``deadline_s`` runs out: ``on_giveup(exc, verdict)`` and re-raise. Else the delay is
       the Full-Jitter backoff, stretched to the breaker's probe time when it is open;
       ``on_failure(exc, verdict, delay)``; sleep the delay, interrupted by ``stop``.
    5. Success: the breaker closes, the backoff resets, ``on_success()``.

    ``run`` returns None, without calling ``op`` again, once ``stop`` is set (check
    :attr:`stopped` when ``op`` itself may return None). The backoff and the breaker persist
    across calls, so a loop that calls ``run`` once per round (a lease renewal, a sync round)
    keeps escalating across rounds until one succeeds. ``op`` may also be a whole session that
    runs until its connection breaks: it calls :meth:`connected` once it is up (that closes the
    breaker and calls ``on_connected()``); see :attr:`RetryPolicy.stable_s` for the reset.

    Args:
        name: Names the operation in the debug log.
        policy: Backoff bounds, give-up rules and the stable-session threshold.
        breaker: Optional breaker (may be shared with other callers of the dependency).
        stop: Optional event: set, it ends :meth:`run` and interrupts its sleeps.
        classify_fn: Error classifier (defaults to :func:`classify`).
        breaker_fault: Whether a retryable error counts against ``breaker`` (default: every
            one does); for a loop with two dependencies and a breaker for one of them.
        on_failure: ``(exc, verdict, delay_s)`` before each retry's sleep.
        on_giveup: ``(exc, verdict)`` before a permanent or exhausted error is re-raised.
        on_success: ``()`` after ``op`` returned.
        on_connected: ``()`` when ``op`` calls :meth:`connected`.
        sleep: Awaitable sleep (injected in tests).
        clock: Monotonic clock for the deadline and the stable threshold (injected in tests).
        rng: Random source of the jitter (seeded in tests).
    """

    def __init__(
        self,
        name: str,
        *,
        policy: RetryPolicy = RetryPolicy(),  # frozen: one shared default is safe
        breaker: CircuitBreaker | None = None,
        stop: asyncio.Event | None = None,
        classify_fn: Callable[[BaseException], ErrorClass] = classify,
        breaker_fault: Callable[[BaseException], bool] | None = None,
        on_failure: OnFailure | None = None,
        on_giveup: OnGiveUp | None = None,
        on_success: Hook | None = None,
        on_connected: Hook | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.breaker = breaker
        self.stop = stop
        self.backoff = Backoff(policy.base_s, policy.cap_s, rng=rng)
        #: Consecutive failed attempts (reset by a success or a stable session).
        self.attempt = 0
        #: Retryable failures over the supervisor's life.
        self.failures_total = 0
        self._classify = classify_fn
        self._breaker_fault = breaker_fault
        self._on_failure = on_failure
        self._on_giveup = on_giveup
        self._on_success = on_success
        self._on_connected = on_connected
        self._sleep = sleep
        self._clock = clock
        self._connected_at: float | None = None

    @property
    def stopped(self) -> bool:
        """Whether the stop event is set."""
        return self.stop is not None and self.stop.is_set()

    def connected(self) -> None:
        """The running ``op`` is up (a session connected): close the breaker, call
        ``on_connected``; reset the backoff now, or once it has stayed up ``stable_s``."""
        self._connected_at = self._clock()
        if self.breaker is not None:
            self.breaker.record_success()
        if self.policy.stable_s is None:
            self._reset()
        if self._on_connected is not None:
            self._on_connected()

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``, cut short when ``stop`` is set; True when it ran in full."""
        stop = self.stop
        if stop is None:
            await self._sleep(seconds)
            return True
        if stop.is_set():
            return False
        sleeper = asyncio.ensure_future(self._sleep(max(0.0, seconds)))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((sleeper, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # a failed sleep is a bug: let it surface
        return not stop.is_set()

    async def run(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """Call ``op`` until it returns (its result), gives up (raises) or stop is set (None).

        Raises:
            CircuitOpenError: The deadline ran out while the breaker refused every call and
                no attempt had failed yet.
        """
        result = await self._run(op)
        return None if isinstance(result, _Stopped) else result

    # -- the core: one implementation behind run() and retry() ---------------------------
    async def _run(self, op: Callable[[], Awaitable[T]]) -> T | _Stopped:
        started = self._clock()
        last: Exception | None = None
        while not self.stopped:
            if not await self._admitted(started, last):
                continue
            self._connected_at = None
            try:
                result = await op()
            except Exception as exc:
                delay = self._failed(exc, started)
                if delay is None:
                    raise
                last = exc
                await self.sleep(delay)
                continue
            except BaseException:
                self._release()  # cancelled: says nothing about the dependency
                raise
            self._succeeded()
            return result
        return _STOPPED

    async def _admitted(self, started: float, last: Exception | None) -> bool:
        """True when the breaker allows a call now; else sleep until it may (False)."""
        breaker = self.breaker
        if breaker is None or breaker.allow():
            return True
        wait_s = max(breaker.seconds_until_probe(), 1e-3)
        if self._out_of_time(started, wait_s):
            exc = last or CircuitOpenError(
                f"{self.name}: circuit {breaker.name} open", breaker=breaker.name
            )
            self._give_up(exc, ErrorClass.RETRYABLE)
            raise exc
        await self.sleep(wait_s)
        return False

    def _failed(self, exc: Exception, started: float) -> float | None:
        """Book a failed attempt; the delay before the next one, or None to give up."""
        verdict = self._classify(exc)
        if verdict is ErrorClass.PERMANENT:
            self._release()  # a fault the dependency's health says nothing about
            self._give_up(exc, verdict)
            return None
        self._reset_if_stable()
        self.attempt += 1
        self.failures_total += 1
        self._blame(exc)
        delay = self.backoff.next_delay()
        if self.breaker is not None:
            delay = max(delay, self.breaker.seconds_until_probe())
        max_attempts = self.policy.max_attempts
        if (max_attempts is not None and self.attempt >= max_attempts) or self._out_of_time(
            started, delay
        ):
            self._give_up(exc, verdict)
            return None
        log.debug(
            "%s failed (%s), attempt %d; retrying in %.3fs",
            self.name,
            describe_error(exc),
            self.attempt,
            delay,
        )
        if self._on_failure is not None:
            self._on_failure(exc, verdict, delay)
        return delay

    def _blame(self, exc: Exception) -> None:
        breaker = self.breaker
        if breaker is None:
            return
        if self._breaker_fault is None or self._breaker_fault(exc):
            breaker.record_failure()
        else:
            breaker.release()  # another dependency failed: no verdict on this one

    def _out_of_time(self, started: float, wait_s: float) -> bool:
        deadline = self.policy.deadline_s
        return deadline is not None and self._clock() - started + wait_s > deadline

    def _reset_if_stable(self) -> None:
        stable_s, at = self.policy.stable_s, self._connected_at
        if stable_s is not None and at is not None and self._clock() - at >= stable_s:
            self._reset()

    def _reset(self) -> None:
        self.backoff.reset()
        self.attempt = 0

    def _release(self) -> None:
        if self.breaker is not None:
            self.breaker.release()

    def _give_up(self, exc: BaseException, verdict: ErrorClass) -> None:
        if self._on_giveup is not None:
            self._on_giveup(exc, verdict)

    def _succeeded(self) -> None:
        if self.breaker is not None:
            self.breaker.record_success()
        self._reset()
        if self._on_success is not None:
            self._on_success()


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    name: str,
    breaker: CircuitBreaker | None = None,
    classify_fn: Callable[[BaseException], ErrorClass] = classify,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> T:
    """Run ``op`` until it succeeds, a permanent error occurs, or the policy gives up.

    A one-shot :class:`Supervisor` without a stop event (the same core): a retryable error
    counts against ``breaker``, calls ``on_retry(attempt, exc, delay)`` and sleeps ``delay``:
    the jittered backoff, or longer when the breaker will not allow a call sooner. A
    permanent error is re-raised at once; so is the last error when ``max_attempts`` or
    ``deadline_s`` runs out. Cancellation always propagates.

    Args:
        op: Zero-argument coroutine factory; called once per attempt.
        policy: Backoff bounds and give-up rules.
        name: Names the operation in logs.
        breaker: Optional breaker shared with other callers of the same dependency.
        classify_fn: Error classifier (defaults to :func:`classify`).
        on_retry: Hook for metrics/logs before each sleep.
        sleep: Awaitable sleep (injected in tests).
        clock: Monotonic clock for the deadline (injected in tests).

    Returns:
        What ``op`` returned.

    Raises:
        CircuitOpenError: The deadline ran out while the breaker refused every call and no
            attempt had failed yet.
    """

    def on_failure(exc: BaseException, _verdict: ErrorClass, delay: float) -> None:
        if on_retry is not None:
            on_retry(sup.attempt, exc, delay)

    sup = Supervisor(
        name,
        policy=policy,
        breaker=breaker,
        classify_fn=classify_fn,
        on_failure=on_failure,
        sleep=sleep,
        clock=clock,
    )
    result = await sup._run(op)
    assert not isinstance(result, _Stopped)  # no stop event: only op's return ends the loop
    return result
