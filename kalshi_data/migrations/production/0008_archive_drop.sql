-- Archive, then drop (kalshi_data/export.py, production.keep_days): a day's partition leaves
-- production only after its export is committed and verified against the manifest.

-- When the uploaded object was read back from S3 and matched the manifest (row count, sha256).
ALTER TABLE export_manifests ADD COLUMN verified_at timestamptz;

-- Detach and drop one day's partition, in one transaction (the data is in production until it
-- commits). Refuses unless the manifest of exactly that object and day is verified and its row
-- count equals the partition's. Returns false when there is no such attached partition.
CREATE FUNCTION kd_drop_day(p_table text, p_day date, p_key text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    part text := kd_part_name(p_table, p_day);
    m record;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('kd_part:' || p_table));
    IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
                   WHERE c.oid = to_regclass(part) AND i.inhparent = p_table::regclass) THEN
        RETURN false;
    END IF;
    SELECT * INTO m FROM export_manifests
    WHERE s3_key = p_key AND table_name = p_table AND range_start = kd_day_lo(p_day)
      AND range_end = kd_day_lo(p_day) + interval '1 day' FOR UPDATE;
    IF NOT FOUND OR m.verified_at IS NULL THEN
        RAISE EXCEPTION 'kd_drop_day: no verified export of % %', p_table, p_day;
    END IF;
    EXECUTE format('SELECT count(*) FROM %I', part) INTO n;
    IF n <> m.row_count THEN
        RAISE EXCEPTION 'kd_drop_day: % has % rows, its export %', part, n, m.row_count;
    END IF;
    EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', p_table, part);
    EXECUTE format('DROP TABLE %I', part);
    RETURN true;
END
$$;
REVOKE EXECUTE ON FUNCTION kd_drop_day(text, date, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kd_drop_day(text, date, text) TO kd_exporter;
-- The importer (a kd_dedup_writer member) makes the partitions of the days it restores.
GRANT SELECT ON export_manifests TO kd_dedup_writer;
