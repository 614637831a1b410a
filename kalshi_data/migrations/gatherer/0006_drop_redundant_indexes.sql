-- The (ticker, exchange_ts) indexes on orderbook_deltas and tickers repeat the leading columns
-- of each table's identity constraint (ticker, exchange_ts, ...), which serves the same lookups.
-- Each cost a third b-tree insert per row: measured on PostgreSQL 15, COPY into
-- orderbook_deltas went from 9.0 to 5.8 µs of server CPU per row without it (docs/gatherer.md).
-- trades keeps trades_ticker_ts: its identity is (trade_id, exchange_ts).
DROP INDEX IF EXISTS orderbook_deltas_ticker_ts;
DROP INDEX IF EXISTS tickers_ticker_ts;
