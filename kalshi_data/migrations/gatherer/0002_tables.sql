-- Gatherer database, part 2: the tables (columns must match kalshi_data/tables.py; a test checks).
-- Prices: integer 1/10,000 dollar. Counts: bigint 1/100 contract. Times: timestamptz (UTC).

SELECT kd_create_timeseries('trades', $cols$
    trade_id uuid NOT NULL, ticker text NOT NULL, exchange_ts timestamptz NOT NULL,
    yes_price integer NOT NULL CHECK (yes_price BETWEEN 0 AND 10000),
    no_price integer NOT NULL CHECK (no_price BETWEEN 0 AND 10000),
    count bigint NOT NULL, taker_outcome_side text, taker_book_side text, taker_side text,
    is_block_trade boolean NOT NULL, sid integer, seq bigint, suspect boolean NOT NULL,
    received_at timestamptz NOT NULL
$cols$, 'trade_id, exchange_ts');

SELECT kd_create_timeseries('orderbook_deltas', $cols$
    ticker text NOT NULL, market_id uuid, exchange_ts timestamptz NOT NULL,
    side text NOT NULL CHECK (side IN ('yes', 'no')),
    price integer NOT NULL CHECK (price BETWEEN 0 AND 10000), delta bigint NOT NULL,
    k integer NOT NULL CHECK (k >= 0), sid integer, seq bigint, suspect boolean NOT NULL,
    received_at timestamptz NOT NULL
$cols$, 'ticker, exchange_ts, side, price, delta, k');

SELECT kd_create_timeseries('orderbook_snapshots', $cols$
    ticker text NOT NULL, market_id uuid, exchange_ts timestamptz NOT NULL,
    source text NOT NULL CHECK (source IN ('ws', 'rest')),
    yes_prices integer[] NOT NULL, yes_counts bigint[] NOT NULL,
    no_prices integer[] NOT NULL, no_counts bigint[] NOT NULL,
    content_hash bigint NOT NULL, sid integer, seq bigint, suspect boolean NOT NULL,
    received_at timestamptz NOT NULL
$cols$, 'ticker, exchange_ts, source, content_hash');

SELECT kd_create_timeseries('tickers', $cols$
    ticker text NOT NULL, market_id uuid, exchange_ts timestamptz NOT NULL,
    price integer, yes_bid integer, yes_ask integer, volume bigint NOT NULL,
    open_interest bigint NOT NULL, dollar_volume bigint NOT NULL,
    dollar_open_interest bigint NOT NULL, yes_bid_size bigint NOT NULL,
    yes_ask_size bigint NOT NULL, last_trade_size bigint NOT NULL,
    content_hash bigint NOT NULL, received_at timestamptz NOT NULL
$cols$, 'ticker, exchange_ts, content_hash');

SELECT kd_create_plain('lifecycle_events', $cols$
    kind text NOT NULL CHECK (kind IN ('market', 'event', 'fee')), ticker text NOT NULL,
    event_type text NOT NULL, payload jsonb NOT NULL, content_hash bigint NOT NULL,
    sid integer, seq bigint, suspect boolean NOT NULL, received_at timestamptz NOT NULL
$cols$, 'kind, ticker, event_type, content_hash');

-- Metadata is append-only here (one row per observed version): the writer stays insert-only and
-- the poll cursor sees every version; production keeps the newest per ticker.
SELECT kd_create_plain('markets', $cols$
    ticker text NOT NULL, event_ticker text NOT NULL, status text NOT NULL,
    updated_time timestamptz, data jsonb NOT NULL, content_hash bigint NOT NULL,
    received_at timestamptz NOT NULL
$cols$, 'ticker, content_hash');

SELECT kd_create_plain('events', $cols$
    event_ticker text NOT NULL, series_ticker text NOT NULL, updated_time timestamptz,
    data jsonb NOT NULL, content_hash bigint NOT NULL, received_at timestamptz NOT NULL
$cols$, 'event_ticker, content_hash');

SELECT kd_create_plain('series', $cols$
    ticker text NOT NULL, updated_time timestamptz, data jsonb NOT NULL,
    content_hash bigint NOT NULL, received_at timestamptz NOT NULL
$cols$, 'ticker, content_hash');

-- Gaps are data (DESIGN §3): one row when detected (state 'open'), one when recovered.
SELECT kd_create_plain('gaps', $cols$
    gap_id uuid NOT NULL, state text NOT NULL CHECK (state IN ('open', 'recovered')),
    sid integer, channel text NOT NULL, markets text[] NOT NULL, expected bigint, received bigint,
    detected_at timestamptz NOT NULL, recovered_at timestamptz, how text,
    received_at timestamptz NOT NULL
$cols$, 'gap_id, state');

-- Bad input is data: every rejected frame with its reason (raw bytes kept, bounded by the parser).
SELECT kd_create_plain('dead_letters', $cols$
    dl_id uuid NOT NULL, source text NOT NULL, reason text NOT NULL, raw bytea NOT NULL,
    received_at timestamptz NOT NULL
$cols$, 'dl_id');

CREATE INDEX trades_ticker_ts ON trades (ticker, exchange_ts);
CREATE INDEX orderbook_deltas_ticker_ts ON orderbook_deltas (ticker, exchange_ts);
CREATE INDEX tickers_ticker_ts ON tickers (ticker, exchange_ts);
CREATE INDEX markets_ticker ON markets (ticker, received_at);
