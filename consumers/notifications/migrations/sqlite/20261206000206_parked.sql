-- Events whose recipient is not known yet, set aside so their partition goes on (see
-- src/parked.rs); each runs again once its user is known or its grace has passed.
CREATE TABLE notify_parked (
    event_id       TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    received_at_us BIGINT NOT NULL,
    event          TEXT NOT NULL
);
CREATE INDEX notify_parked_user ON notify_parked (user_id);
