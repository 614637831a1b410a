"""The ``kalshi-data`` command (kalshi_data/cli.py): parsing, exit codes, errors that name the
bad key or file, and secrets that never reach the terminal.

The built-in subcommands run in-process against a real PostgreSQL (the shared test cluster) or
a port nobody listens on; the delegated services run as real processes (their ``main`` tunes
the garbage collector and installs signal handlers, which must not touch this test process).
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kalshi_data import cli
from kalshi_data.testing import pgcluster

ROOT = Path(__file__).resolve().parents[2]
SECRET = "TopSecret9-never-printed"


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A TCP port bound on 127.0.0.1 but not listening: a connection to it is refused (held for
    the test so that nobody else can take it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "kalshi_data.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


# --- parsing ----------------------------------------------------------------------------------


def test_parser_routes_migrate_and_create_user() -> None:
    parser = cli.build_parser()
    m = parser.parse_args(["migrate", "production", "--dsn", "postgresql:///x"])
    assert (m.command, m.target, m.dsn, m.func) == (
        "migrate",
        "production",
        "postgresql:///x",
        cli._migrate,
    )
    u = parser.parse_args(
        ["create-user", "--dsn", "d", "--role", "auditor", "--user", "al", "--password-file", "f"]
    )
    assert (u.role, u.user, u.password_file, u.func) == ("auditor", "al", "f", cli._create_user)


def test_create_user_offers_every_role_users_knows() -> None:
    """The gatherer bootstrap (infra/scripts/gatherer-bootstrap.sh) creates a ``retention``
    user: the parser refused that role until its list was checked against ``users.ROLES``."""
    from kalshi_data.tools.users import ROLES

    parser = cli.build_parser()
    for role in ROLES:
        args = parser.parse_args(
            ["create-user", "--dsn", "d", "--role", role, "--user", "u", "--password-file", "f"]
        )
        assert args.role == role
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    role_action = next(a for a in sub.choices["create-user"]._actions if a.dest == "role")
    assert set(role_action.choices or ()) == set(ROLES)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "required: COMMAND"),
        (["migrate", "staging", "--dsn", "x"], "invalid choice: 'staging'"),
        (["migrate", "production"], "--dsn"),
        (
            ["create-user", "--dsn", "d", "--role", "root", "--user", "u", "--password-file", "f"],
            "invalid choice: 'root'",
        ),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_usage_errors_exit_2_and_say_what(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--password"])
def test_password_on_the_command_line_is_refused_without_echo(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Passwords come from a file only (a flag would show in ``ps``). ``--password`` used to be
    taken as an abbreviation of ``--password-file``, whose error then printed the password as
    the missing file's name."""
    argv = ["create-user", "--dsn", "d", "--role", "auditor", "--user", "u", flag, SECRET]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.err + captured.out
    assert "--password" in captured.err


def test_every_delegated_subcommand_has_a_main() -> None:
    for name, (module_name, help_text) in cli.DELEGATED.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, "main", None)), name
        assert help_text, name


