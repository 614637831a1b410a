"""JSON logs: one object per line, correlation ids, secrets masked."""

from __future__ import annotations

import json
import logging

from kalshi_data.jsonlog import JsonFormatter, correlation, redact


def _render(record_msg: str, **extra: object) -> dict[str, object]:
    fmt = JsonFormatter("test")
    record = logging.makeLogRecord({"msg": record_msg, "levelname": "INFO", "name": "t", **extra})
    return dict(json.loads(fmt.format(record)))


def test_dsn_passwords_and_keys_are_masked() -> None:
    """Passwords in DSNs, password= pairs and secret-named extras never reach the output."""
    out = _render("connect postgresql://dedup:s3cret@db:5432/prod password=hunter2", dsn="x")
    assert "s3cret" not in json.dumps(out)
    assert "hunter2" not in json.dumps(out)
    assert out["dsn"] == "***"
    assert redact("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----") == (
        "***private key***"
    )


def test_correlation_id_on_every_line_inside_the_block() -> None:
    """Lines inside `correlation()` carry its id; lines outside do not."""
    with correlation("batch-42") as cid:
        inside = _render("merging")
    outside = _render("idle")
    assert cid == "batch-42"
    assert inside["correlation_id"] == "batch-42"
    assert "correlation_id" not in outside
