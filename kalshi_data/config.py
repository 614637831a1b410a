"""Configuration: frozen dataclasses built from YAML, environment overrides and secrets.

- Every key is checked against the dataclass: an unknown or mistyped key fails at start with a
  :class:`~kalshi_data.errors.ConfigError` naming its full dotted path (``gatherers[1].dsn``).
  A key given twice in the YAML file is an error too (PyYAML would keep the last silently).
- ``KALSHI_DATA_<KEY>__<SUBKEY>=value`` overrides ``key.subkey``; ``__<N>__`` indexes a list
  (``KALSHI_DATA_GATHERERS__1__DSN``). Values are parsed by the field's type (a ``str`` field
  takes the text verbatim; ``bool`` accepts true/false/1/0/yes/no/on/off; lists take
  ``a,b`` or a YAML flow list; an empty value sets an optional field to None). An unknown
  variable under the prefix is an error, except the tools' own (:data:`TOOL_ENV_VARS`).
- A string value ``file:/path`` is replaced by that file's stripped content (systemd
  ``LoadCredential=``), ``secretsmanager:<secret-id>`` or ``secretsmanager:<secret-id>#<json-key>``
  by AWS Secrets Manager's value (client created on first use; region, endpoint and credentials
  from the usual AWS variables). Fields typed :class:`Secret` never show their value in
  ``repr``/``str``; errors never quote a value that could be secret.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kalshi_data.errors import ConfigError

T = TypeVar("T")
ENV_PREFIX = "KALSHI_DATA_"

#: Variables under the prefix that belong to tools, not to a service's configuration.
TOOL_ENV_VARS = frozenset(
    {
        "KALSHI_DATA_PG_BINDIR",
        "KALSHI_DATA_TEST_TMP",
        "KALSHI_DATA_MIGRATIONS_DIR",
        "KALSHI_DATA_DEMO_KEEP",
    }
)

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class Secret:
    """A secret string: ``repr``/``str``/``format`` show ``***``; ``reveal()`` gives the value.

    Args:
        value: The secret text.
    """

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

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def validate_listen(addr: str) -> tuple[str, int]:
    """Split a ``host:port`` listen address (``[::1]:9100`` for IPv6; port 0 = any free port).

    Args:
        addr: The address.

    Returns:
        ``(host, port)``.

    Raises:
        ValueError: Not ``host:port`` with a port in 0..65535.
    """
    host, sep, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # a bare IPv6 address is ambiguous: ask for brackets
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"expected host:port (IPv6 as [addr]:port), got {addr!r}")
    return host, int(port)


# ---------------------------------------------------------------------------------- secrets
class _Secrets:
    """Resolves ``file:`` and ``secretsmanager:`` references; one AWS client, made on first use."""

    def __init__(self, env: Mapping[str, str], endpoint_url: str | None) -> None:
        self._env = env
        self._endpoint_url = endpoint_url
        self._client: Any = None
        self._fetched: dict[str, str] = {}

    def _secretsmanager(self) -> Any:
        if self._client is None:
            import boto3  # noqa: PLC0415 (only when a secret lives in AWS)

            env = self._env
            # None lets boto3 fall back to its own chain (os.environ, instance profile).
            session = boto3.session.Session(
                aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                aws_session_token=env.get("AWS_SESSION_TOKEN"),
                region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            )
            endpoint = (
                self._endpoint_url
                or env.get("AWS_ENDPOINT_URL_SECRETS_MANAGER")
                or env.get("AWS_ENDPOINT_URL")
            )
            self._client = session.client("secretsmanager", endpoint_url=endpoint)
        return self._client

    def _fetch(self, secret_id: str, key: str) -> str:
        if secret_id not in self._fetched:
            if importlib.util.find_spec("boto3") is None:
                raise ConfigError(
                    key,
                    "secretsmanager: references need boto3, which is not installed: "
                    "pip install 'kalshi-data[aws]'",
                )
            try:
                answer = self._secretsmanager().get_secret_value(SecretId=secret_id)
                text = answer["SecretString"]
            except Exception as exc:
                # The error code (ResourceNotFoundException, AccessDeniedException...) or the
                # type: never the message, which may echo request details.
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                detail = code or type(exc).__name__
                raise ConfigError(
                    key, f"cannot fetch secret {secret_id!r} from Secrets Manager ({detail})"
                ) from None
            self._fetched[secret_id] = str(text)
        return self._fetched[secret_id]

    def resolve(self, value: str, key: str) -> str:
        """The value, with a secret reference replaced by the secret."""
        if value.startswith("file:"):
            path = Path(value[len("file:") :])
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from None
        if value.startswith("secretsmanager:"):
            secret_id, _, json_key = value[len("secretsmanager:") :].partition("#")
            if not secret_id:
                raise ConfigError(key, "secretsmanager: needs a secret id")
            text = self._fetch(secret_id, key)
            if not json_key:
                return text
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
            if not isinstance(doc, dict) or json_key not in doc:
                raise ConfigError(key, f"secret {secret_id!r} has no JSON key {json_key!r}")
            return str(doc[json_key])
        return value


# ------------------------------------------------------------------------------------ types
def resolve_secret(value: str, key: str, env: Mapping[str, str] | None = None) -> str:
    """One value with a ``file:``/``secretsmanager:`` reference resolved (a CLI argument, say).

    Raises ConfigError naming ``key`` when the reference cannot be read; never echoes the secret.
    """
    return _Secrets(os.environ if env is None else env, None).resolve(value, key)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("kalshi_data.config.", "")


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None`` (one X), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and len(inner) < len(typing.get_args(tp)):
            return inner[0]
    return None


def _item_types(tp: Any, n: int, key: str) -> list[Any]:
    """Element types of a list/tuple annotation for ``n`` items."""
    args = typing.get_args(tp)
    if not args:
        return [Any] * n
    if typing.get_origin(tp) is list or (len(args) == 2 and args[1] is Ellipsis):
        return [args[0]] * n
    if len(args) != n:
        raise ConfigError(key, f"expected {len(args)} items, got {n}")
    return list(args)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _init_fields(cls: type[Any]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _convert(value: Any, tp: Any, key: str, secrets: _Secrets) -> Any:
    """``value`` checked (and converted) as field type ``tp``; one converter per kind of type."""
    structural = _STRUCTURAL.get(typing.get_origin(tp))
    if structural is not None:
        return structural(value, tp, key, secrets)
    if _is_dataclass_type(tp):
        return _convert_dataclass(value, tp, key, secrets)
    scalar = _SCALARS.get(tp)
    if scalar is None:
        raise ConfigError(key, f"unsupported field type {_type_name(tp)}")
    return scalar(value, tp, key, secrets)


def _convert_union(value: Any, tp: Any, key: str, secrets: _Secrets) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors: list[ConfigError] = []
    for a in (a for a in args if a is not type(None)):
        try:
            return _convert(value, a, key, secrets)
        except ConfigError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigError(key, f"expected {_type_name(tp)}")


def _convert_literal(value: Any, tp: Any, key: str, _secrets: _Secrets) -> Any:
    args = typing.get_args(tp)
    if not any(type(value) is type(a) and value == a for a in args):  # 1 is not True
        raise ConfigError(key, f"must be one of {list(args)}, got {value!r}")
    return value


def _convert_sequence(value: Any, tp: Any, key: str, secrets: _Secrets) -> Any:
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"expected a list, got {type(value).__name__}")
    item_types = _item_types(tp, len(value), key)
    items = [
        _convert(v, t, f"{key}[{i}]", secrets)
        for i, (v, t) in enumerate(zip(value, item_types, strict=True))
    ]
    return tuple(items) if typing.get_origin(tp) is tuple else items


def _convert_dict(value: Any, tp: Any, key: str, secrets: _Secrets) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    item = typing.get_args(tp)[1]
    return {str(k): _convert(v, item, f"{key}.{k}", secrets) for k, v in value.items()}


def _convert_dataclass(value: Any, tp: Any, key: str, secrets: _Secrets) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping ({tp.__name__}), got {type(value).__name__}")
    return _build(tp, value, key, secrets)


def _convert_any(value: Any, _tp: Any, _key: str, _secrets: _Secrets) -> Any:
    return value


def _convert_secret(value: Any, _tp: Any, key: str, secrets: _Secrets) -> Any:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string (secret), got {type(value).__name__}")
    return Secret(secrets.resolve(value, key))


def _convert_str(value: Any, _tp: Any, key: str, secrets: _Secrets) -> Any:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {type(value).__name__}")
    return secrets.resolve(value, key)


def _convert_bool(value: Any, _tp: Any, key: str, _secrets: _Secrets) -> Any:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _convert_int(value: Any, _tp: Any, key: str, _secrets: _Secrets) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    return value


def _convert_float(value: Any, _tp: Any, key: str, _secrets: _Secrets) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return float(value)


def _convert_path(value: Any, _tp: Any, key: str, _secrets: _Secrets) -> Any:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a path, got {value!r}")
    return Path(value)


_Converter = Callable[[Any, Any, str, "_Secrets"], Any]

#: Converters for generic annotations, by ``typing.get_origin``.
_STRUCTURAL: dict[Any, _Converter] = {
    typing.Union: _convert_union,
    types.UnionType: _convert_union,
    typing.Literal: _convert_literal,
    tuple: _convert_sequence,
    list: _convert_sequence,
    dict: _convert_dict,
}
#: Converters for plain field types (``Any`` passes the value through unchecked).
_SCALARS: dict[Any, _Converter] = {
    Any: _convert_any,
    Secret: _convert_secret,
    str: _convert_str,
    bool: _convert_bool,
    int: _convert_int,
    float: _convert_float,
    Path: _convert_path,
}


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, secrets: _Secrets) -> T:
    hints = typing.get_type_hints(cls)
    fields = _init_fields(cls)
    for name in data:
        if name not in fields:
            where = f"{prefix}.{name}" if prefix else str(name)
            raise ConfigError(where, "unknown key")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        where = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], where, secrets)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(where, f"missing required key ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ validation
        raise ConfigError(prefix or "<root>", str(exc)) from exc


# -------------------------------------------------------------------------------------- env
def _parse_env(raw: str, tp: Any, key: str) -> Any:
    """Text from an environment variable, as the value ``tp`` expects (checked later)."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if raw == "" else _parse_env(raw, inner, key)
    origin = typing.get_origin(tp)
    parser = _ENV_BY_ORIGIN.get(origin) if origin is not None else _ENV_BY_TYPE.get(tp)
    if parser is not None:
        return parser(raw, tp, key)
    if origin is dict or _is_dataclass_type(tp) or origin in (typing.Union, types.UnionType):
        return _yaml_value(raw, key)
    return raw  # str, Secret, Path, Any: the text itself


