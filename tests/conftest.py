"""Shared fixtures: real PostgreSQL clusters, started by the harness and always destroyed.

Gatherer backends: a test marked ``@pytest.mark.both_backends`` runs twice, as ``[postgres]``
(plain PostgreSQL, natively partitioned tables) and ``[timescaledb]`` (a server preloading
TimescaleDB, hypertables with compression). Its gatherer clusters come from the ``pg_cluster``,
``fresh_db``, ``gatherer_shared_pg`` and ``gatherer_template`` fixtures, which follow the
variant; unmarked tests get plain PostgreSQL. The TimescaleDB variants are skipped, and the
terminal summary says so and why, when the extension is not installed into the server
(``KALSHI_DATA_TIMESCALEDB=off`` skips them anyway; ``=require`` makes its absence an error).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kalshi_data.migrate import Target, migrate
from kalshi_data.testing import pgcluster
from kalshi_data.testing.pgcluster import PgCluster

#: asyncio's reports of lost work (never-retrieved exceptions, unawaited coroutines) fail the
#: test that lost them: tests/loopguard.py.
pytest_plugins = ["tests.loopguard"]

_ROOT = Path(os.environ.get("KALSHI_DATA_TEST_TMP", tempfile.gettempdir()))
BACKENDS = ("postgres", "timescaledb")
_TS_ENV = os.environ.get("KALSHI_DATA_TIMESCALEDB", "auto").strip().lower()


def _timescale_skip_reason() -> str | None:
    if _TS_ENV in ("off", "0", "no", "false"):
        return "KALSHI_DATA_TIMESCALEDB=off"
    return pgcluster.timescaledb_missing()


TIMESCALE_SKIP = _timescale_skip_reason()
_BACKEND_ID = re.compile(r"[\[-](postgres|timescaledb)[\]-]")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_backends: run on plain PostgreSQL and on TimescaleDB (skipped when not installed)",
    )
    if _TS_ENV in ("require", "required") and TIMESCALE_SKIP is not None:
        raise pytest.UsageError(f"KALSHI_DATA_TIMESCALEDB=require, but {TIMESCALE_SKIP}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gatherer_backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_backends") is None:
        return
    skip = pytest.mark.skipif(
        TIMESCALE_SKIP is not None, reason=f"TimescaleDB variant: {TIMESCALE_SKIP}"
    )
    metafunc.parametrize(
        "gatherer_backend",
        ["postgres", pytest.param("timescaledb", marks=skip)],
        indirect=True,
    )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say plainly how the gatherer backends' variants went, and why TimescaleDB's were skipped."""
    outcomes: dict[tuple[str, str], str] = {}
    for outcome in ("passed", "skipped", "failed", "error"):  # the worse outcome wins
        for rep in terminalreporter.stats.get(outcome, []):
            m = _BACKEND_ID.search(getattr(rep, "nodeid", ""))
            if m is not None:
                outcomes[(rep.nodeid, m.group(1))] = outcome
    if not outcomes:
        return
    terminalreporter.write_sep("-", "gatherer backends")
    for backend in BACKENDS:
        mine = [o for (_, b), o in outcomes.items() if b == backend]
        parts = ", ".join(f"{mine.count(o)} {o}" for o in sorted(set(mine))) or "none selected"
        terminalreporter.write_line(f"{backend} variants: {parts}")
    skipped = sum(1 for (_, b), o in outcomes.items() if b == "timescaledb" and o == "skipped")
    if TIMESCALE_SKIP is not None and skipped:
        terminalreporter.write_line(
            f"TimescaleDB variants were SKIPPED ({skipped} tests): {TIMESCALE_SKIP}",
            yellow=True,
            bold=True,
        )


def _tmpbase(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_ROOT))


@pytest.fixture(scope="session", autouse=True)
def _cleanup_clusters() -> Iterator[None]:
    """Whatever happens, no PostgreSQL server outlives the test session."""
    yield
    pgcluster.stop_all()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[PgCluster]:
    """An initialised (stopped) cluster that other clusters are copied from."""
    base = _tmpbase("kd-template-")
    cluster = PgCluster(base)
    cluster.init()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def ts_template() -> Iterator[PgCluster]:
    """An initialised (stopped) cluster that preloads TimescaleDB."""
    if TIMESCALE_SKIP is not None:
        pytest.skip(f"TimescaleDB variant: {TIMESCALE_SKIP}")
    base = _tmpbase("kd-tstemplate-")
    cluster = PgCluster(base)
    cluster.init(timescaledb=True)
    yield cluster
    cluster.destroy()


@pytest.fixture
def gatherer_backend(request: pytest.FixtureRequest) -> str:
    """``postgres`` or ``timescaledb``: the variant of a ``both_backends`` test (else postgres)."""
    return str(getattr(request, "param", "postgres"))


@pytest.fixture
def gatherer_template(request: pytest.FixtureRequest, gatherer_backend: str) -> PgCluster:
    """The template that gatherer clusters of this test's backend are copied from."""
    name = "ts_template" if gatherer_backend == "timescaledb" else "pg_template"
    template: PgCluster = request.getfixturevalue(name)
    return template


def new_cluster(template: PgCluster, prefix: str = "kd-pg-") -> PgCluster:
    """A fresh, started cluster copied from the template (register for cleanup)."""
    cluster = PgCluster(_tmpbase(prefix))
    cluster.clone_from(template)
    cluster.start()
    return cluster


@pytest.fixture
def pg_cluster(gatherer_template: PgCluster) -> Iterator[PgCluster]:
    """A started cluster of the test's own, safe to kill, stop and restart (of the test's
    gatherer backend: plain PostgreSQL unless a ``both_backends`` test's TimescaleDB variant)."""
    cluster = new_cluster(gatherer_template)
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def shared_pg(pg_template: PgCluster) -> Iterator[PgCluster]:
    """One cluster shared by tests that only need a fresh database (never kill it)."""
    cluster = new_cluster(pg_template, "kd-shared-")
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def ts_shared_pg(ts_template: PgCluster) -> Iterator[PgCluster]:
    """One TimescaleDB cluster shared by tests that only need a fresh database (never kill it)."""
    cluster = new_cluster(ts_template, "kd-tsshared-")
    yield cluster
    cluster.destroy()


@pytest.fixture
def gatherer_shared_pg(request: pytest.FixtureRequest, gatherer_backend: str) -> PgCluster:
    """The shared cluster of this test's gatherer backend (never kill it)."""
    name = "ts_shared_pg" if gatherer_backend == "timescaledb" else "shared_pg"
    cluster: PgCluster = request.getfixturevalue(name)
    return cluster


_db_counter = 0


@pytest.fixture
def fresh_db(gatherer_shared_pg: PgCluster) -> Iterator[str]:
    """A new, empty database on the shared cluster of the test's gatherer backend; returns its
    superuser DSN."""
    global _db_counter
    _db_counter += 1
    name = f"t{os.getpid()}_{_db_counter}"
    dsn = gatherer_shared_pg.create_database(name)
    yield dsn
    gatherer_shared_pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_migrated: dict[str, str] = {}


def _migrated_template(cluster: PgCluster, target: Target) -> str:
    """The name of a database on ``cluster`` migrated to ``target`` once per session, which
    new databases are copied from (CREATE DATABASE ... TEMPLATE: milliseconds, not a migration
    run per test)."""
    key = f"{cluster.base}:{target}"
    if key not in _migrated:
        name = f"tmpl_{target}_{os.getpid()}"
        cluster.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        migrate(cluster.create_database(name), target)
        _migrated[key] = name
    return _migrated[key]


def _copied_db(cluster: PgCluster, target: Target) -> Iterator[str]:
    global _db_counter
    _db_counter += 1
    name = f"m{os.getpid()}_{_db_counter}"
    template = _migrated_template(cluster, target)
    cluster.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield cluster.dsn(name)
    cluster.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def production_db(shared_pg: PgCluster) -> Iterator[str]:
    """A new database migrated to the production schema (plain PostgreSQL, shared cluster);
    returns its superuser DSN."""
    yield from _copied_db(shared_pg, "production")


@pytest.fixture
def gatherer_plain_db(shared_pg: PgCluster) -> Iterator[str]:
    """A new database migrated to the gatherer schema (plain PostgreSQL, shared cluster);
    returns its superuser DSN (tests of both gatherer backends: ``migrated_fresh_db``)."""
    yield from _copied_db(shared_pg, "gatherer")
