-- Gatherer database, part 1: TimescaleDB detection and the helpers every table uses.
--
-- TimescaleDB (DESIGN.md §3a): CREATE EXTENSION without the preload is FATAL, so the extension is
-- created only when it is both available and listed in shared_preload_libraries. Without it the
-- same tables are natively range-partitioned by exchange_ts, and the same queries serve both.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries') ~ '(^|[\s,])"?timescaledb"?($|[\s,])'
    THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
END
$$;

CREATE FUNCTION kd_timescale_enabled() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
$$;

-- Create a time-series table with the poll cursor (DESIGN §4.1: xid8 + ingest id, indexed) and
-- its identity as a unique constraint. Hypertable + compression when TimescaleDB is enabled,
-- native partitions (plus a default partition) otherwise. No retention policy on purpose:
-- dropping chunks the deduplicator has not synced would lose data (reliability-notes G6);
-- retention is done by `kalshi-data retention`, gated on the slowest cursor.
CREATE FUNCTION kd_create_timeseries(p_table text, p_columns text, p_identity text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE SEQUENCE %I', p_table || '_ingest_id_seq');
    IF kd_timescale_enabled() THEN
        EXECUTE format(
            'CREATE TABLE %I (%s, ingest_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), '
            'ingest_id bigint NOT NULL DEFAULT nextval(%L), CONSTRAINT %I UNIQUE (%s))',
            p_table, p_columns, p_table || '_ingest_id_seq', p_table || '_identity', p_identity);
        -- TimescaleDB requires unique constraints to include the partitioning column (TS103):
        -- every identity here includes exchange_ts.
        EXECUTE format('SELECT create_hypertable(%L::regclass, by_range(%L, interval %L))',
                       p_table, 'exchange_ts', '1 day');
        EXECUTE format('ALTER TABLE %I SET (timescaledb.compress, '
                       'timescaledb.compress_segmentby = %L, timescaledb.compress_orderby = %L)',
                       p_table, 'ticker', 'exchange_ts');
        -- Compress only chunks older than the longest catch-up window: ON CONFLICT into
        -- compressed chunks works but is slow.
        EXECUTE format('SELECT add_compression_policy(%L::regclass, compress_after => interval %L)',
                       p_table, '7 days');
    ELSE
        EXECUTE format(
            'CREATE TABLE %I (%s, ingest_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), '
            'ingest_id bigint NOT NULL DEFAULT nextval(%L), CONSTRAINT %I UNIQUE (%s)) '
            'PARTITION BY RANGE (exchange_ts)',
            p_table, p_columns, p_table || '_ingest_id_seq', p_table || '_identity', p_identity);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', p_table || '_default', p_table);
    END IF;
    EXECUTE format('ALTER SEQUENCE %I OWNED BY %I.ingest_id', p_table || '_ingest_id_seq', p_table);
    EXECUTE format('CREATE INDEX %I ON %I (ingest_xid, ingest_id)', p_table || '_cursor', p_table);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I FOR EACH STATEMENT '
                   'EXECUTE FUNCTION kd_notify_ingest()', p_table || '_notify', p_table);
END
$$;

-- A plain (not partitioned) table with the same poll cursor.
CREATE FUNCTION kd_create_plain(p_table text, p_columns text, p_identity text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE SEQUENCE %I', p_table || '_ingest_id_seq');
    EXECUTE format(
        'CREATE TABLE %I (%s, ingest_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), '
        'ingest_id bigint NOT NULL DEFAULT nextval(%L), CONSTRAINT %I UNIQUE (%s))',
        p_table, p_columns, p_table || '_ingest_id_seq', p_table || '_identity', p_identity);
    EXECUTE format('ALTER SEQUENCE %I OWNED BY %I.ingest_id', p_table || '_ingest_id_seq', p_table);
    EXECUTE format('CREATE INDEX %I ON %I (ingest_xid, ingest_id)', p_table || '_cursor', p_table);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I FOR EACH STATEMENT '
                   'EXECUTE FUNCTION kd_notify_ingest()', p_table || '_notify', p_table);
END
$$;

-- Wake the deduplicator (LISTEN kd_ingest) when rows commit; NOTIFY is delivered at commit and
-- folded per transaction, so this costs one notification per table per transaction.
CREATE FUNCTION kd_notify_ingest() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kd_ingest', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
