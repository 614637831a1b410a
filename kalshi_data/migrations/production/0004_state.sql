-- The deduplicator's own state, in the same database as the data so that data and cursor
-- commit in one transaction (DESIGN §4.2).

-- Per (gatherer, table) poll cursor: rows with (ingest_xid, ingest_id) <= (last_xid, last_id)
-- were merged. system_identifier pins the cursor to one gatherer cluster: xid8 values mean
-- nothing in another cluster (a rebuilt or restored gatherer DB), see reliability-notes §1.1.
CREATE TABLE sync_cursors (
    gatherer_id text NOT NULL,
    table_name text NOT NULL,
    system_identifier text,
    last_xid xid8 NOT NULL DEFAULT '0',
    last_id bigint NOT NULL DEFAULT 0,
    rows_read bigint NOT NULL DEFAULT 0,
    newest_received_at timestamptz,
    rescans bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sync_cursors_pkey PRIMARY KEY (gatherer_id, table_name)
);

-- Leader lease with a fencing epoch (reliability-notes §6): the first statement of every write
-- transaction checks (name, epoch, holder); a deposed leader's check matches no row.
CREATE TABLE dedup_lease (
    name text PRIMARY KEY,
    epoch bigint NOT NULL DEFAULT 0,
    holder text,
    renewed_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO dedup_lease (name) VALUES ('dedup');

-- S3 Parquet export: one manifest row per file written, and a watermark per table.
CREATE TABLE export_manifests (
    s3_key text PRIMARY KEY,
    table_name text NOT NULL,
    range_start timestamptz NOT NULL,
    range_end timestamptz NOT NULL,
    row_count bigint NOT NULL,
    sha256 text NOT NULL,
    min_ts timestamptz,
    max_ts timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_manifests_range UNIQUE (table_name, range_start)
);

CREATE TABLE export_watermarks (
    table_name text PRIMARY KEY,
    exported_until timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
