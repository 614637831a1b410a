"""The deduplicator's SQL builders (pure functions of tables.py)."""

from __future__ import annotations

import pytest

from deduplicator import sql
from kalshi_data import tables


@pytest.mark.parametrize("spec", tables.SYNCED_TABLES, ids=lambda s: s.name)
def test_every_table_gets_a_merge_and_stage(spec: tables.TableSpec) -> None:
    """Each synced table has staging DDL with all data columns and an idempotent merge."""
    ddl = sql.create_stage(spec)
    for col in spec.columns:
        assert f"{col.name} {col.pgtype}" in ddl
    merge = sql.merge_insert(spec)
    assert "ON CONFLICT" in merge
    assert "$1::text" in merge  # the gatherer id


def test_event_tables_clear_suspect_with_a_clean_copy() -> None:
    """Tables with a suspect flag upgrade a suspect row when a clean copy arrives."""
    clear = sql.clear_suspect(tables.TRADES)
    assert "SET suspect = false" in clear
    assert "WHERE t.suspect AND NOT s.suspect AND t.trade_id = s.trade_id" in clear
    assert "DO NOTHING" in sql.merge_insert(tables.TRADES)


def test_log_tables_do_nothing_on_conflict() -> None:
    """Tables without a suspect flag simply ignore rows production already has."""
    assert "DO NOTHING" in sql.merge_insert(tables.DEAD_LETTERS)


def test_metadata_keeps_newest_version_once_per_key() -> None:
    """Metadata merges one version per ticker per batch and only replaces with newer ones."""
    merge = sql.merge_insert(tables.MARKETS)
    assert "DISTINCT ON (ticker)" in merge
    assert "ON CONFLICT (ticker) DO UPDATE" in merge
    assert "EXCLUDED.content_hash <> markets.content_hash" in merge


def test_wide_tables_are_bounded_by_bytes() -> None:
    """Tables with unbounded columns sum row sizes; fixed-width ones do not pay for it."""
    assert sql.is_wide(tables.DEAD_LETTERS)
    assert sql.is_wide(tables.ORDERBOOK_SNAPSHOTS)
    assert not sql.is_wide(tables.TRADES)
    assert "pg_column_size" in sql.batch_end_query(tables.DEAD_LETTERS)
    assert "pg_column_size" not in sql.batch_end_query(tables.TRADES)


def test_reads_stay_below_the_horizon() -> None:
    """Batch bounds only consider rows whose xid is below the horizon parameter."""
    q = sql.batch_end_query(tables.TRADES)
    assert "ingest_xid < $3::text::xid8" in q
    assert "ORDER BY ingest_xid, ingest_id" in q
