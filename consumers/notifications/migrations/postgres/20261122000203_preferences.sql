-- What each user agreed to receive (GET/PUT /api/v1/me/notification-preferences), as the
-- JSON document the API speaks.
CREATE TABLE notify_preferences (
    user_id       TEXT PRIMARY KEY,
    document      TEXT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
