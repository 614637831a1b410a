"""Config inputs the fuzzer (bench/fuzz.py) found crashing the loader with a traceback.

Each must now be a ``ConfigError`` naming ``<file>`` (the file itself is the problem).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kalshi_data.config import MAX_CONFIG_VALUES, load_config
from kalshi_data.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Small:
    name: str = "x"


def _load(tmp_path: Path, content: bytes) -> ConfigError:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(Small, path, env={})
    return info.value


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    err = _load(tmp_path, b"name: caf\xc3\n")
    assert err.key == "<file>"
    assert "not UTF-8" in str(err)


@pytest.mark.parametrize("nested", ["[" * 5000 + "]" * 5000, "{a: " * 3000 + "1" + "}" * 3000])
def test_deep_nesting_is_a_config_error(tmp_path: Path, nested: str) -> None:
    err = _load(tmp_path, f"name: {nested}\n".encode())
    assert err.key == "<file>"
    assert "nests" in str(err)


def test_collection_as_key_is_a_config_error(tmp_path: Path) -> None:
    err = _load(tmp_path, b"? [1, 2]\n: 3\n")
    assert err.key == "<file>"
    assert "line 1" in str(err)


def test_alias_bomb_is_refused_before_expanding(tmp_path: Path) -> None:
    lines = ["a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    err = _load(tmp_path, ("\n".join(lines) + "\n").encode())  # 10^9 values once expanded
    assert err.key == "<file>"
    assert str(MAX_CONFIG_VALUES) in str(err)
