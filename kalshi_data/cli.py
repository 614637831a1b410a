"""The ``kalshi-data`` command: one entry point, one subcommand per service or tool.

Services own their argument parsing (``<module>.main(argv) -> int``) so that
``python -m gatherer`` and ``kalshi-data gatherer`` are the same program.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kalshi_data.errors import describe_error

#: Subcommands implemented by a module's ``main(argv: list[str]) -> int``.
DELEGATED: dict[str, tuple[str, str]] = {
    "sim": ("simulator.__main__", "run the local Kalshi exchange simulator"),
    "gatherer": ("gatherer.__main__", "run a gatherer (Kalshi -> local database)"),
    "dedup": ("deduplicator.__main__", "run the deduplicator (gatherers -> production)"),
    "demo": ("kalshi_data.tools.demo", "start a whole local cluster and show it working"),
    "export": ("kalshi_data.tools.export", "export production partitions to S3 as Parquet"),
    "restore-gatherer": ("kalshi_data.tools.restore", "rebuild a gatherer DB's recent window"),
    "retention": (
        "kalshi_data.tools.retention",
        "drop old gatherer partitions the deduplicator synced",
    ),
    "audit": (
        "kalshi_data.tools.audit",
        "check production's trades against the exchange; backfill",
    ),
    "coverage": ("kalshi_data.tools.coverage", "print the audit's coverage of one UTC day"),
    "status": (
        "kalshi_data.tools.status",
        "is the capture complete and current? (exit 0 = healthy)",
    ),
    "chaos": (
        "kalshi_data.tools.chaos",
        "the local cluster under a seeded fault schedule, vs the truth",
    ),
    "import": ("kalshi_data.tools.importer", "restore a table's days from the S3 archive"),
}

#: The optional dependencies (pyproject extras) a subcommand's module may need, and the extra
#: that holds each; the services need none of them.
EXTRA_OF_MODULE: dict[str, str] = {
    "boto3": "aws",
    "botocore": "aws",
    "pyarrow": "archive",
    "rich": "tools",
}
#: Subcommands that need more than the module that happened to be missing says.
EXTRA_OF_COMMAND: dict[str, str] = {"export": "archive", "import": "archive"}


def missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """What to install when ``command`` failed for lack of an optional dependency, else None."""
    top = (exc.name or "").partition(".")[0]
    if top not in EXTRA_OF_MODULE:
        return None
    extra = EXTRA_OF_COMMAND.get(command, EXTRA_OF_MODULE[top])
    return f"{top} is not installed; this command needs pip install 'kalshi-data[{extra}]'"


def _delegate(command: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(DELEGATED[command][0])
        entry: Callable[[list[str]], int] = module.main
        return entry(argv)
    except ModuleNotFoundError as exc:
        hint = missing_extra(command, exc)
        if hint is None:
            raise
        print(f"kalshi-data {command}: error: {hint}", file=sys.stderr)
        return 2


def _migrate(args: argparse.Namespace) -> int:
    import psycopg  # noqa: PLC0415 (fast CLI start)

    from kalshi_data.migrate import MigrationError, migrate  # noqa: PLC0415

    try:
        applied = migrate(args.dsn, args.target)
    except MigrationError as exc:
        print(f"kalshi-data migrate: error: {describe_error(exc)}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:  # the database is unreachable or refused us: not a traceback
        print(f"kalshi-data migrate: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    if applied:
        for name in applied:
            print(f"applied {args.target}/{name}")
    else:
        print(f"{args.target} schema is up to date")
    return 0


def _create_user(args: argparse.Namespace) -> int:
    import psycopg  # noqa: PLC0415 (fast CLI start)

    from kalshi_data.tools.users import UserError, create_user, read_password_file  # noqa: PLC0415

    try:
        create_user(args.dsn, args.role, args.user, read_password_file(Path(args.password_file)))
    except (UserError, OSError) as exc:
        print(f"kalshi-data create-user: error: {describe_error(exc)}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:  # the database is unreachable or refused us: not a traceback
        print(f"kalshi-data create-user: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    print(f"user {args.user} is a member of {args.role}")
    return 0


class _RefusePassword(argparse.Action):
    """``--password VALUE``: refused without echoing the value. Without it argparse took the
    flag as an abbreviation of ``--password-file`` and then printed the password as a missing
    file's name; an unknown flag's error would print it too."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        parser.error("--password is not accepted (it would show in ps): use --password-file")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (delegated subcommands take the rest of the line)."""
    parser = argparse.ArgumentParser(prog="kalshi-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    m = sub.add_parser("migrate", help="apply numbered SQL migrations")
    m.add_argument("target", choices=["gatherer", "production"])
    m.add_argument("--dsn", required=True, help="libpq DSN of the database to migrate")
    m.set_defaults(func=_migrate)
    u = sub.add_parser(
        "create-user", help="create a login user in one of the project's roles", allow_abbrev=False
    )
    u.add_argument("--dsn", required=True)
    u.add_argument(
        "--role",
        required=True,
        choices=[
            "gatherer_writer",
            "dedup_reader",
            "dedup_writer",
            "exporter",
            "analyst",
            "auditor",
            "retention",
        ],  # users.ROLES, spelled out to keep the CLI's start fast (a unit test compares them)
    )
    u.add_argument("--user", required=True)
    u.add_argument("--password-file", required=True, help="file whose first line is the password")
    u.add_argument("--password", action=_RefusePassword, help=argparse.SUPPRESS)
    u.set_defaults(func=_create_user)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATED:
        return _delegate(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
