-- Keys for the publish, pull and stream API. Only a SHA-256 of the key is kept; `prefix`
-- (its random first part, not secret) finds the row, so the hash is compared in constant time.
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,                     -- comma separated: publish, read
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);

-- Idempotency-Key of a publish -> the answer it got, per API key, for 24 hours. Written in
-- the transaction that publishes, so a repeat either sees the event or publishes it itself.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    api_key_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    created_at REAL NOT NULL,
    status INTEGER NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency_keys (created_at);
