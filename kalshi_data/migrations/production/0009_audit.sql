-- The trade audit against the exchange's own record (kalshi_data/audit.py, docs/audit.md).
--
-- audit_windows: one row per closed window of exchange time [window_start, window_end). A window
-- is 'pending' until every page of GET /markets/trades for it was compared with production (and
-- the missing trades backfilled); an exchange failure leaves it pending with last_error, and the
-- next run resumes from watermark (the cursor of the next page to read; NULL = the first page).
-- Counts accumulate page by page in the same transaction as the backfill and the watermark.
CREATE TABLE audit_windows (
    window_start timestamptz PRIMARY KEY,
    window_end timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    exchange_trades bigint NOT NULL DEFAULT 0,
    live_trades bigint NOT NULL DEFAULT 0,
    backfilled bigint NOT NULL DEFAULT 0,
    missing_after bigint NOT NULL DEFAULT 0,
    pages bigint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    watermark text,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (window_end > window_start)
);
CREATE INDEX audit_windows_pending ON audit_windows (window_start) WHERE status = 'pending';

-- coverage: one row per window x market with activity (an exchange trade or an uncovered gap).
--   exchange_trades  trades the exchange lists for the market in the window
--   live_trades      of those, captured live by a gatherer (in production before the audit)
--   backfilled       of those, written by the audit (gatherer_id = 'rest_backfill')
--   missing_after    of those, still not in production after the backfill (should be 0)
--   uncovered_gaps   order-book gap windows on the market that no other gatherer covered
--                    (every gatherer was in a gap at once), each closed by the next snapshot
--   uncovered_gap_s  their total length, seconds
CREATE TABLE coverage (
    window_start timestamptz NOT NULL,
    ticker text NOT NULL,
    exchange_trades bigint NOT NULL DEFAULT 0,
    live_trades bigint NOT NULL DEFAULT 0,
    backfilled bigint NOT NULL DEFAULT 0,
    missing_after bigint NOT NULL DEFAULT 0,
    uncovered_gaps integer NOT NULL DEFAULT 0,
    uncovered_gap_s double precision NOT NULL DEFAULT 0,
    computed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT coverage_pkey PRIMARY KEY (window_start, ticker)
);
CREATE INDEX coverage_ticker ON coverage (ticker, window_start);

-- kd_auditor: reads what the audit compares with, inserts backfilled trades (never updates or
-- deletes data), owns its own two tables. `kalshi-data status` runs as this role too.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kd_auditor') THEN
        CREATE ROLE kd_auditor NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO kd_auditor;
GRANT SELECT ON trades, orderbook_snapshots, gaps, sync_cursors, dedup_lease TO kd_auditor;
GRANT INSERT ON trades TO kd_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON audit_windows, coverage TO kd_auditor;
GRANT EXECUTE ON FUNCTION kd_ensure_partitions(integer, integer) TO kd_auditor;
-- 0005 granted SELECT ON ALL TABLES before these two existed.
GRANT SELECT ON audit_windows, coverage TO kd_exporter, kd_analyst;
