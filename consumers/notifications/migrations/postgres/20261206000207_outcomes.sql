-- Delivery outcomes are published as notification.settled events (src/outcomes.rs): the
-- updated_at_us of the outcome last published, so a row whose outcome changed since is
-- published again. Rows settled before this column existed are published once.
ALTER TABLE notify_deliveries ADD COLUMN outcome_published_us BIGINT;
CREATE INDEX notify_deliveries_unpublished ON notify_deliveries (updated_at_us)
    WHERE status IN ('sent', 'failed', 'skipped', 'dead')
    AND (outcome_published_us IS NULL OR outcome_published_us <> updated_at_us);
