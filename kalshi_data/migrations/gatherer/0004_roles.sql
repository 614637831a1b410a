-- Roles (reliability-notes §7). Group roles without LOGIN; `kalshi-data create-user` makes login
-- users that are members of one of them (and sets default_transaction_read_only for readers,
-- since role settings are not inherited through membership).
--   kd_gatherer_writer: INSERT only. The writer's spool replays use a bare
--                       INSERT ... ON CONFLICT DO NOTHING (no conflict target), which needs no
--                       SELECT right at all.
--   kd_dedup_reader:    SELECT only.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kd_gatherer_writer') THEN
        CREATE ROLE kd_gatherer_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kd_dedup_reader') THEN
        CREATE ROLE kd_dedup_reader NOLOGIN;
    END IF;
END
$$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO kd_gatherer_writer, kd_dedup_reader;

GRANT INSERT ON trades, orderbook_deltas, orderbook_snapshots, tickers, lifecycle_events,
    markets, events, series, gaps, dead_letters TO kd_gatherer_writer;
-- No column-level GRANT here: on TimescaleDB, GRANT SELECT (col, ...) on a hypertable whose
-- compression is enabled fails (`column "trade_id" of relation "_compressed_hypertable_2" does
-- not exist`, DESIGN.md §3a), and the writer needs none. This file once granted SELECT on each
-- table's identity columns; databases that applied that version keep it as accepted history
-- (kalshi_data/migrate.py ACCEPTED_CHECKSUMS) and 0007 revokes those grants.
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO kd_gatherer_writer;
GRANT EXECUTE ON FUNCTION kd_ensure_partitions(integer, integer) TO kd_gatherer_writer;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO kd_dedup_reader;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO kd_dedup_reader;