def _env_literal(raw: str, tp: Any, key: str) -> Any:
    for arg in typing.get_args(tp):
        text = str(arg).lower() if isinstance(arg, bool) else str(arg)
        if text == (raw.lower() if isinstance(arg, bool) else raw):
            return arg
    raise ConfigError(key, f"must be one of {list(typing.get_args(tp))}, got {raw!r}")


def _env_bool(raw: str, _tp: Any, key: str) -> Any:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(key, f"expected true or false, got {raw!r}")


def _env_int(raw: str, _tp: Any, key: str) -> Any:
    try:
        return int(raw, 10)
    except ValueError:
        raise ConfigError(key, f"expected an integer, got {raw!r}") from None


def _env_float(raw: str, _tp: Any, key: str) -> Any:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(key, f"expected a number, got {raw!r}") from None


def _env_sequence(raw: str, tp: Any, key: str) -> Any:
    """``a,b`` (each item parsed by its type) or a YAML flow list ``[a, b]``."""
    if raw.lstrip().startswith("["):
        return _yaml_value(raw, key)
    parts = [p.strip() for p in raw.split(",")] if raw.strip() else []
    return [
        _parse_env(p, t, f"{key}[{i}]")
        for i, (p, t) in enumerate(zip(parts, _item_types(tp, len(parts), key), strict=True))
    ]


