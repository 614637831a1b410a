-- Least-privilege retention (issue 12): `kalshi-data retention` runs from the deduplicator host as
-- a member of kd_retention, which may drop old partitions (native) or chunks (TimescaleDB) of the
-- time-series tables and nothing else.
--
-- PostgreSQL lets only a table's owner DROP it, and ownership would also allow DELETE, TRUNCATE,
-- ALTER and DROP of the parents. So kd_retention owns nothing and gets no table privilege at all;
-- it may only EXECUTE kd_retention_drop, a SECURITY DEFINER function owned by the migration role
-- (the tables' owner) that verifies, under an ACCESS EXCLUSIVE lock on the partition, that
--   1. the relation is a direct child (partition or chunk) of a time-series table in public
--      (never the default partition, never a parent, never a plain table);
--   2. its whole time range ends at or before p_before, and p_before is at least one day ago
--      (a hard floor: whatever the caller says, the current day is never dropped);
--   3. no row in it lies above the production cursor (p_last_xid, p_last_id) the caller read
--      from sync_cursors (the slowest cursor: one per gatherer and table).
-- The cursor is the caller's word: the gatherer cannot see production. A stolen kd_retention
-- password can therefore drop partitions older than a day that the deduplicator has not read,
-- but cannot read, change or drop anything else (docs/operations.md, "Retention").
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kd_retention') THEN
        CREATE ROLE kd_retention NOLOGIN;
    END IF;
END
$$;

CREATE FUNCTION kd_retention_drop(
    p_part regclass, p_before timestamptz, p_last_xid xid8, p_last_id bigint,
    p_dry_run boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    parent_name text;
    parent_ns text;
    is_parent boolean;
    bound text;
    upper_ts timestamptz;
    unsynced boolean;
BEGIN
    IF p_part IS NULL OR p_before IS NULL OR p_last_xid IS NULL OR p_last_id IS NULL THEN
        RAISE EXCEPTION 'kd_retention_drop: every argument is required';
    END IF;
    IF p_before > now() - interval '1 day' THEN
        RAISE EXCEPTION 'kd_retention_drop: bound % is less than one day ago', p_before;
    END IF;
    SELECT pc.relname, pn.nspname INTO parent_name, parent_ns
    FROM pg_inherits i
    JOIN pg_class pc ON pc.oid = i.inhparent
    JOIN pg_namespace pn ON pn.oid = pc.relnamespace
    WHERE i.inhrelid = p_part;
    IF parent_name IS NULL OR parent_ns <> 'public' THEN
        RAISE EXCEPTION 'kd_retention_drop: % is not a partition of a time-series table', p_part;
    END IF;
    -- The parent must be a time-series table (native range-partitioned, or a hypertable).
    is_parent := EXISTS (SELECT 1 FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partrelid
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'public' AND c.relname = parent_name);
    IF is_parent THEN
        SELECT pg_get_expr(c.relpartbound, c.oid) INTO bound FROM pg_class c WHERE c.oid = p_part;
        IF bound IS NULL OR bound = 'DEFAULT' THEN
            RAISE EXCEPTION 'kd_retention_drop: % is a default partition', p_part;
        END IF;
        upper_ts := (regexp_match(bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz;
    ELSIF to_regclass('timescaledb_information.chunks') IS NOT NULL THEN
        EXECUTE 'SELECT range_end FROM timescaledb_information.chunks '
                'WHERE hypertable_schema = ''public'' AND hypertable_name = $1 '
                'AND format(''%I.%I'', chunk_schema, chunk_name)::regclass = $2'
            INTO upper_ts USING parent_name, p_part;
    END IF;
    IF upper_ts IS NULL THEN
        RAISE EXCEPTION 'kd_retention_drop: % is not a partition of a time-series table', p_part;
    END IF;
    IF upper_ts > p_before THEN
        RETURN 'kept: newer than the bound';
    END IF;
    IF NOT p_dry_run THEN
        -- No row can arrive between the check and the drop.
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p_part);
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE (ingest_xid, ingest_id) > ($1, $2))',
                   p_part)
        INTO unsynced USING p_last_xid, p_last_id;
    IF unsynced THEN
        RETURN 'kept: unsynced rows';
    END IF;
    IF p_dry_run THEN
        RETURN 'would drop';
    END IF;
    EXECUTE format('DROP TABLE %s', p_part);
    RETURN 'dropped';
END
$$;
REVOKE EXECUTE ON FUNCTION kd_retention_drop(regclass, timestamptz, xid8, bigint, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kd_retention_drop(regclass, timestamptz, xid8, bigint, boolean)
    TO kd_retention;
-- Name lookup of the partitions (public, and _timescaledb_internal for chunks) needs USAGE only.
GRANT USAGE ON SCHEMA public TO kd_retention;
DO $$
BEGIN
    IF to_regnamespace('_timescaledb_internal') IS NOT NULL THEN
        GRANT USAGE ON SCHEMA _timescaledb_internal TO kd_retention;
    END IF;
END
$$;