def test_delegated_subcommand_gets_the_rest_of_the_line() -> None:
    """``kalshi-data gatherer ...`` is ``python -m gatherer ...``: its own parser answers."""
    result = _run_cli("gatherer", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: gatherer ")
    assert "--config" in result.stdout


# --- migrate and create-user against a real database ------------------------------------------


def test_migrate_applies_then_is_current_then_refuses_the_other_target(
    shared_pg: pgcluster.PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"cli_{os.getpid()}"
    dsn = shared_pg.create_database(name)
    try:
        assert cli.main(["migrate", "production", "--dsn", dsn]) == 0
        out = capsys.readouterr().out
        assert out.startswith("applied production/0001")
        assert cli.main(["migrate", "production", "--dsn", dsn]) == 0
        assert capsys.readouterr().out == "production schema is up to date\n"
        assert cli.main(["migrate", "gatherer", "--dsn", dsn]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kalshi-data migrate: error: ")
        assert "holds production migrations" in err
    finally:
        shared_pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_unreachable_database_is_one_line_without_the_password(
    refused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"postgresql://bob:{SECRET}@127.0.0.1:{refused_port}/x?connect_timeout=5"
    assert cli.main(["migrate", "production", "--dsn", dsn]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("kalshi-data migrate: error: OperationalError: ")
    assert "Traceback" not in captured.err
    assert SECRET not in captured.err + captured.out


def test_create_user_password_file_errors_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.txt"
    argv = ["create-user", "--dsn", "d", "--role", "auditor", "--user", "u"]
    assert cli.main([*argv, "--password-file", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert cli.main([*argv, "--password-file", str(empty)]) == 2
    assert f"password file {empty} is empty" in capsys.readouterr().err


def test_create_user_unreachable_database_prints_neither_password(
    tmp_path: Path, refused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("file-password-never-printed\n")
    dsn = f"postgresql://bob:{SECRET}@127.0.0.1:{refused_port}/x?connect_timeout=5"
    argv = ["create-user", "--dsn", dsn, "--role", "auditor", "--user", "al"]
    assert cli.main([*argv, "--password-file", str(pw)]) == 1
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert captured.err.startswith("kalshi-data create-user: error: ")
    assert SECRET not in text
    assert "file-password-never-printed" not in text


def test_create_user_then_log_in(
    shared_pg: pgcluster.PgCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    name = f"cliu_{os.getpid()}"
    dsn = shared_pg.create_database(name)
    try:
        assert cli.main(["migrate", "production", "--dsn", dsn]) == 0
        pw = tmp_path / "pw"
        pw.write_text(f"{SECRET}\nignored second line\n")
        argv = ["create-user", "--dsn", dsn, "--role", "auditor", "--user", f"al_{os.getpid()}"]
        capsys.readouterr()
        assert cli.main([*argv, "--password-file", str(pw)]) == 0
        captured = capsys.readouterr()
        assert captured.out == f"user al_{os.getpid()} is a member of auditor\n"
        assert SECRET not in captured.out + captured.err
        login = shared_pg.dsn(name, user=f"al_{os.getpid()}", password=SECRET)
        with psycopg.connect(login) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (f"al_{os.getpid()}",)
    finally:
        shared_pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shared_pg.execute(f'DROP ROLE IF EXISTS "al_{os.getpid()}"')


# --- delegated services: config errors name the key, secrets stay out ------------------------


def test_gatherer_config_error_names_the_key_not_the_dsn(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "gatherer.yaml").read_text()
    text = text.replace(
        '"file:/run/credentials/kalshi-gatherer.service/gatherer-dsn"',
        f'"postgresql://w:{SECRET}@127.0.0.1/g"',
    ).replace("\nconnections: 4 ", "\nconnections: many ")
    assert SECRET in text
    assert "connections: many" in text
    cfg = tmp_path / "gatherer.yaml"
    cfg.write_text(text)
    result = _run_cli("gatherer", "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    assert "config error at 'connections'" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_dedup_config_error_names_the_key_not_the_dsn(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "dedup.yaml").read_text()
    for i in (1, 2, 3):
        text = text.replace(
            f'"file:/run/credentials/kalshi-dedup.service/gatherer-g{i}-dsn"',
            f'"postgresql://r:{SECRET}@127.0.0.1/g{i}"',
        )
    text = text.replace(
        '"file:/run/credentials/kalshi-dedup.service/production-dsn"',
        f'"postgresql://p:{SECRET}@127.0.0.1/prod"',
    ).replace("\nbatch_rows: 50000", "\nbatch_rows: lots")
    assert "file:/run" not in text
    assert "batch_rows: lots" in text
    cfg = tmp_path / "dedup.yaml"
    cfg.write_text(text)
    result = _run_cli("dedup", "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    assert "config error at 'batch_rows'" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = _run_cli("dedup", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr
