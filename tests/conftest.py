"""Shared fixtures: real PostgreSQL clusters, started by the harness and always destroyed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kalshi_data import pgcluster
from kalshi_data.pgcluster import PgCluster

_ROOT = Path(os.environ.get("KALSHI_DATA_TEST_TMP", tempfile.gettempdir()))


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


def new_cluster(template: PgCluster, prefix: str = "kd-pg-") -> PgCluster:
    """A fresh, started cluster copied from the template (register for cleanup)."""
    cluster = PgCluster(_tmpbase(prefix))
    cluster.clone_from(template)
    cluster.start()
    return cluster


@pytest.fixture
def pg_cluster(pg_template: PgCluster) -> Iterator[PgCluster]:
    """A started cluster of the test's own, safe to kill, stop and restart."""
    cluster = new_cluster(pg_template)
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def shared_pg(pg_template: PgCluster) -> Iterator[PgCluster]:
    """One cluster shared by tests that only need a fresh database (never kill it)."""
    cluster = new_cluster(pg_template, "kd-shared-")
    yield cluster
    cluster.destroy()


_db_counter = 0


@pytest.fixture
def fresh_db(shared_pg: PgCluster) -> Iterator[str]:
    """A new, empty database on the shared cluster; returns its superuser DSN."""
    global _db_counter
    _db_counter += 1
    name = f"t{os.getpid()}_{_db_counter}"
    dsn = shared_pg.create_database(name)
    yield dsn
    shared_pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
