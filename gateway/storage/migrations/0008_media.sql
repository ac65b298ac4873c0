-- Media custody (media_store.py): one row per Meta media id, downloaded by the worker and
-- kept in the data folder under the file's sha256, so a file sent twice is kept once.
CREATE TABLE IF NOT EXISTS media (
    id INTEGER PRIMARY KEY,
    media_id TEXT NOT NULL UNIQUE,            -- Meta's id, checked against media_links.SAFE_ID
    mime_type TEXT NOT NULL DEFAULT '',
    sha256 TEXT NOT NULL DEFAULT '',          -- Meta's hash as sent (hex or base64)
    filename TEXT NOT NULL DEFAULT '',        -- a document's name, as the customer sent it
    file TEXT,                                -- hex sha256 naming the kept file, once downloaded
    size INTEGER,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'retrying', 'downloaded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS media_due ON media (next_attempt_at) WHERE state IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS media_file ON media (file);
-- The webhooks that carried each media id: the file goes when the last of them is pruned.
CREATE TABLE IF NOT EXISTS media_refs (
    media INTEGER NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    webhook_id INTEGER NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    PRIMARY KEY (media, webhook_id)
);
CREATE INDEX IF NOT EXISTS media_refs_webhook ON media_refs (webhook_id);
