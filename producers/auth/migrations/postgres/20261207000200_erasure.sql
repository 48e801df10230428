-- When an account's personal data was erased (its columns blanked, its data key destroyed).
-- A soft-deleted account not erased yet is erased by the retention job.
ALTER TABLE auth_accounts ADD COLUMN erased_at BIGINT;
