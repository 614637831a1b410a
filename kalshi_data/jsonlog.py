"""JSON structured logging on stdlib ``logging``: one object per line, secrets masked.

Each line carries ``ts`` (ISO-8601, UTC), ``level``, ``logger``, ``msg``, ``service``, the
record's ``extra`` fields and, inside ``with correlation():``, a ``correlation_id`` (carried
across ``await`` and into tasks created inside, by :mod:`contextvars`).

Secrets never reach the output (reliability-notes §7): a :class:`RedactFilter` masks
``scheme://user:password@`` URLs, ``password=``/``"token": ...`` pairs, bearer credentials and PEM
private keys inside messages, and the formatter masks extras whose key names a secret
(password, secret, token, dsn, private_key, ...), recursively, and exception text.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TextIO

MASK = "***"

_CORRELATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kd_correlation", default=None
)

#: Key names whose values are secrets (``tokens`` of a rate limiter are not).
SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token(?!s)|dsn|private_?key|credential|api_?key"
    r"|authorization|signature|cookie",
    re.IGNORECASE,
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host; greedy up to the token's last '@' (passwords may hold '@').
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)\S+@"), rf"\1{MASK}@"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {MASK}"),
    # password=x, password='a b', "password": "x", api_key: x, PGPASSWORD=x ...
    (
        re.compile(
            r"(?i)((?:pass(?:word|wd|phrase)?|pwd|secret|token(?!s)|api_?key|private_?key"
            r"|authorization)[\w-]*['\"]?\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s,;&)}\]]+)"
        ),
        rf"\1{MASK}",
    ),
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
        ),
        f"{MASK}private key{MASK}",
    ),
)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_RESERVED = frozenset({"ts", "level", "logger", "msg", "service", "correlation_id", "error"})
_MAX_DEPTH = 6


def redact(text: str) -> str:
    """Mask secrets inside free text.

    Args:
        text: A log message, exception text or traceback.

    Returns:
        The text with URL passwords, ``key=value`` secrets, bearer credentials and PEM private
        keys replaced by ``***``.
    """
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def scrub(value: object, _depth: int = 0) -> object:
    """A JSON-ready copy of ``value`` with secret-named keys masked at any depth.

    Args:
        value: An ``extra`` field's value.

    Returns:
        Plain JSON types; strings redacted; unknown objects as redacted ``str()``.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if _depth >= _MAX_DEPTH:
        return MASK
    if isinstance(value, dict):
        return {
            str(k): MASK if SECRET_KEY.search(str(k)) else scrub(v, _depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, _depth + 1) for v in value]
    return redact(str(value))  # Secret's str() is already "***"


def current_correlation_id() -> str | None:
    """The correlation id of the enclosing :func:`correlation` block, if any."""
    return _CORRELATION.get()


@contextlib.contextmanager
def correlation(batch_id: str | None = None) -> Iterator[str]:
    """Every log line inside carries ``correlation_id``.

    Args:
        batch_id: The id to use; a fresh random one when None.

    Yields:
        The correlation id.
    """
    cid = batch_id or uuid.uuid4().hex[:16]
    token = _CORRELATION.set(cid)
    try:
        yield cid
    finally:
        _CORRELATION.reset(token)


class RedactFilter(logging.Filter):
    """Rewrites each record's message with secrets masked (before any handler formats it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the message in place; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format: keep the template, drop the arguments
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object per line.

    Args:
        service: Value of the ``service`` field on every line.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON with extras, the correlation id and secrets masked."""
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
            "service": self.service,
        }
        cid = _CORRELATION.get()
        if cid is not None:
            out["correlation_id"] = cid
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            name = f"extra_{key}" if key in _RESERVED else key
            out[name] = MASK if SECRET_KEY.search(key) else scrub(value)
        if record.exc_info and record.exc_info[0] is not None:
            exc = record.exc_info[1]
            out["error"] = f"{record.exc_info[0].__name__}: {redact(str(exc))}"
            out["traceback"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr: journald) as redacted JSON lines.

    Args:
        service: Name on every line (``gatherer-1``, ``deduplicator``...).
        level: Root level name.
        stream: Destination; ``sys.stderr`` when None.

    Raises:
        ValueError: Unknown level name.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Driver debug logs print hosts and connection parameters (reliability-notes §7).
    for noisy in ("asyncpg", "psycopg", "websockets", "aiohttp.access", "botocore", "boto3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
