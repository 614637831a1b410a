-- Roles (reliability-notes §7). Group roles without LOGIN; `kalshi-data create-user` adds members.
--   kd_dedup_writer: reads and inserts data, upserts metadata, moves cursors and the lease;
--                    no DDL (partition upkeep goes through the SECURITY DEFINER function).
--   kd_exporter:     reads data, writes export manifests and watermarks.
--   kd_analyst:      read-only access for users of the production database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kd_dedup_writer') THEN
        CREATE ROLE kd_dedup_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kd_exporter') THEN
        CREATE ROLE kd_exporter NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kd_analyst') THEN
        CREATE ROLE kd_analyst NOLOGIN;
    END IF;
END
$$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO kd_dedup_writer, kd_exporter, kd_analyst;

GRANT SELECT, INSERT ON trades, orderbook_deltas, orderbook_snapshots, tickers, lifecycle_events,
    markets, events, series, gaps, dead_letters TO kd_dedup_writer;
GRANT UPDATE ON markets, events, series TO kd_dedup_writer;
-- a clean copy from another gatherer clears the suspect flag of a row first seen after a gap
GRANT UPDATE (suspect, gatherer_id, synced_at)
    ON trades, orderbook_deltas, orderbook_snapshots, lifecycle_events TO kd_dedup_writer;
GRANT SELECT, INSERT, UPDATE ON sync_cursors, dedup_lease TO kd_dedup_writer;
GRANT EXECUTE ON FUNCTION kd_ensure_partitions(integer, integer) TO kd_dedup_writer, kd_exporter;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO kd_exporter, kd_analyst;
GRANT INSERT, UPDATE ON export_manifests, export_watermarks TO kd_exporter;
