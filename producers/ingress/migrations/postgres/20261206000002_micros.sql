-- Times as microseconds since the Unix epoch, as every other table keeps them and as the
-- code reads them (infra/platform/src/clock.rs). Keys held at the upgrade keep their times.
ALTER TABLE idempotency_keys
    ADD COLUMN received_at_us BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN locked_until_us BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN expires_at_us BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN updated_at_us BIGINT NOT NULL DEFAULT 0;
UPDATE idempotency_keys SET
    received_at_us = (EXTRACT(EPOCH FROM received_at) * 1000000)::BIGINT,
    locked_until_us = (EXTRACT(EPOCH FROM locked_until) * 1000000)::BIGINT,
    expires_at_us = (EXTRACT(EPOCH FROM expires_at) * 1000000)::BIGINT,
    updated_at_us = (EXTRACT(EPOCH FROM updated_at) * 1000000)::BIGINT;
DROP INDEX IF EXISTS idempotency_keys_expires_at;
ALTER TABLE idempotency_keys
    DROP COLUMN received_at,
    DROP COLUMN locked_until,
    DROP COLUMN expires_at,
    DROP COLUMN updated_at;
CREATE INDEX idempotency_keys_expires_at_us ON idempotency_keys (expires_at_us);
