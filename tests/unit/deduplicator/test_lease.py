"""The leader lease (deduplicator/lease.py) against a real production database: the database
decides who holds it, every takeover raises the epoch, and a deposed holder can neither renew
nor release what it lost."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from deduplicator import lease


@pytest.fixture
async def conn(production_db: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(production_db)
    try:
        yield c
    finally:
        await c.close()


async def _row(conn: asyncpg.Connection) -> tuple[int, str | None]:
    row = await conn.fetchrow(lease.CURRENT)
    assert row is not None
    return int(row[0]), row[1]


async def test_free_lease_is_taken_with_the_next_epoch(conn: asyncpg.Connection) -> None:
    a = lease.LeaseState("dedup-a")
    assert await lease.try_acquire(conn, a, ttl_s=60)
    assert (a.epoch, a.leader) == (1, True)
    assert await _row(conn) == (1, "dedup-a")


async def test_held_lease_is_refused_until_it_expires(conn: asyncpg.Connection) -> None:
    a, b = lease.LeaseState("dedup-a"), lease.LeaseState("dedup-b")
    assert await lease.try_acquire(conn, a, ttl_s=60)
    assert not await lease.try_acquire(conn, b, ttl_s=60)
    assert (b.epoch, b.leader) == (0, False)
    assert await lease.renew(conn, a)
    # ttl 0: renewed before this statement's now(), so expired: b takes over with epoch 2.
    assert await lease.try_acquire(conn, b, ttl_s=0)
    assert (b.epoch, b.leader) == (2, True)
    assert await _row(conn) == (2, "dedup-b")


async def test_deposed_holder_cannot_renew_or_release(conn: asyncpg.Connection) -> None:
    a, b = lease.LeaseState("dedup-a"), lease.LeaseState("dedup-b")
    assert await lease.try_acquire(conn, a, ttl_s=60)
    assert await lease.try_acquire(conn, b, ttl_s=0)
    assert not await lease.renew(conn, a)
    assert a.leader is False
    await lease.release(conn, a)  # matches no row: b keeps it
    assert await _row(conn) == (2, "dedup-b")


async def test_release_frees_it_for_the_standby_at_once(conn: asyncpg.Connection) -> None:
    a, b = lease.LeaseState("dedup-a"), lease.LeaseState("dedup-b")
    assert await lease.try_acquire(conn, a, ttl_s=60)
    await lease.release(conn, a)
    assert a.leader is False
    assert await _row(conn) == (1, None)
    assert await lease.try_acquire(conn, b, ttl_s=3600)  # no wait for expiry
    assert b.epoch == 2
    assert not await lease.renew(conn, a)
