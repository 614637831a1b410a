-- Services must refuse to touch a database whose timescaledb extension is installed but not
-- preloaded (DESIGN.md §3a), yet shared_preload_libraries is readable only by superusers and
-- pg_read_all_settings. This definer-rights function answers just that question.
CREATE FUNCTION kd_timescale_status(OUT installed boolean, OUT preloaded boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
           current_setting('shared_preload_libraries') ~ '(^|[\s,])"?timescaledb"?($|[\s,])'
$$;
