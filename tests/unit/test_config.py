"""Config loading: unknown and mistyped keys are named; env overrides; secrets stay hidden."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Cfg:
    name: str
    database: Db
    sources: tuple[Source, ...] = ()
    workers: int = 2
    tags: list[str] = field(default_factory=list)
    mode: Literal["live", "replay"] = "live"
    limit: int | None = None
    spool: Path | None = None
    pair: tuple[str, int] = ("a", 1)


BASE = {"name": "a", "database": {"dsn": "x"}}


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    """A typo deep in a list names its full dotted path."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "name: a\ndatabase: {dsn: x}\nsources:\n  - {id: g1, dsn: x}\n  - {id: g2, dssn: x}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, f, env={})
    assert info.value.key == "sources[1].dssn"
    assert str(info.value).startswith("config error at 'sources[1].dssn': unknown key")


def test_wrong_type_and_missing_key_are_named() -> None:
    """A wrong type or a missing required key names the key and what was expected."""
    with pytest.raises(ConfigError, match="'workers'.*integer"):
        load_config(Cfg, None, env={}, data={**BASE, "workers": "2"})
    with pytest.raises(ConfigError, match=r"'database\.dsn'.*missing.*Secret"):
        load_config(Cfg, None, env={}, data={"name": "a", "database": {}})
    with pytest.raises(ConfigError, match=r"'sources\[0\]\.enabled'.*true or false"):
        load_config(
            Cfg, None, env={}, data={**BASE, "sources": [{"id": "g", "dsn": "x", "enabled": "no"}]}
        )
    with pytest.raises(ConfigError, match="'mode'.*one of"):
        load_config(Cfg, None, env={}, data={**BASE, "mode": "paper"})
    with pytest.raises(ConfigError, match=r"'database\.timeout_s'.*finite"):
        load_config(
            Cfg,
            None,
            env={},
            data={"name": "a", "database": {"dsn": "x", "timeout_s": float("nan")}},
        )
    with pytest.raises(ConfigError, match=r"'pair'.*2 items"):
        load_config(Cfg, None, env={}, data={**BASE, "pair": ["a", 1, 2]})


def test_values_and_defaults_are_typed() -> None:
    """Defaults fill gaps; tuples, optionals and paths come out as their declared types."""
    cfg = load_config(
        Cfg,
        None,
        env={},
        data={
            **BASE,
            "sources": [{"id": "g1", "dsn": "y"}],
            "spool": "/var/spool",
            "pair": ["b", 2],
        },
    )
    assert cfg.sources == (Source("g1", Secret("y")),)
    assert cfg.spool == Path("/var/spool")
    assert cfg.pair == ("b", 2)
    assert cfg.limit is None
    assert cfg.workers == 2


def test_environment_overrides_are_parsed_by_field_type() -> None:
    """KALSHI_DATA_A__B overrides a.b; text is parsed by the field's type, not as YAML."""
    password = secrets.token_hex(4)
    env = {
        "KALSHI_DATA_DATABASE__TIMEOUT_S": "9.5",
        "KALSHI_DATA_WORKERS": "4",
        "KALSHI_DATA_NAME": "123",  # a str field keeps digits as text
        "KALSHI_DATA_DATABASE__DSN": f"postgresql://u:{password}@h:5/db?x=yes",
        "KALSHI_DATA_TAGS": "a, b",
        "KALSHI_DATA_MODE": "replay",
        "KALSHI_DATA_LIMIT": "",
        "KALSHI_DATA_SOURCES__1__ENABLED": "off",
        "KALSHI_DATA_PG_BINDIR": "/usr/lib/postgresql/16/bin",  # a tool's variable: ignored
    }
    data = {**BASE, "limit": 5, "sources": [{"id": "g1", "dsn": "x"}, {"id": "g2", "dsn": "x"}]}
    snapshot = json.dumps(data, sort_keys=True)
    cfg = load_config(Cfg, None, env=env, data=data)
    assert cfg.database.timeout_s == 9.5
    assert cfg.workers == 4
    assert cfg.name == "123"
    assert cfg.database.dsn.reveal() == f"postgresql://u:{password}@h:5/db?x=yes"
    assert cfg.tags == ["a", "b"]
    assert cfg.mode == "replay"
    assert cfg.limit is None
    assert [s.enabled for s in cfg.sources] == [True, False]
    assert json.dumps(data, sort_keys=True) == snapshot  # the caller's data is not mutated


