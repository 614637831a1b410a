"""The optional dependencies (pyproject extras): a command that needs one it lacks says which
extra to install, and a config's secretsmanager: reference names the aws extra."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kalshi_data.cli import DELEGATED, EXTRA_OF_MODULE, missing_extra
from kalshi_data.config import resolve_secret
from kalshi_data.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _without(modules: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``kalshi-data argv`` in a fresh interpreter where ``modules`` cannot be imported."""
    code = (
        "import sys\n"
        f"for m in {modules!r}:\n"
        "    sys.modules[m] = None\n"
        "from kalshi_data.cli import main\n"
        f"raise SystemExit(main({argv!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_extras_hold_the_optional_dependencies_and_dev_pulls_them_all():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for module, extra in EXTRA_OF_MODULE.items():
        dist = "boto3" if module == "botocore" else module
        assert dist not in base, f"{dist} is a hard dependency again"
        assert any(r.startswith(dist) for r in extras[extra]), (dist, extra)
        assert any(r.startswith(dist) for r in extras["all"]), dist
    assert "kalshi-data[all]" in extras["dev"]


@pytest.mark.parametrize(
    ("command", "missing", "extra"),
    [
        ("export", ["pyarrow"], "archive"),
        ("import", ["boto3"], "archive"),
        ("demo", ["rich"], "tools"),
    ],
)
def test_a_tool_without_its_extra_names_it(command: str, missing: list[str], extra: str):
    done = _without(missing, [command, "--help"])
    assert done.returncode == 2, done.stderr
    assert f"kalshi-data {command}: error: {missing[0]} is not installed" in done.stderr
    assert f"pip install 'kalshi-data[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_services_and_light_tools_run_without_any_extra():
    """With boto3, botocore, pyarrow and rich all unimportable, the services and the tools that
    do not need them still parse their command line."""
    for command in ("gatherer", "dedup", "sim", "retention", "restore-gatherer", "audit"):
        done = _without(list(EXTRA_OF_MODULE), [command, "--help"])
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert "usage:" in done.stdout
    assert {"gatherer", "dedup", "sim"} <= set(DELEGATED)


def test_an_unrelated_missing_module_is_not_blamed_on_an_extra():
    exc = ModuleNotFoundError("No module named 'yaml'", name="yaml")
    assert missing_extra("export", exc) is None
    rich = ModuleNotFoundError("No module named 'rich.live'", name="rich.live")
    assert missing_extra("chaos", rich) == (
        "rich is not installed; this command needs pip install 'kalshi-data[tools]'"
    )


def test_a_secretsmanager_reference_without_boto3_names_the_aws_extra(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setitem(sys.modules, "boto3", None)  # what an install without the extra sees
    with pytest.raises(ConfigError) as caught:
        resolve_secret("secretsmanager:kd/prod#dsn", "database.dsn", env={})
    assert "database.dsn" in str(caught.value)
    assert "pip install 'kalshi-data[aws]'" in str(caught.value)
