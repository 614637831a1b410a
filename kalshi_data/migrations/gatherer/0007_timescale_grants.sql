-- TimescaleDB compatibility, part 1: one privilege set on both backends.
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
