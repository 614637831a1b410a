"""Shared fixtures of the integration tests: migrated databases and the audit's simulator.

Each database is migrated for the test that asks (not copied from a template): the migrations
create the partitions of the day they run, which some of these tests read. asyncio's reports
of lost work (an exception nobody retrieved, a task destroyed while pending, a coroutine never
awaited) fail the test in every suite: tests/loopguard.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kalshi_data.migrate import migrate
from kalshi_data.testing import pgcluster
from simulator import SimConfig, Simulator

#: The type of the ``start_simulator`` fixture.
StartSimulator = Callable[..., Awaitable[Simulator]]


@pytest.fixture
def prod_db(fresh_db: str) -> str:
    """``fresh_db`` migrated to the production schema; its superuser DSN."""
    migrate(fresh_db, "production")
    return fresh_db


@pytest.fixture
def gatherer_dsn(fresh_db: str) -> str:
    """``fresh_db`` (of the test's gatherer backend) migrated to the gatherer schema; its
    superuser DSN."""
    migrate(fresh_db, "gatherer")
    return fresh_db


@pytest.fixture
def own_gatherer_dsn(pg_cluster: pgcluster.PgCluster) -> str:
    """Database ``g1`` on the test's own cluster (safe to kill -9), migrated to the gatherer
    schema; its superuser DSN."""
    dsn = pg_cluster.create_database("g1")
    migrate(dsn, "gatherer")
    return dsn


@pytest.fixture
async def start_simulator(tmp_path: Path) -> AsyncIterator[StartSimulator]:
    """``await start_simulator(**SimConfig fields)``: a started in-process simulator working in
    ``tmp_path``, stopped at teardown (every one started, even if the test failed)."""
    started: list[Simulator] = []

    async def start(**fields: Any) -> Simulator:
        sim = Simulator(SimConfig(**{"workdir": tmp_path, **fields}))
        await sim.start()
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in reversed(started):
            await sim.stop()
