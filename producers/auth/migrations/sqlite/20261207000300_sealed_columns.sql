-- The personal columns (email, display_name, phone) may hold values encrypted under the
-- account's data key, which an erasure destroys; accounts are then found by these digests
-- (keyed, see platform::privacy) rather than by the values. With privacy off a digest is
-- the value itself, which is what rows written before hold until the service seals them.
ALTER TABLE auth_accounts ADD COLUMN email_lookup TEXT;
ALTER TABLE auth_accounts ADD COLUMN phone_lookup TEXT;
UPDATE auth_accounts SET email_lookup = email, phone_lookup = phone;
DROP INDEX IF EXISTS auth_accounts_email;
DROP INDEX IF EXISTS auth_accounts_phone;
DROP INDEX IF EXISTS auth_accounts_verified_phone;
-- One live account per address; a deleted one frees it.
CREATE UNIQUE INDEX auth_accounts_email_lookup ON auth_accounts (email_lookup)
    WHERE deleted_at IS NULL;
CREATE INDEX auth_accounts_phone_lookup ON auth_accounts (phone_lookup)
    WHERE deleted_at IS NULL;
-- One verified phone, one live account.
CREATE UNIQUE INDEX auth_accounts_verified_phone_lookup ON auth_accounts (phone_lookup)
    WHERE phone_verified_at IS NOT NULL AND deleted_at IS NULL;
