-- Promotional messages held by quiet hours: status 'deferred' until not_before_us, with the
-- rendered message and its destination in payload (the event is long committed by then).
ALTER TABLE notify_deliveries ADD COLUMN not_before_us BIGINT;
ALTER TABLE notify_deliveries ADD COLUMN payload TEXT;
CREATE INDEX notify_deliveries_due ON notify_deliveries (status, not_before_us);
