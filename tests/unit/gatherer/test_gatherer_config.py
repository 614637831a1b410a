"""Gatherer configuration: YAML + environment, validation naming the key (gatherer/config.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from gatherer.config import load
from kalshi_data.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "gatherer.yaml"

KALSHI = {
    "rest_url": "http://127.0.0.1:1/trade-api/v2",
    "ws_url": "ws://127.0.0.1:1/trade-api/ws/v2",
    "key_id": "kid",
    "private_key_file": "/tmp/key.pem",
}
BASE: dict[str, object] = {
    "gatherer_id": "g1",
    "kalshi": KALSHI,
    "database": {"dsn": "postgresql://u:pw@127.0.0.1/db"},
    "spool_dir": "/tmp/spool",
}


def _write(tmp_path: Path, data: Mapping[str, object]) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_minimal_config_loads_with_defaults(tmp_path):
    """The required keys alone give a valid config with documented defaults."""
    cfg = load(_write(tmp_path, BASE), env={})
    assert cfg.gatherer_id == "g1"
    assert cfg.connections >= 1
    assert cfg.database.dsn.reveal() == "postgresql://u:pw@127.0.0.1/db"
    assert "pw" not in repr(cfg)


def test_spool_bound_default_zero_and_env(tmp_path):
    """spool_max_bytes: 4 GiB by default, 0 (no bound) accepted, set from the environment."""
    assert load(_write(tmp_path, BASE), env={}).spool_max_bytes == 4 << 30
    assert load(_write(tmp_path, {**BASE, "spool_max_bytes": 0}), env={}).spool_max_bytes == 0
    cfg = load(_write(tmp_path, BASE), env={"KALSHI_DATA_SPOOL_MAX_BYTES": "65536"})
    assert cfg.spool_max_bytes == 65536


def test_environment_overrides_nested_keys(tmp_path):
    """KALSHI_DATA_<KEY>__<SUB> overrides the YAML value."""
    cfg = load(
        _write(tmp_path, BASE),
        env={"KALSHI_DATA_CONNECTIONS": "5", "KALSHI_DATA_DATABASE__DSN": "postgresql:///x"},
    )
    assert cfg.connections == 5
    assert cfg.database.dsn.reveal() == "postgresql:///x"


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"connections": 0}, "connections"),
        ({"gatherer_id": "bad id!"}, "gatherer_id"),
        ({"kalshi": {**KALSHI, "ws_url": "http://x"}}, "kalshi.ws_url"),
        ({"http": {"listen": "nope"}}, "http.listen"),
        ({"snapshot_interval_s": -1}, "snapshot_interval_s"),
        ({"markets_per_subscription": "many"}, "markets_per_subscription"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"spool_max_bytes": -1}, "spool_max_bytes"),
        ({"spool_max_bytes": "4GiB"}, "spool_max_bytes"),
        ({"spool_max_bytes": 1.5}, "spool_max_bytes"),
        ({"spool_max_bytes": 1 << 51}, "spool_max_bytes"),
    ],
)
def test_bad_values_name_the_key(tmp_path, patch, key):
    """Every invalid value fails at load with a ConfigError naming its dotted key."""
    with pytest.raises(ConfigError) as info:
        load(_write(tmp_path, {**BASE, **patch}), env={})
    assert info.value.key == key


def test_missing_required_key_is_named(tmp_path):
    """A missing required section is reported by name."""
    data = {k: v for k, v in BASE.items() if k != "database"}
    with pytest.raises(ConfigError) as info:
        load(_write(tmp_path, data), env={})
    assert info.value.key == "database"


def test_example_file_is_valid():
    """examples/gatherer.yaml loads (secrets referenced by file are replaced by env here)."""
    cfg = load(EXAMPLE, env={"KALSHI_DATA_DATABASE__DSN": "postgresql:///g"})
    assert cfg.connections >= 1
