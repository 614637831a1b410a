"""Leader lease with a fencing epoch, kept in production (reliability-notes §6).

Design change from DESIGN.md §4.3 (advisory lock): a session advisory lock lives in the server's
memory only, so an RDS failover silently frees it and the old leader cannot tell; the lease row is
WAL-logged, survives failover, and its epoch fences every write transaction (deduplicator/sql.py
``FENCE``). Only the database clock decides expiry. A deposed leader's next write matches no lease
row and rolls back; correctness never depends on the election (idempotent merges + cursor CAS).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

ACQUIRE = (
    "UPDATE dedup_lease SET epoch = epoch + 1, holder = $1, renewed_at = now() "
    "WHERE name = 'dedup' AND (holder IS NULL OR renewed_at < now() - make_interval(secs => $2)) "
    "RETURNING epoch"
)
RENEW = (
    "UPDATE dedup_lease SET renewed_at = now() "
    "WHERE name = 'dedup' AND epoch = $1 AND holder = $2 RETURNING epoch"
)
RELEASE = "UPDATE dedup_lease SET holder = NULL WHERE name = 'dedup' AND epoch = $1 AND holder = $2"
CURRENT = "SELECT epoch, holder FROM dedup_lease WHERE name = 'dedup'"


@dataclass
class LeaseState:
    """What this instance believes about the lease (the database has the final word)."""

    instance_id: str
    epoch: int = 0
    leader: bool = False


async def try_acquire(conn: asyncpg.Connection, state: LeaseState, ttl_s: float) -> bool:
    """Take the lease if it is free or expired; on success ``state`` holds the new epoch."""
    epoch = await conn.fetchval(ACQUIRE, state.instance_id, ttl_s)
    if epoch is None:
        return False
    state.epoch, state.leader = int(epoch), True
    return True


async def renew(conn: asyncpg.Connection, state: LeaseState) -> bool:
    """Extend the lease; False means another instance took it (step down)."""
    ok = await conn.fetchval(RENEW, state.epoch, state.instance_id)
    if ok is None:
        state.leader = False
        return False
    return True


async def release(conn: asyncpg.Connection, state: LeaseState) -> None:
    """Give the lease up at a clean shutdown so the standby need not wait for expiry."""
    await conn.execute(RELEASE, state.epoch, state.instance_id)
    state.leader = False
