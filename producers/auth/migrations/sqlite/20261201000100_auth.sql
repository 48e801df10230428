-- Accounts, their tokens and codes, the signing keys, the outbox of user events and the
-- app version thresholds. Ids are UUIDs as text, times are Unix microseconds.

CREATE TABLE IF NOT EXISTS auth_accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    display_name TEXT NOT NULL,
    phone TEXT,
    locale TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
-- One live account per address; a deleted one frees it.
CREATE UNIQUE INDEX IF NOT EXISTS auth_accounts_email ON auth_accounts (email) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS auth_accounts_phone ON auth_accounts (phone) WHERE deleted_at IS NULL;

-- Refresh tokens, stored as SHA-256 hashes. Each login starts a family; a refresh replaces
-- the token by the next of its family. Presenting a used one revokes the whole family.
CREATE TABLE IF NOT EXISTS auth_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX IF NOT EXISTS auth_refresh_family ON auth_refresh_tokens (family_id);
CREATE INDEX IF NOT EXISTS auth_refresh_account ON auth_refresh_tokens (account_id);

-- One-time codes (OTP) and password-reset links, hashed; one live code per account and purpose.
CREATE TABLE IF NOT EXISTS auth_codes (
    account_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, purpose)
);
CREATE TABLE IF NOT EXISTS auth_reset_tokens (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

-- Every OTP verification attempt, for the per-account limit.
CREATE TABLE IF NOT EXISTS auth_otp_attempts (
    account_id TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_otp_attempts_account ON auth_otp_attempts (account_id, at);

-- Signing keys: a key is published in the JWKS from its creation, signs from active_from,
-- and leaves the JWKS at retire_at, once every token it signed has expired.
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid TEXT PRIMARY KEY,
    private_pkcs8 TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    active_from BIGINT NOT NULL,
    retire_at BIGINT
);

-- Events written in the same transaction as the row they describe; the relay publishes
-- and deletes them. claimed_until leases a row to one relay at a time.
CREATE TABLE IF NOT EXISTS auth_outbox (
    event_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    record_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    event_type TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS auth_outbox_created ON auth_outbox (created_at);

-- Soft and hard update thresholds per platform.
CREATE TABLE IF NOT EXISTS app_versions (
    platform TEXT PRIMARY KEY,
    latest TEXT NOT NULL,
    minimum TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
