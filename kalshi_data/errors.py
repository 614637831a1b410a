"""The core exception tree: the root of every package's own errors except the simulator's.

    KalshiDataError
    ├── ConfigError(key, message)   bad configuration: the process refuses to start, naming the key
    ├── TransientError              classify() -> RETRYABLE (a passing fault: retry with backoff)
    │   ├── CircuitOpenError        retry() gave up while a circuit breaker refused every call
    │   └── kalshi.rest.RestTransientError (also RestError): RateLimited, ServerError
    ├── PermanentError              classify() -> PERMANENT (retrying would only hide it)
    │   ├── kalshi.signer.KeyError_ an unreadable or invalid key file
    │   └── kalshi.rest.RestPermanentError (also RestError): ClientError (NotFound, AuthError),
    │                               ResponseTooLarge, BadResponse
    ├── kalshi.rest.RestError       an HTTP exchange failed (fields: status, path, code)
    ├── kalshi.fixedpoint.SubunitPrice (also ValueError): a price finer than 1/10,000 $
    ├── migrate.MigrationError, testing.pgcluster.PgClusterError, testing.cluster.ClusterError,
    │   tools.importer.RestoreError, tools.users.UserError, tools.retention.RetentionError
    │                               (each also a RuntimeError: callers catch it as one)
    ├── gatherer.errors.GathererError   the gatherer's root (see that module)
    └── deduplicator.errors.DedupError  the deduplicator's root (see that module)

The simulator's root, ``simulator.errors.SimulatorError``, stands apart: it is the exchange.
Misuse of an API (a server started twice) stays a builtin ``RuntimeError``.

Structured fields ride along as keyword arguments (``component=``, ``gatherer=``...), available
as ``exc.fields`` for logging; messages never carry secrets.
"""

from __future__ import annotations

from typing import Any

from kalshi_data.jsonlog import redact


class KalshiDataError(Exception):
    """Base of the project's own errors.

    Args:
        message: Human-readable text (never a secret).
        **fields: Structured context (``component=``, ``gatherer=``, ``market=``...).
    """

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.fields: dict[str, Any] = fields


class ConfigError(KalshiDataError):
    """Invalid configuration; ``key`` is the dotted path of the offending key.

    Args:
        key: Dotted path of the key (``gatherers[1].dsn``), or ``<root>``/``<file>``.
        message: What is wrong; never the (possibly secret) value itself.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error at {key!r}: {message}", key=key)
        self.key = key


class TransientError(KalshiDataError):
    """A failure worth retrying (rate limit, 5xx, dropped connection)."""


class CircuitOpenError(TransientError):
    """A circuit breaker refused the call and the retry budget ran out before it would allow one."""


class PermanentError(KalshiDataError):
    """A failure retrying cannot fix (bad credentials, missing database, bad request)."""


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """The one summary of an exception for logs, health pages and exit messages.

    ``Type: first line of the message``, secrets masked (:func:`kalshi_data.jsonlog.redact`:
    URL passwords, ``password=`` pairs, bearer tokens, PEM keys), cut to ``limit`` characters
    after masking so a cut can never expose the tail of a secret. An empty message gives the
    type's name alone.
    """
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    summary = f"{type(exc).__name__}: {redact(first)}" if first else type(exc).__name__
    return summary[:limit]
