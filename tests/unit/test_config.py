"""Config loading: unknown and mistyped keys are named; env overrides; secrets stay hidden."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kalshi_data.config import Secret, load_config, validate_listen
from kalshi_data.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Db:
    dsn: Secret
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    dsn: Secret


@dataclass(frozen=True, slots=True)
class Cfg:
    name: str
    database: Db
    sources: tuple[Source, ...] = ()
    workers: int = 2
    tags: list[str] = field(default_factory=list)


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    """A typo deep in a list names its full dotted path."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "name: a\ndatabase: {dsn: x}\nsources:\n  - {id: g1, dsn: x}\n  - {id: g2, dssn: x}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, f, env={})
    assert info.value.key == "sources[1].dssn"
    assert "unknown key" in str(info.value)


def test_wrong_type_and_missing_key_are_named() -> None:
    """A wrong type or a missing required key names the key and what was expected."""
    with pytest.raises(ConfigError, match="'workers'.*integer"):
        load_config(Cfg, None, env={}, data={"name": "a", "database": {"dsn": "x"}, "workers": "2"})
    with pytest.raises(ConfigError, match=r"'database\.dsn'.*missing"):
        load_config(Cfg, None, env={}, data={"name": "a", "database": {}})


def test_environment_overrides_and_unknown_variables() -> None:
    """KALSHI_DATA_A__B overrides a.b; an unknown variable under the prefix is an error."""
    cfg = load_config(
        Cfg,
        None,
        env={"KALSHI_DATA_DATABASE__TIMEOUT_S": "9.5", "KALSHI_DATA_WORKERS": "4"},
        data={"name": "a", "database": {"dsn": "x"}},
    )
    assert cfg.database.timeout_s == 9.5
    assert cfg.workers == 4
    with pytest.raises(ConfigError, match="database.timeot_s"):
        load_config(
            Cfg,
            None,
            env={"KALSHI_DATA_DATABASE__TIMEOT_S": "1"},
            data={"name": "a", "database": {"dsn": "x"}},
        )


def test_file_secret_is_read_and_hidden(tmp_path: Path) -> None:
    """file: secrets are read from disk, and neither repr nor str shows them."""
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://u:hunter2@db/x\n")
    cfg = load_config(Cfg, None, env={}, data={"name": "a", "database": {"dsn": f"file:{secret}"}})
    assert cfg.database.dsn.reveal() == "postgresql://u:hunter2@db/x"
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in str(cfg.database.dsn)


def test_missing_secret_file_names_the_key(tmp_path: Path) -> None:
    """An unreadable secret file fails at start naming the key, not the secret."""
    with pytest.raises(ConfigError, match="'database.dsn'"):
        load_config(
            Cfg, None, env={}, data={"name": "a", "database": {"dsn": f"file:{tmp_path}/none"}}
        )


def test_secrets_manager_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """secretsmanager:<id>#<key> is fetched from (moto's) Secrets Manager on loopback."""
    import boto3
    from moto.server import ThreadedMotoServer

    from kalshi_data.pgcluster import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for k, v in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{port}",
        }.items():
            monkeypatch.setenv(k, v)
        boto3.client("secretsmanager").create_secret(
            Name="kd/prod", SecretString='{"dsn": "postgresql://u:pw@h/db"}'
        )
        cfg = load_config(
            Cfg, None, env={}, data={"name": "a", "database": {"dsn": "secretsmanager:kd/prod#dsn"}}
        )
        assert cfg.database.dsn.reveal() == "postgresql://u:pw@h/db"
    finally:
        server.stop()


def test_validate_listen() -> None:
    """host:port strings are split; malformed ones are refused."""
    assert validate_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="host:port"):
        validate_listen("8080")
