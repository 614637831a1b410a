-- Production partition upkeep, run by the deduplicator leader (deduplicator/upkeep.py).
--
-- One day's partition is made in steps, each its own short transaction, so that no step holds a
-- lock that blocks the deduplicator's inserts for long (PostgreSQL 15 lock levels):
--   1. kd_part_begin:    CREATE TABLE <t>_pYYYYMMDD standalone (LIKE the parent, its CHECKs and
--                        indexes) with a CHECK on the day's range. If the default partition holds
--                        rows of that day, a BEFORE INSERT trigger on the default (SHARE ROW
--                        EXCLUSIVE, brief) redirects new rows of that day into the new table.
--   2. kd_part_move:     moves the day's rows out of the default, one block range per call
--                        (DELETE ... RETURNING into the new table; ROW EXCLUSIVE only, so inserts
--                        and reads go on). Identity conflicts keep one row, preferring a clean one.
--   3. kd_part_seal:     CHECK (outside the day) NOT VALID on the default (ACCESS EXCLUSIVE, no scan).
--   4. kd_part_validate: VALIDATE that CHECK (SHARE UPDATE EXCLUSIVE: scans, blocks no DML).
--   5. kd_part_attach:   ATTACH PARTITION (SHARE UPDATE EXCLUSIVE on the parent, ACCESS EXCLUSIVE
--                        on the default and new table), with no scan of either: both carry a valid
--                        CHECK that proves the partition constraint. Takes SHARE on the parent
--                        first (waits for in-flight writes, holds new writes for milliseconds,
--                        reads go on). Drops the trigger and the default's CHECK.
-- Every step is idempotent and the catalog is the state: a crash anywhere leaves each row either
-- in the default or in the new table, and the next run carries on from where it stopped.
-- SECURITY DEFINER: the deduplicator's role has no DDL right of its own.

CREATE FUNCTION kd_part_name(p_table text, p_day date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT p_table || '_p' || to_char(p_day, 'YYYYMMDD') $$;

CREATE FUNCTION kd_day_lo(p_day date) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$ SELECT p_day::timestamp AT TIME ZONE 'UTC' $$;

-- Rows per UTC day in a table's default partition (one scan; cheap while the default is empty).
CREATE FUNCTION kd_default_days(p_table text)
RETURNS TABLE (day date, n bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT (exchange_ts AT TIME ZONE ''UTC'')::date, count(*) FROM %I GROUP BY 1 ORDER BY 1',
        p_table || '_default');
END
$$;

-- The ON CONFLICT clause for moved rows: keep one row per identity, a clean copy over a suspect one
-- (the deduplicator's own rule for a clean copy from another gatherer).
CREATE FUNCTION kd_move_conflict(p_table text, p_target text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
DECLARE
    ident text;
    has_suspect boolean;
BEGIN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord) INTO ident
    FROM pg_constraint c
    CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
    WHERE c.conrelid = p_table::regclass AND c.conname = p_table || '_identity';
    SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = p_table::regclass
                   AND attname = 'suspect' AND NOT attisdropped) INTO has_suspect;
    IF NOT has_suspect THEN
        RETURN format('ON CONFLICT (%s) DO NOTHING', ident);
    END IF;
    RETURN format('ON CONFLICT (%s) DO UPDATE SET suspect = false, gatherer_id = EXCLUDED.gatherer_id, '
                  'synced_at = EXCLUDED.synced_at WHERE %I.suspect AND NOT EXCLUDED.suspect',
                  ident, p_target);
END
$$;

-- Trigger on a default partition: a new row of a day being repaired goes to that day's table.
CREATE FUNCTION kd_redirect_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    lo timestamptz := TG_ARGV[1]::timestamptz;
BEGIN
    IF NEW.exchange_ts >= lo AND NEW.exchange_ts < lo + interval '1 day' THEN
        EXECUTE format('INSERT INTO %I SELECT ($1).* %s', TG_ARGV[0],
                       kd_move_conflict(TG_ARGV[2], TG_ARGV[0])) USING NEW;
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

-- Step 1. Returns -1 when the day's partition is already attached, else the default's size in
-- blocks when it holds rows of the day (the range for kd_part_move to sweep), else 0.
CREATE FUNCTION kd_part_begin(p_table text, p_day date) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    part text := kd_part_name(p_table, p_day);
    def text := p_table || '_default';
    lo timestamptz := kd_day_lo(p_day);
    busy boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('kd_part:' || p_table));
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass(part) AND relispartition) THEN
        RETURN -1;
    END IF;
    IF to_regclass(part) IS NULL THEN
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                       'INCLUDING INDEXES)', part, p_table);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (exchange_ts >= %L AND '
                       'exchange_ts < %L)', part, part || '_range', lo, lo + interval '1 day');
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE exchange_ts >= $1 AND exchange_ts < $2)',
                   def) INTO busy USING lo, lo + interval '1 day';
    IF NOT busy THEN
        RETURN 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = def::regclass
                   AND tgname = 'kd_redirect_' || part) THEN
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT ON %I FOR EACH ROW '
                       'EXECUTE FUNCTION kd_redirect_row(%L, %L, %L)',
                       'kd_redirect_' || part, def, part, lo, p_table);
    END IF;
    RETURN pg_relation_size(def::regclass) / current_setting('block_size')::bigint;
