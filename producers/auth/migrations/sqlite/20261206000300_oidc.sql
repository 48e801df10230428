-- Sign-ins under way with an OpenID Connect provider, by the SHA-256 of their state: taken
-- once by the callback, or deleted once expired.
CREATE TABLE IF NOT EXISTS auth_oidc_flows (
    state_hash TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,
    binding_hash TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_oidc_flows_expiry ON auth_oidc_flows (expires_at);

-- External identities (a provider's issuer and subject), each linked to one account.
CREATE TABLE IF NOT EXISTS auth_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX IF NOT EXISTS auth_identities_account ON auth_identities (account_id);
