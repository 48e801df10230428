-- Times as microseconds since the Unix epoch, as every other table keeps them and as the
-- code reads them (infra/platform/src/clock.rs). Keys held at the upgrade keep their times
-- (from their RFC 3339 text, to the tens of microseconds julianday resolves).
ALTER TABLE idempotency_keys ADD COLUMN received_at_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE idempotency_keys ADD COLUMN locked_until_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE idempotency_keys ADD COLUMN expires_at_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE idempotency_keys ADD COLUMN updated_at_us INTEGER NOT NULL DEFAULT 0;
UPDATE idempotency_keys SET
    received_at_us = CAST((julianday(received_at) - 2440587.5) * 86400000000 AS INTEGER),
    locked_until_us = CAST((julianday(locked_until) - 2440587.5) * 86400000000 AS INTEGER),
    expires_at_us = CAST((julianday(expires_at) - 2440587.5) * 86400000000 AS INTEGER),
    updated_at_us = CAST((julianday(updated_at) - 2440587.5) * 86400000000 AS INTEGER);
DROP INDEX IF EXISTS idempotency_keys_expires_at;
ALTER TABLE idempotency_keys DROP COLUMN received_at;
ALTER TABLE idempotency_keys DROP COLUMN locked_until;
ALTER TABLE idempotency_keys DROP COLUMN expires_at;
ALTER TABLE idempotency_keys DROP COLUMN updated_at;
CREATE INDEX idempotency_keys_expires_at_us ON idempotency_keys (expires_at_us);