END
$$;

-- Step 2. Moves the day's rows found in blocks [p_from, p_from + p_blocks) of the default (the
-- whole default when p_blocks is NULL); returns the number of rows taken out of the default.
CREATE FUNCTION kd_part_move(p_table text, p_day date, p_from bigint, p_blocks bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    part text := kd_part_name(p_table, p_day);
    def text := p_table || '_default';
    lo timestamptz := kd_day_lo(p_day);
    tids text := '';
    moved bigint;
BEGIN
    IF p_blocks IS NOT NULL THEN
        tids := format('ctid >= ''(%s,0)''::tid AND ctid < ''(%s,0)''::tid AND ', p_from,
                       p_from + p_blocks);
    END IF;
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %s exchange_ts >= $1 AND exchange_ts < $2 '
                   'RETURNING *), ins AS (INSERT INTO %I SELECT * FROM moved %s RETURNING 1) '
                   'SELECT count(*) FROM moved',
                   def, tids, part, kd_move_conflict(p_table, part))
        INTO moved USING lo, lo + interval '1 day';
    RETURN moved;
END
$$;

-- Step 3. The default promises to hold no row of the day (checked for new rows at once).
CREATE FUNCTION kd_part_seal(p_table text, p_day date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    def text := p_table || '_default';
    con text := p_table || '_default_not_' || to_char(p_day, 'YYYYMMDD');
    lo timestamptz := kd_day_lo(p_day);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = def::regclass AND conname = con) THEN
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (exchange_ts < %L OR '
                       'exchange_ts >= %L) NOT VALID', def, con, lo, lo + interval '1 day');
    END IF;
END
$$;

-- Step 4. Proves the promise for existing rows without blocking inserts.
CREATE FUNCTION kd_part_validate(p_table text, p_day date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', p_table || '_default',
                   p_table || '_default_not_' || to_char(p_day, 'YYYYMMDD'));
END
$$;

-- Step 5. Attaches without scanning, then removes the trigger and the default's CHECK.
CREATE FUNCTION kd_part_attach(p_table text, p_day date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    part text := kd_part_name(p_table, p_day);
    def text := p_table || '_default';
    lo timestamptz := kd_day_lo(p_day);
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('kd_part:' || p_table));
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass(part) AND relispartition) THEN
        RETURN;
    END IF;
    -- SHARE on the parent waits for in-flight writes and holds new ones for the few milliseconds
    -- this takes (reads go on): a write that began earlier would route with the old partition map
    -- and send a row of the day to the default, whose partition constraint now rejects it.
    EXECUTE format('LOCK TABLE %I IN SHARE MODE', p_table);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   p_table, part, lo, lo + interval '1 day');
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT IF EXISTS %I', def,
                   p_table || '_default_not_' || to_char(p_day, 'YYYYMMDD'));
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', 'kd_redirect_' || part, def);
END
$$;

REVOKE EXECUTE ON FUNCTION kd_default_days(text), kd_part_begin(text, date),
    kd_part_move(text, date, bigint, bigint), kd_part_seal(text, date),
    kd_part_validate(text, date), kd_part_attach(text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kd_default_days(text), kd_part_begin(text, date),
    kd_part_move(text, date, bigint, bigint), kd_part_seal(text, date),
    kd_part_validate(text, date), kd_part_attach(text, date) TO kd_dedup_writer;
GRANT EXECUTE ON FUNCTION kd_default_days(text) TO kd_exporter, kd_analyst;
