-- Production data tables (columns must match kalshi_data/tables.py; a test checks).

SELECT kd_create_prod_timeseries('trades', $cols$
    trade_id uuid NOT NULL, ticker text NOT NULL, exchange_ts timestamptz NOT NULL,
    yes_price integer NOT NULL CHECK (yes_price BETWEEN 0 AND 10000),
    no_price integer NOT NULL CHECK (no_price BETWEEN 0 AND 10000),
    count bigint NOT NULL, taker_outcome_side text, taker_book_side text, taker_side text,
    is_block_trade boolean NOT NULL, sid integer, seq bigint, suspect boolean NOT NULL,
    received_at timestamptz NOT NULL
$cols$, 'trade_id, exchange_ts');

SELECT kd_create_prod_timeseries('orderbook_deltas', $cols$
    ticker text NOT NULL, market_id uuid, exchange_ts timestamptz NOT NULL,
    side text NOT NULL CHECK (side IN ('yes', 'no')),
    price integer NOT NULL CHECK (price BETWEEN 0 AND 10000), delta bigint NOT NULL,
    k integer NOT NULL CHECK (k >= 0), sid integer, seq bigint, suspect boolean NOT NULL,
    received_at timestamptz NOT NULL
$cols$, 'ticker, exchange_ts, side, price, delta, k');

SELECT kd_create_prod_timeseries('orderbook_snapshots', $cols$
    ticker text NOT NULL, market_id uuid, exchange_ts timestamptz NOT NULL,
    source text NOT NULL CHECK (source IN ('ws', 'rest')),
    yes_prices integer[] NOT NULL, yes_counts bigint[] NOT NULL,
    no_prices integer[] NOT NULL, no_counts bigint[] NOT NULL,
    content_hash bigint NOT NULL, sid integer, seq bigint, suspect boolean NOT NULL,
    received_at timestamptz NOT NULL
$cols$, 'ticker, exchange_ts, source, content_hash');

SELECT kd_create_prod_timeseries('tickers', $cols$
    ticker text NOT NULL, market_id uuid, exchange_ts timestamptz NOT NULL,
    price integer, yes_bid integer, yes_ask integer, volume bigint NOT NULL,
    open_interest bigint NOT NULL, dollar_volume bigint NOT NULL,
    dollar_open_interest bigint NOT NULL, yes_bid_size bigint NOT NULL,
    yes_ask_size bigint NOT NULL, last_trade_size bigint NOT NULL,
    content_hash bigint NOT NULL, received_at timestamptz NOT NULL
$cols$, 'ticker, exchange_ts, content_hash');

CREATE TABLE lifecycle_events (
    kind text NOT NULL CHECK (kind IN ('market', 'event', 'fee')), ticker text NOT NULL,
    event_type text NOT NULL, payload jsonb NOT NULL, content_hash bigint NOT NULL,
    sid integer, seq bigint, suspect boolean NOT NULL, received_at timestamptz NOT NULL,
    gatherer_id text NOT NULL, synced_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lifecycle_events_identity UNIQUE (kind, ticker, event_type, content_hash)
);
CREATE INDEX lifecycle_events_ticker ON lifecycle_events (ticker, received_at);

-- Metadata: the newest version per ticker (upserted only when the incoming version is newer).
CREATE TABLE markets (
    ticker text NOT NULL, event_ticker text NOT NULL, status text NOT NULL,
    updated_time timestamptz, data jsonb NOT NULL, content_hash bigint NOT NULL,
    received_at timestamptz NOT NULL,
    gatherer_id text NOT NULL, synced_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT markets_identity PRIMARY KEY (ticker)
);
CREATE INDEX markets_event ON markets (event_ticker);

CREATE TABLE events (
    event_ticker text NOT NULL, series_ticker text NOT NULL, updated_time timestamptz,
    data jsonb NOT NULL, content_hash bigint NOT NULL, received_at timestamptz NOT NULL,
    gatherer_id text NOT NULL, synced_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_identity PRIMARY KEY (event_ticker)
);

CREATE TABLE series (
    ticker text NOT NULL, updated_time timestamptz, data jsonb NOT NULL,
    content_hash bigint NOT NULL, received_at timestamptz NOT NULL,
    gatherer_id text NOT NULL, synced_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT series_identity PRIMARY KEY (ticker)
);

CREATE TABLE gaps (
    gap_id uuid NOT NULL, state text NOT NULL CHECK (state IN ('open', 'recovered')),
    sid integer, channel text NOT NULL, markets text[] NOT NULL, expected bigint, received bigint,
    detected_at timestamptz NOT NULL, recovered_at timestamptz, how text,
    received_at timestamptz NOT NULL,
    gatherer_id text NOT NULL, synced_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT gaps_identity PRIMARY KEY (gap_id, state)
);

CREATE TABLE dead_letters (
    dl_id uuid NOT NULL, source text NOT NULL, reason text NOT NULL, raw bytea NOT NULL,
    received_at timestamptz NOT NULL,
    gatherer_id text NOT NULL, synced_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_identity PRIMARY KEY (dl_id)
);

SELECT kd_ensure_partitions();
