"""JSON logs: one object per line, correlation ids, secrets masked."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from kalshi_data.config import Secret
from kalshi_data.jsonlog import JsonFormatter, correlation, redact, setup_logging


def _render(record_msg: str, **extra: object) -> dict[str, object]:
    fmt = JsonFormatter("test")
    record = logging.makeLogRecord({"msg": record_msg, "levelname": "INFO", "name": "t", **extra})
    return dict(json.loads(fmt.format(record)))


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """setup_logging() into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    setup_logging("svc-test", "DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_dsn_passwords_and_keys_are_masked() -> None:
    """Passwords in DSNs (even with '@'), password= pairs and secret-named extras are masked."""
    pw = secrets.token_hex(6)
    out = _render(
        f"connect postgresql://dedup:{pw}@x@db:5432/prod password={pw} 'token': '{pw}'", dsn="x"
    )
    text = json.dumps(out)
    assert pw not in text
    assert "postgresql://dedup:***@db:5432/prod" in str(out["msg"])
    assert out["dsn"] == "***"
    assert redact("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----") == (
        "***private key***"
    )
    assert redact("Authorization: Bearer abc.def") == "Authorization: *** ***"
    assert redact("rate limiter tokens=5") == "rate limiter tokens=5"  # not a secret


def test_nested_extras_are_scrubbed() -> None:
    """Secret-named keys are masked at any depth of an extra; Secret values print as ***."""
    pw = secrets.token_hex(6)
    out = _render(
        "config loaded",
        config={"database": {"password": pw, "host": "db"}, "urls": [f"postgres://u:{pw}@h/d"]},
        key=Secret(pw),
        rows=3,
    )
    assert pw not in json.dumps(out)
    assert out["config"] == {
        "database": {"password": "***", "host": "db"},
        "urls": ["postgres://u:***@h/d"],
    }
    assert out["key"] == "***"
    assert out["rows"] == 3


def test_correlation_id_on_every_line_inside_the_block() -> None:
    """Lines inside `correlation()` carry its id; lines outside do not."""
    with correlation("batch-42") as cid:
        inside = _render("merging")
    outside = _render("idle")
    assert cid == "batch-42"
    assert inside["correlation_id"] == "batch-42"
    assert "correlation_id" not in outside
    with correlation() as fresh, correlation() as other:
        assert fresh != other
        assert _render("x")["correlation_id"] == other


async def test_correlation_follows_tasks(captured: io.StringIO) -> None:
    """A task created inside the block logs with the block's id, across awaits."""
    log = logging.getLogger("kd.test")

    async def work() -> None:
        await asyncio.sleep(0)
        log.info("in task")

    with correlation("batch-7"):
        task = asyncio.create_task(work())
    log.info("outside")
    await task
    by_msg = {line["msg"]: line for line in _lines(captured)}
    assert by_msg["in task"]["correlation_id"] == "batch-7"
    assert "correlation_id" not in by_msg["outside"]


def test_setup_logging_writes_one_json_object_per_line(captured: io.StringIO) -> None:
    """Every line is a JSON object with ts (UTC), level, logger, msg, service and extras."""
    pw = secrets.token_hex(6)
    log = logging.getLogger("kd.test")
    log.info("first %s", "line", extra={"gatherer": 2, "market": "KXBTC-1"})
    log.warning("uses postgresql://u:%s@h/db", pw)
    try:
        raise RuntimeError(f"could not connect: password={pw}")
    except RuntimeError:
        log.exception("boom")
    logging.getLogger("asyncpg").info("driver chatter")  # muted below WARNING
    lines = _lines(captured)
    assert [line["msg"] for line in lines] == ["first line", "uses postgresql://u:***@h/db", "boom"]
    first = lines[0]
    assert first["level"] == "INFO"
    assert first["logger"] == "kd.test"
    assert first["service"] == "svc-test"
    assert (first["gatherer"], first["market"]) == (2, "KXBTC-1")
    ts = datetime.fromisoformat(str(first["ts"]))
    assert ts.utcoffset() == timedelta(0)
    assert lines[2]["error"] == "RuntimeError: could not connect: password=***"
    assert "Traceback" in str(lines[2]["traceback"])
    assert pw not in captured.getvalue()
