-- Native partition upkeep (the plain-PostgreSQL path; a no-op on hypertables, which TimescaleDB
-- chunks by itself). Creates one partition per UTC day from p_days_back to p_days_ahead for every
-- range-partitioned table. A day that already has rows in the default partition is left there
-- (moving them would need a rewrite under lock); queries read through the parent either way.
-- SECURITY DEFINER so insert-only roles can call it without any DDL right of their own.
CREATE FUNCTION kd_ensure_partitions(p_days_back integer DEFAULT 2, p_days_ahead integer DEFAULT 7)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    t record;
    d date;
    today date := (now() AT TIME ZONE 'UTC')::date;
    created integer := 0;
    part text;
    lo timestamptz;
    hi timestamptz;
    busy boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('kd_ensure_partitions'));
    FOR t IN
        SELECT c.relname FROM pg_partitioned_table p
        JOIN pg_class c ON c.oid = p.partrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'
    LOOP
        FOR d IN SELECT g::date FROM generate_series(today - p_days_back, today + p_days_ahead,
                                                      interval '1 day') AS g
        LOOP
            part := t.relname || '_p' || to_char(d, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
            lo := d::timestamp AT TIME ZONE 'UTC';
            hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE exchange_ts >= $1 AND exchange_ts < $2)',
                           t.relname || '_default') INTO busy USING lo, hi;
            CONTINUE WHEN busy;
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part, t.relname, lo, hi);
                created := created + 1;
            EXCEPTION WHEN check_violation OR duplicate_table THEN
                -- a row for that day reached the default partition meanwhile: leave it be
                NULL;
            END;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;
REVOKE EXECUTE ON FUNCTION kd_ensure_partitions(integer, integer) FROM PUBLIC;
SELECT kd_ensure_partitions();