def test_unknown_or_bad_environment_variables_are_named() -> None:
    """An unknown variable under the prefix, or an unparsable value, names the key."""
    with pytest.raises(ConfigError, match=r"'database\.timeot_s'.*KALSHI_DATA_DATABASE__TIMEOT_S"):
        load_config(Cfg, None, env={"KALSHI_DATA_DATABASE__TIMEOT_S": "1"}, data=BASE)
    with pytest.raises(ConfigError, match="'workers'.*integer"):
        load_config(Cfg, None, env={"KALSHI_DATA_WORKERS": "four"}, data=BASE)
    with pytest.raises(ConfigError, match=r"'sources\[3\]'.*no such list item"):
        load_config(Cfg, None, env={"KALSHI_DATA_SOURCES__3__ID": "g"}, data=BASE)
    with pytest.raises(ConfigError, match=r"'workers\.x'.*unknown key"):
        load_config(Cfg, None, env={"KALSHI_DATA_WORKERS__X": "1"}, data=BASE)


def test_yaml_file_problems_are_reported_without_content(tmp_path: Path) -> None:
    """Missing file, duplicate keys and syntax errors are ConfigErrors; no line is quoted."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Cfg, tmp_path / "absent.yaml", env={})
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\ndatabase: {dsn: x}\nworkers: 1\nworkers: 2\n")
    with pytest.raises(ConfigError, match="'workers'.*duplicate key at line 4"):
        load_config(Cfg, dup, env={})
    password = secrets.token_hex(6)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: a\ndatabase: {{dsn: 'postgresql://u:{password}@h/db'\n")
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, bad, env={})
    assert "line" in str(info.value)
    assert password not in str(info.value)


def test_file_secret_is_read_and_hidden(tmp_path: Path) -> None:
    """file: secrets are read from disk, and neither repr, str nor format shows them."""
    password = secrets.token_hex(8)
    secret = tmp_path / "dsn"
    secret.write_text(f"postgresql://u:{password}@db/x\n")
    cfg = load_config(Cfg, None, env={}, data={"name": "a", "database": {"dsn": f"file:{secret}"}})
    assert cfg.database.dsn.reveal() == f"postgresql://u:{password}@db/x"
    assert password not in repr(cfg)
    assert password not in str(cfg.database.dsn)
    assert password not in f"{cfg.database.dsn}"
    assert bool(cfg.database.dsn)
    assert not Secret("")


def test_missing_secret_file_names_the_key(tmp_path: Path) -> None:
    """An unreadable secret file fails at start naming the key, not the secret."""
    with pytest.raises(ConfigError, match="'database.dsn'"):
        load_config(
            Cfg, None, env={}, data={"name": "a", "database": {"dsn": f"file:{tmp_path}/none"}}
        )


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's Secrets Manager on 127.0.0.1, stopped afterwards."""
    from moto.server import ThreadedMotoServer

    from kalshi_data.testing.pgcluster import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
    }


def test_secrets_manager_secret(moto_endpoint: str) -> None:
    """secretsmanager:<id>#<key> and secretsmanager:<id> are fetched from Secrets Manager."""
    import boto3

    env = _aws_env(moto_endpoint)
    password = secrets.token_hex(8)
    dsn = f"postgresql://u:{password}@h/db"
    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_secret(Name="kd/prod", SecretString=json.dumps({"dsn": dsn}))
    client.create_secret(Name="kd/plain", SecretString=dsn)
    cfg = load_config(
        Cfg,
        None,
        env=env,
        data={
            "name": "a",
            "database": {"dsn": "secretsmanager:kd/prod#dsn"},
            "sources": [{"id": "g1", "dsn": "secretsmanager:kd/plain"}],
        },
    )
    assert cfg.database.dsn.reveal() == dsn
    assert cfg.sources[0].dsn.reveal() == dsn
    assert password not in repr(cfg)
    with pytest.raises(ConfigError, match=r"'database\.dsn'.*no JSON key 'nope'"):
        load_config(
            Cfg,
            None,
            env=env,
            data={"name": "a", "database": {"dsn": "secretsmanager:kd/prod#nope"}},
        )
    with pytest.raises(ConfigError, match=r"'database\.dsn'.*ResourceNotFoundException"):
        load_config(
            Cfg, None, env=env, data={"name": "a", "database": {"dsn": "secretsmanager:kd/absent"}}
        )


def test_validate_listen() -> None:
    """host:port strings are split; malformed ones are refused."""
    assert validate_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert validate_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("8080", "host:", ":80", "h:70000", "::1:80", "h:８０"):
        with pytest.raises(ValueError, match="host:port"):
            validate_listen(bad)
