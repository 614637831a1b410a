-- TimescaleDB as a first-class backend (docs/timescaledb.md).
--
-- 1. One privilege set on both backends.
--
-- 0004 once granted kd_gatherer_writer SELECT on each table's identity columns. On TimescaleDB
-- that GRANT fails once compression is enabled on the hypertable (it is propagated to the
-- internal compressed hypertable, which has none of those columns: DESIGN.md §3a), so every
-- TimescaleDB gatherer stopped at 0004. The writer needs no SELECT right (its replays use a bare
-- ON CONFLICT DO NOTHING), so 0004 no longer grants it. Databases migrated with the old 0004
-- (plain PostgreSQL only; migrate.py accepts that recorded checksum) lose those column rights
-- here, so that every gatherer, old or new, TimescaleDB or not, has the same privileges.
-- Idempotent and a no-op where no such grant exists (every TimescaleDB database).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS rel, string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) AS cols
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND a.attnum > 0 AND a.attacl IS NOT NULL
          AND EXISTS (SELECT 1 FROM aclexplode(a.attacl) x
                      WHERE x.grantee = 'kd_gatherer_writer'::regrole AND x.privilege_type = 'SELECT')
        GROUP BY c.oid
    LOOP
        EXECUTE format('REVOKE SELECT (%s) ON %s FROM kd_gatherer_writer', r.cols, r.rel);
    END LOOP;
END
$$;

-- 2. Compressed chunks ordered by the poll cursor (TimescaleDB only).
--
-- The only reader of a gatherer database is the deduplicator, which asks for "the next N rows
-- after the cursor (ingest_xid, ingest_id)". Compressed chunks have no b-tree index, and with
-- 0001's compress_orderby = exchange_ts a single compressed chunk turned every batch into a
-- Sort of every row of the hypertable (uncompressed chunks included), however far the cursor
-- was past it. Ordered by the cursor, each compressed batch carries min/max cursor metadata:
-- batches below the cursor are skipped unread, and the rest come out already in cursor order
-- (a merge of the batches' heads), so the Merge Append of the chunks' cursor indexes stays.
-- exchange_ts keeps a min/max sparse index and trade_id its bloom filter, for the identity
-- checks of ON CONFLICT DO NOTHING into compressed chunks (spool replays, restore-gatherer).
-- The settings apply to chunks compressed from now on (TimescaleDB keeps them per chunk).
DO $$
DECLARE
    t text;
BEGIN
    IF NOT kd_timescale_enabled() THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['trades', 'orderbook_deltas', 'orderbook_snapshots', 'tickers'] LOOP
        EXECUTE format(
            'ALTER TABLE %I SET (timescaledb.compress_segmentby = %L, '
            'timescaledb.compress_orderby = %L, timescaledb.sparse_index = %L)',
            t, 'ticker', 'ingest_xid, ingest_id',
            CASE WHEN t = 'trades' THEN 'minmax(exchange_ts), bloom(trade_id)'
                 ELSE 'minmax(exchange_ts)' END);
    END LOOP;
END
$$;
