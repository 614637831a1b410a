-- Production database (RDS PostgreSQL, no TimescaleDB): time-series tables natively partitioned by
-- exchange_ts (daily partitions + a default one, upkeep by kd_ensure_partitions), metadata kept as
-- the newest row per ticker, and the deduplicator's own state (cursors, lease, export manifests).
-- Every row records the gatherer that contributed it first (gatherer_id) and when (synced_at).

CREATE FUNCTION kd_create_prod_timeseries(p_table text, p_columns text, p_identity text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TABLE %I (%s, gatherer_id text NOT NULL, synced_at timestamptz NOT NULL DEFAULT now(), '
        'CONSTRAINT %I UNIQUE (%s)) PARTITION BY RANGE (exchange_ts)',
        p_table, p_columns, p_table || '_identity', p_identity);
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', p_table || '_default', p_table);
    EXECUTE format('CREATE INDEX %I ON %I (ticker, exchange_ts)', p_table || '_ticker_ts', p_table);
END
$$;
