-- Idempotency-Key records: a retry with the same key gets the first answer, and a retry
-- after an unknown outcome re-publishes with the same event ids.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    event_ids TEXT NOT NULL,
    received_at TEXT NOT NULL,
    response_status INTEGER,
    response_body TEXT,
    -- the attempt holding the lock: only it may release it
    attempt_id TEXT NOT NULL,
    locked_until TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deleted_at TEXT,
    UNIQUE (principal, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_at ON idempotency_keys (expires_at);
