"""Configuration: frozen dataclasses built from YAML, environment overrides and secrets.

- Every key is checked against the dataclass: an unknown or mistyped key fails at start with a
  :class:`~kalshi_data.errors.ConfigError` naming its full dotted path (``gatherers[1].dsn``).
- ``KALSHI_DATA_<KEY>__<SUBKEY>=value`` overrides ``key.subkey`` (values parsed as YAML scalars,
  then checked against the field's type); an unknown variable under the prefix is an error too.
- A string value ``file:/path`` is replaced by that file's content (systemd ``LoadCredential=``),
  ``secretsmanager:<secret-id>`` or ``secretsmanager:<secret-id>#<json-key>`` by AWS Secrets
  Manager's value. Fields typed :class:`Secret` never show their value in ``repr``/``str``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kalshi_data.errors import ConfigError

T = TypeVar("T")
ENV_PREFIX = "KALSHI_DATA_"


class Secret:
    """A secret string: ``repr``/``str`` show ``***``; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself (pass it to a driver, never to a log)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def validate_listen(addr: str) -> tuple[str, int]:
    """Split ``host:port`` (port 0 = any free port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def _resolve_secret(value: str, key: str) -> str:
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from exc
    if value.startswith("secretsmanager:"):
        ref = value[len("secretsmanager:") :]
        secret_id, _, json_key = ref.partition("#")
        import boto3  # noqa: PLC0415 (only when a secret lives in AWS)

        try:
            client = boto3.client("secretsmanager")
            text = client.get_secret_value(SecretId=secret_id)["SecretString"]
        except Exception as exc:
            raise ConfigError(
                key,
                f"cannot fetch secret {secret_id!r} from Secrets Manager ({type(exc).__name__})",
            ) from exc
        if json_key:
            try:
                return str(json.loads(text)[json_key])
            except (ValueError, KeyError) as exc:
                raise ConfigError(
                    key, f"secret {secret_id!r} has no JSON key {json_key!r}"
                ) from exc
        return str(text)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _convert(value, a, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {type(value).__name__}")
        item_t = args[0] if args else Any
        items = [_convert(v, item_t, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if tp is Any:
        return value
    if tp is Secret:
        if not isinstance(value, str):
            raise ConfigError(key, "expected a string")
        return Secret(_resolve_secret(value, key))
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {type(value).__name__}")
        return _resolve_secret(value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a path, got {type(value).__name__}")
        return Path(value)
    raise ConfigError(key, f"unsupported field type {_type_name(tp)}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in data:
        if name not in fields:
            where = f"{prefix}.{name}" if prefix else str(name)
            raise ConfigError(where, "unknown key")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        where = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(where, f"missing required key ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(prefix or "<root>", str(exc)) from exc


def _apply_env(
    data: dict[str, Any], cls: type[Any], env: Mapping[str, str], prefix: str
) -> dict[str, Any]:
    for var, raw in env.items():
        if not var.startswith(prefix):
            continue
        path = [p.lower() for p in var[len(prefix) :].split("__")]
        target: dict[str, Any] = data
        tp: Any = cls
        for i, part in enumerate(path):
            hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
            if part not in hints:
                raise ConfigError(".".join(path[: i + 1]), f"unknown key (from {var})")
            tp = hints[part]
            if i == len(path) - 1:
                target[part] = yaml.safe_load(raw) if raw else raw
            else:
                nxt = target.get(part)
                if not isinstance(nxt, dict):
                    nxt = {}
                    target[part] = nxt
                target = nxt
                for a in (tp, *typing.get_args(tp)):
                    if dataclasses.is_dataclass(a):
                        tp = a
                        break
    return data


def load_config(
    cls: type[T],
    path: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
    data: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from a YAML file (or ``data``) plus environment overrides; validate all."""
    raw: Any
    if data is not None:
        raw = dict(data)
    elif path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("<file>", f"{path} is not valid YAML: {exc}") from exc
    else:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("<root>", "the configuration must be a mapping")
    merged = _apply_env(raw, cls, os.environ if env is None else env, env_prefix)
    return _build(cls, merged, "")
