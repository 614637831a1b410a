-- Roles (reliability-notes §7). Group roles without LOGIN; `kalshi-data create-user` makes login
-- users that are members of one of them (and sets default_transaction_read_only for readers,
-- since role settings are not inherited through membership).
--   kd_gatherer_writer: INSERT only, plus SELECT on the identity (arbiter) columns that
--                       INSERT ... ON CONFLICT DO NOTHING needs when replaying the spool.
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
GRANT SELECT (trade_id, exchange_ts) ON trades TO kd_gatherer_writer;
GRANT SELECT (ticker, exchange_ts, side, price, delta, k) ON orderbook_deltas TO kd_gatherer_writer;
GRANT SELECT (ticker, exchange_ts, source, content_hash) ON orderbook_snapshots TO kd_gatherer_writer;
GRANT SELECT (ticker, exchange_ts, content_hash) ON tickers TO kd_gatherer_writer;
GRANT SELECT (kind, ticker, event_type, content_hash) ON lifecycle_events TO kd_gatherer_writer;
GRANT SELECT (ticker, content_hash) ON markets TO kd_gatherer_writer;
GRANT SELECT (event_ticker, content_hash) ON events TO kd_gatherer_writer;
GRANT SELECT (ticker, content_hash) ON series TO kd_gatherer_writer;
GRANT SELECT (gap_id, state) ON gaps TO kd_gatherer_writer;
GRANT SELECT (dl_id) ON dead_letters TO kd_gatherer_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO kd_gatherer_writer;
GRANT EXECUTE ON FUNCTION kd_ensure_partitions(integer, integer) TO kd_gatherer_writer;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO kd_dedup_reader;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO kd_dedup_reader;
