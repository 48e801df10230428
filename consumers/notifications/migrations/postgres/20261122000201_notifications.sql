-- The notification service's projection of users (from the users topic) and its delivery log.

CREATE TABLE notify_users (
    user_id       TEXT PRIMARY KEY,
    email         TEXT,
    phone         TEXT,
    display_name  TEXT,
    locale        TEXT NOT NULL DEFAULT 'en',
    time_zone     TEXT NOT NULL DEFAULT 'UTC',
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at_us BIGINT NOT NULL
);

-- One row per (event, channel, recipient): written as intent ('sending') before a provider is
-- called and with the outcome after, so a redelivered event finds its row and sends nothing.
CREATE TABLE notify_deliveries (
    event_id      TEXT NOT NULL,
    channel       TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    user_id       TEXT,
    address       TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    template      TEXT NOT NULL,
    category      TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    provider      TEXT,
    detail        TEXT,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL,
    PRIMARY KEY (event_id, channel, recipient)
);

CREATE INDEX notify_deliveries_by_user ON notify_deliveries (user_id, created_at_us);
