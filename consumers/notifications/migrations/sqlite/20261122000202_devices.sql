-- Push devices of users (POST/DELETE /api/v1/devices). A token FCM reports as unregistered is
-- kept, inactive, so the log of what was sent to it still reads.
CREATE TABLE notify_devices (
    token         TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    platform      TEXT NOT NULL,
    active        BOOLEAN NOT NULL,
    updated_at_us BIGINT NOT NULL
);

CREATE INDEX notify_devices_by_user ON notify_devices (user_id);
