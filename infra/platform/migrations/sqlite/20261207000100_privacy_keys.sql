-- Each data subject's data key, wrapped by a key-encryption key (see platform::privacy).
-- An erased subject keeps its row with no key: nothing new is protected for them.
CREATE TABLE IF NOT EXISTS privacy_keys (
    subject TEXT PRIMARY KEY,
    wrapped TEXT,
    created_at BIGINT NOT NULL,
    erased_at BIGINT
);
