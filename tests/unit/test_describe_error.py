"""The one error summariser: type and first line, secrets masked, bounded."""

from __future__ import annotations

from kalshi_data.errors import ConfigError, describe_error


def test_a_dsn_password_in_an_exception_never_reaches_the_summary():
    exc = OSError(
        "could not connect to postgresql://dedup:s3cr3t-pw@db.internal:5432/prod\nDETAIL: more"
    )
    text = describe_error(exc)
    assert "s3cr3t-pw" not in text
    assert text.startswith("OSError: could not connect to postgresql://dedup:***@db.internal")
    assert "DETAIL" not in text  # first line only


def test_key_value_secrets_and_tokens_are_masked():
    exc = RuntimeError("auth failed: password=hunter2 token: abc.def Bearer xyz123")
    text = describe_error(exc)
    for secret in ("hunter2", "abc.def", "xyz123"):
        assert secret not in text


def test_the_cut_comes_after_masking_and_an_empty_message_gives_the_type():
    long_secret = "x" * 400
    text = describe_error(ValueError(f"password={long_secret}"), limit=40)
    assert len(text) <= 40
    assert "xxxx" not in text
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(ConfigError("a.b", "bad")).startswith("ConfigError: config error at")