_EnvParser = Callable[[str, Any, str], Any]

#: Environment parsers for generic annotations, by ``typing.get_origin``.
_ENV_BY_ORIGIN: dict[Any, _EnvParser] = {
    typing.Literal: _env_literal,
    tuple: _env_sequence,
    list: _env_sequence,
}
#: Environment parsers for plain types (others take the text itself, or YAML; see above).
_ENV_BY_TYPE: dict[Any, _EnvParser] = {bool: _env_bool, int: _env_int, float: _env_float}


def _yaml_value(raw: str, key: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(key, "the environment value is not valid YAML") from None


#: Most values a configuration may expand to: YAML aliases can make a short file stand for
#: billions of values ("billion laughs"); a real configuration has a few hundred.
MAX_CONFIG_VALUES = 100_000


def _plain(value: Any, budget: list[int] | None = None) -> Any:
    """A deep copy with every mapping as a dict and every sequence as a list (never mutate
    the caller's data); refuses more than :data:`MAX_CONFIG_VALUES` values."""
    if budget is None:
        budget = [MAX_CONFIG_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(
            "<file>", f"the configuration expands to more than {MAX_CONFIG_VALUES} values"
        )
    if isinstance(value, Mapping):
        return {k: _plain(v, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, budget) for v in value]
    return value


def _apply_one(data: dict[str, Any], cls: type[Any], var: str, raw: str, parts: list[str]) -> None:
    container: Any = data
    tp: Any = cls
    where = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        tp = _optional_inner(tp) or tp
        if _is_dataclass_type(tp):
            if part not in _init_fields(tp):
                name = f"{where}.{part}" if where else part
                raise ConfigError(name, f"unknown key (from {var})")
            where = f"{where}.{part}" if where else part
            tp = typing.get_type_hints(tp)[part]
            if last:
                container[part] = _parse_env(raw, tp, where)
                return
            child = container.get(part)
            if child is None:
                child = {} if _is_dataclass_type(_optional_inner(tp) or tp) else []
                container[part] = child
            container = child
        elif typing.get_origin(tp) in (tuple, list) and part.isdigit():
            index = int(part)
            where = f"{where}[{index}]"
            if not isinstance(container, list) or index >= len(container):
                raise ConfigError(where, f"no such list item to override (from {var})")
            tp = _item_types(tp, len(container), where)[index]
            if last:
                container[index] = _parse_env(raw, tp, where)
                return
            container = container[index]
        else:
            raise ConfigError(
                f"{where}.{part}", f"unknown key: {where} has no sub-keys (from {var})"
            )
        if not isinstance(container, dict | list):
            raise ConfigError(where, f"expected a mapping or list, got {type(container).__name__}")


def _apply_env(
    data: dict[str, Any],
    cls: type[Any],
    env: Mapping[str, str],
    prefix: str,
    ignore: Collection[str],
) -> None:
    for var in sorted(env):  # a stable order: deterministic errors
        if not var.startswith(prefix) or var in ignore:
            continue
        parts = [p.lower() for p in var[len(prefix) :].split("__")]
        if not all(parts):
            raise ConfigError(var, "malformed override variable (empty key segment)")
        _apply_one(data, cls, var, env[var], parts)


# ------------------------------------------------------------------------------------- YAML
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool | None):
            raise ConfigError(
                "<file>", f"the key at line {key_node.start_mark.line + 1} is not a plain value"
            )
        if key in seen:
            raise ConfigError(
                str(key), f"duplicate key at line {key_node.start_mark.line + 1} of the file"
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        # Problem and position only: PyYAML's own text quotes the line, which may hold a secret.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("<file>", f"{path} is not valid YAML: {exc.problem}{where}") from None
    except yaml.YAMLError:
        raise ConfigError("<file>", f"{path} is not valid YAML") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError("<file>", f"{path} nests collections too deeply") from None


def load_config(
    cls: type[T],
    path: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
    data: Mapping[str, Any] | None = None,
    secrets_endpoint_url: str | None = None,
    ignore_env: Collection[str] = TOOL_ENV_VARS,
) -> T:
    """Build and validate ``cls`` from a YAML file (or ``data``) plus environment overrides.

    Args:
        cls: A (frozen, slotted) dataclass; nested dataclasses, lists and tuples of them,
            ``str``/``int``/``float``/``bool``/``Path``/:class:`Secret`, ``Optional``,
            ``Literal`` and ``dict[str, X]`` fields are understood.
        path: YAML file, or None for defaults + environment only.
        env: Environment to read overrides (and AWS settings) from; None = ``os.environ``.
        env_prefix: Prefix of override variables.
        data: Already-parsed configuration used instead of ``path`` (never mutated).
        secrets_endpoint_url: Secrets Manager endpoint (tests, VPC endpoints).
        ignore_env: Variables under the prefix that are not configuration.

    Returns:
        The configuration object.

    Raises:
        ConfigError: Naming the offending key: unknown, missing, mistyped, unreadable secret.
    """
    raw: Any
    if data is not None:
        raw = data
    elif path is not None:
        raw = _read_yaml(Path(path))
        if raw is None:
            raw = {}
    else:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", "the configuration must be a mapping")
    if env is None:
        env = os.environ
    merged: dict[str, Any] = _plain(raw)
    _apply_env(merged, cls, env, env_prefix, ignore_env)
    return _build(cls, merged, "", _Secrets(env, secrets_endpoint_url))
