-- A phone signs in by one-time code only once a code sent to it has come back (verified), and
-- one verified phone belongs to one live account: a second account registered with someone
-- else's number never receives their codes.
ALTER TABLE auth_accounts ADD COLUMN phone_verified_at BIGINT;
CREATE UNIQUE INDEX IF NOT EXISTS auth_accounts_verified_phone ON auth_accounts (phone)
    WHERE phone_verified_at IS NOT NULL AND deleted_at IS NULL;
