"""The installed artifact: the wheel built from the tracked files, installed into a fresh venv
outside the checkout: without extras, the services run and a tool that needs one names it; with
``[all]``, it runs every command and migrates real databases with its shipped SQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from kalshi_data.cli import DELEGATED
from kalshi_data.testing.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parents[2]


#: Run from the venv before the extras are installed (see the fixture).
BASE_PROBES = {
    "optional": (
        "python",
        "-c",
        "import importlib.util as u;"
        "print(','.join(m for m in ('boto3', 'pyarrow', 'rich') if u.find_spec(m)))",
    ),
    "gatherer": ("python", "-m", "gatherer", "--help"),
    "deduplicator": ("python", "-m", "deduplicator", "--help"),
    "simulator": ("python", "-m", "simulator", "--help"),
    "migrate": ("kalshi-data", "migrate", "--help"),
    "export": ("kalshi-data", "export", "--help"),
    "demo": ("kalshi-data", "demo", "--help"),
}


@dataclass(frozen=True)
class Installed:
    """A venv holding only the wheel (and its PyPI dependencies), with ``[all]``; ``base``
    holds what :data:`BASE_PROBES` did before the extras were installed."""

    wheel: Path
    prefix: Path
    workdir: Path
    base: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def run(self, *argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a venv command from a folder outside the checkout, with no path leaking in."""
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        env["PATH"] = f"{self.prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        exe = argv[0] if "/" in argv[0] else str(self.prefix / "bin" / argv[0])
        return subprocess.run(
            [exe, *argv[1:]],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def _tracked_copy(dest: Path) -> Path:
    """Copy the files git tracks (what a fresh clone holds) into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def _pip_install(prefix: Path, requirement: str) -> None:
    pip = subprocess.run(
        [str(prefix / "bin" / "python"), "-m", "pip", "install", "-q", requirement],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """Build the wheel from a copy of the tracked tree and install it into a fresh venv."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the wheel test builds from the git-tracked files: no git checkout here")
    base = Path(tempfile.mkdtemp(prefix="kd-wheel-"))
    try:
        src = _tracked_copy(base / "src")
        dist = base / "dist"
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert build.returncode == 0, build.stderr[-3000:]
        (wheel,) = dist.glob("kalshi_data-*.whl")
        prefix = base / "venv"
        venv.EnvBuilder(with_pip=True).create(prefix)
        work = base / "elsewhere"
        work.mkdir()
        installed = Installed(wheel, prefix, work)
        _pip_install(prefix, str(wheel))
        installed.base.update({k: installed.run(*argv) for k, argv in BASE_PROBES.items()})
        _pip_install(prefix, f"{wheel}[all]")
        yield installed
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_wheel_ships_the_migrations(installed: Installed) -> None:
    """Every SQL migration of the source tree is inside the wheel, byte for byte."""
    sources = sorted((ROOT / "kalshi_data" / "migrations").glob("*/*.sql"))
    assert sources, "no migrations in the source tree"
    with zipfile.ZipFile(installed.wheel) as whl:
        for path in sources:
            rel = path.relative_to(ROOT).as_posix()
            assert whl.read(rel) == path.read_bytes(), rel


def test_installed_code_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    """The venv imports its own copy of every package, never the source tree."""
    probe = installed.run(
        "python",
        "-c",
        "import kalshi_data, gatherer, deduplicator, simulator;"
        "print('\\n'.join(m.__file__ for m in (kalshi_data, gatherer, deduplicator, simulator)))",
    )
    assert probe.returncode == 0, probe.stderr
    for line in probe.stdout.split():
        assert Path(line).is_relative_to(installed.prefix), line


def test_the_base_install_has_no_optional_dependency(installed: Installed) -> None:
    """The wheel without extras pulls none of boto3, pyarrow, rich (the services need none)."""
    probe = installed.base["optional"]
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == ""


@pytest.mark.parametrize("probe", ["gatherer", "deduplicator", "simulator", "migrate"])
def test_services_run_from_the_base_install(installed: Installed, probe: str) -> None:
    done = installed.base[probe]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.parametrize(("probe", "extra"), [("export", "archive"), ("demo", "tools")])
def test_a_tool_names_its_extra_in_the_base_install(
    installed: Installed, probe: str, extra: str
) -> None:
    done = installed.base[probe]
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"pip install 'kalshi-data[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command",
    ["--help", "migrate --help", "create-user --help", *(f"{name} --help" for name in DELEGATED)],
)
def test_every_command_runs_from_the_wheel(installed: Installed, command: str) -> None:
    """``kalshi-data <command> --help`` works for every subcommand of the installed package."""
    done = installed.run("kalshi-data", *command.split())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.parametrize("module", ["gatherer", "deduplicator", "simulator"])
def test_service_modules_run_from_the_wheel(installed: Installed, module: str) -> None:
    """``python -m gatherer|deduplicator|simulator --help`` work as systemd runs them."""
    done = installed.run("python", "-m", module, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_wheel_migrates_real_databases(installed: Installed, shared_pg: PgCluster) -> None:
    """``kalshi-data migrate gatherer|production`` from the wheel build both schemas, twice."""
    for target in ("gatherer", "production"):
        dsn = shared_pg.create_database(f"wheel_{target}")
        try:
            first = installed.run("kalshi-data", "migrate", target, "--dsn", dsn)
            assert first.returncode == 0, first.stderr
            assert f"applied {target}/0001_foundation.sql" in first.stdout
            again = installed.run("kalshi-data", "migrate", target, "--dsn", dsn)
            assert again.returncode == 0, again.stderr
            assert again.stdout.strip() == f"{target} schema is up to date"
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
            shipped = len(list((ROOT / "kalshi_data" / "migrations" / target).glob("*.sql")))
            assert row == (shipped,)
        finally:
            shared_pg.execute(f'DROP DATABASE IF EXISTS "wheel_{target}" WITH (FORCE)')
