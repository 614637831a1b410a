"""JSON structured logging: one object per line, a correlation id per batch, secrets masked."""

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

_CORRELATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kd_correlation", default=None
)
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|dsn|private_key|credential", re.I)
_PATTERNS = (
    (re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)([^@\s]+)(@)"), r"\1***\3"),
    (re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.I), r"\1***"),
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
        "***private key***",
    ),
)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """Mask passwords in DSNs, ``password=`` pairs and PEM private keys."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


@contextlib.contextmanager
def correlation(batch_id: str | None = None) -> Iterator[str]:
    """Every log line inside carries ``correlation_id`` (a new one unless given)."""
    cid = batch_id or uuid.uuid4().hex[:16]
    token = _CORRELATION.set(cid)
    try:
        yield cid
    finally:
        _CORRELATION.reset(token)


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object per line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON with extras, the correlation id and secrets masked."""
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "msg": redact(record.getMessage()),
        }
        cid = _CORRELATION.get()
        if cid is not None:
            out["correlation_id"] = cid
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            out[key] = "***" if _SECRET_KEYS.search(key) else _plain(value)
        if record.exc_info and record.exc_info[0] is not None:
            # Type and message only: tracebacks' locals never reach the log.
            exc = record.exc_info[1]
            out["error"] = f"{record.exc_info[0].__name__}: {redact(str(exc))}"
        return json.dumps(out, default=str)


def _plain(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Driver debug logs can print hosts and connection parameters: keep them quiet.
    for noisy in ("asyncpg", "psycopg", "websockets", "aiohttp.access", "botocore", "boto3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
