-- Idempotency-Key records: a retry with the same key gets the first answer, and a retry
-- after an unknown outcome re-publishes with the same event ids.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    id UUID PRIMARY KEY,
    principal TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    event_ids TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    response_status INTEGER,
    response_body TEXT,
    -- the attempt holding the lock: only it may release it
    attempt_id UUID NOT NULL,
    locked_until TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at TIMESTAMPTZ,
    UNIQUE (principal, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_at ON idempotency_keys (expires_at);
