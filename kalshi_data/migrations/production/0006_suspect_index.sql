-- Partial indexes on suspect rows: the merge asks "does production hold any suspect row?"
-- before each batch, and clears flags by joining from these few rows.
CREATE INDEX trades_suspect ON trades (exchange_ts) WHERE suspect;
CREATE INDEX orderbook_deltas_suspect ON orderbook_deltas (exchange_ts) WHERE suspect;
CREATE INDEX orderbook_snapshots_suspect ON orderbook_snapshots (exchange_ts) WHERE suspect;
CREATE INDEX lifecycle_events_suspect ON lifecycle_events (received_at) WHERE suspect;
