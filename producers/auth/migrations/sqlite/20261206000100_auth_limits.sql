-- Attempts on auth routes per target account (an email or phone, as a digest: no personal
-- data here), for the per-account limits that hold whatever address the attempts come from.
CREATE TABLE IF NOT EXISTS auth_limit_hits (
    target TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_limit_hits_target ON auth_limit_hits (target, at);
