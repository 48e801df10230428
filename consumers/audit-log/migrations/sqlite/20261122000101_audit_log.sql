-- The audit log: one row per event id, append-only (no updated_at, no soft delete: a row
-- never changes), hash-chained per topic-partition (see src/chain.rs).
CREATE TABLE IF NOT EXISTS audit_log (
    id BLOB PRIMARY KEY,                 -- the event id
    chain TEXT NOT NULL,                 -- '<topic>/<partition>'
    seq INTEGER NOT NULL,                 -- 1, 2, ... within the chain
    kafka_offset INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    actor TEXT NOT NULL,
    aggregate_key TEXT,
    occurred_at_us INTEGER NOT NULL,      -- microseconds since the epoch
    content TEXT NOT NULL,               -- canonical JSON: envelope, data, position
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_log_newest ON audit_log (occurred_at_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_actor ON audit_log (actor, occurred_at_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_type ON audit_log (event_type, occurred_at_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_key ON audit_log (aggregate_key, occurred_at_us DESC, id DESC);

-- Where each chain ends, and the last Kafka offset applied to it.
CREATE TABLE IF NOT EXISTS audit_chains (
    chain TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    last_offset INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
