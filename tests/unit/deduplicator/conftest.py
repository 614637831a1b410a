"""Helpers of the deduplicator's unit tests: synthetic trades in a real gatherer database."""

from __future__ import annotations

import psycopg

#: ``n`` trades, ids md5('trade' || i) for i in lo..hi, an hour before now (never a fixed date).
TRADES_SQL = """
INSERT INTO trades (trade_id, ticker, exchange_ts, yes_price, no_price, count, taker_outcome_side,
    taker_book_side, taker_side, is_block_trade, sid, seq, suspect, received_at)
SELECT md5('trade' || i)::uuid, 'MKT-' || mod(i, 4),
    now() - interval '1 hour' + i * interval '1 ms',
    100 * mod(i, 99) + 1, 10000 - (100 * mod(i, 99) + 1), 100, 'yes', 'bid', 'yes', false, 3, i,
    false, now()
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
"""


def insert_trades(dsn: str, lo: int, hi: int, *, per_transaction: bool = False) -> None:
    """Trades ``lo..hi`` into the gatherer database at ``dsn`` (one transaction, or one each)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if per_transaction:
            for i in range(lo, hi + 1):
                conn.execute(TRADES_SQL.encode(), {"lo": i, "hi": i})
        else:
            conn.execute(TRADES_SQL.encode(), {"lo": lo, "hi": hi})


def trade_ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT trade_id::text FROM trades ORDER BY 1")]


def expected_ids(lo: int, hi: int) -> list[str]:
    import hashlib

    out = []
    for i in range(lo, hi + 1):
        h = hashlib.md5(f"trade{i}".encode()).hexdigest()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return sorted(out)
