-- wahook's schema as it first shipped: version 1. Each later change is the next numbered file;
-- ../schema.sql is the whole current schema in one piece. Times are unix seconds.

-- Every signed Meta POST, byte for byte, stored before Meta gets its 200.
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY,
    webhook_id TEXT NOT NULL UNIQUE,          -- "whk_...": X-Webhook-Id of meta-format deliveries
    received_at REAL NOT NULL,
    object TEXT NOT NULL DEFAULT '',          -- Meta's "object"
    fields TEXT NOT NULL DEFAULT '',          -- the change fields in it, comma separated
    event_count INTEGER NOT NULL DEFAULT 0,   -- new (not duplicate) events drawn from it
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_received ON webhooks (received_at);

-- The clean events, exactly as sent. dedupe_key is what makes a Meta retry a duplicate;
-- the UNIQUE constraint (not a check first) is what keeps two web workers from both inserting.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,            -- "evt_...": X-Webhook-Id, stable across retries
    webhook_id INTEGER REFERENCES webhooks (id) ON DELETE CASCADE,  -- NULL for webhook.test
    name TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,                   -- NULL for test events
    created_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_webhook ON events (webhook_id);
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);

-- Where events go.
CREATE TABLE IF NOT EXISTS endpoints (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,                     -- whsec_<base64>
    events TEXT NOT NULL DEFAULT '[]',        -- JSON list of event names; [] selects all
    format TEXT NOT NULL DEFAULT 'events' CHECK (format IN ('events', 'meta')),
    bearer_token TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- The outbox: one row per (event, endpoint), or per (Meta webhook, endpoint) for the meta
-- format, written in the intake transaction. A worker owns a row while lease_until is ahead.
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    endpoint_id INTEGER REFERENCES endpoints (id) ON DELETE SET NULL,
    endpoint_url TEXT NOT NULL,               -- kept for the monitor after the endpoint goes
    event_id INTEGER REFERENCES events (id) ON DELETE CASCADE,       -- NULL for meta format
    webhook_id INTEGER REFERENCES webhooks (id) ON DELETE CASCADE,   -- the source Meta webhook
    event_name TEXT NOT NULL,                 -- X-Webhook-Event
    message_id TEXT NOT NULL,                 -- X-Webhook-Id
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'retrying', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,      -- attempts in the current retry cycle
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_status_code INTEGER,
    last_error TEXT NOT NULL DEFAULT '',
    last_duration_ms INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, endpoint_id);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE INDEX IF NOT EXISTS deliveries_webhook ON deliveries (webhook_id);

-- Every attempt, kept for the monitor. endpoint_id has no foreign key on purpose:
-- the history outlives a deleted endpoint.
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    endpoint_id INTEGER,
    attempted_at REAL NOT NULL,
    duration_ms INTEGER NOT NULL,
    status_code INTEGER,                      -- NULL when there was no answer
    ok INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    response_body TEXT NOT NULL DEFAULT ''    -- the first 1 KiB
);
CREATE INDEX IF NOT EXISTS attempts_time ON attempts (attempted_at);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);

-- Meta POSTs refused for their signature, counted per minute for the monitor (a flood of
-- forgeries adds no rows). Nothing of the body is kept.
CREATE TABLE IF NOT EXISTS rejections (
    minute INTEGER NOT NULL,                  -- unix time // 60
    reason TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, reason)
);

-- Failed admin logins, shared by every web process for the rate limit.
CREATE TABLE IF NOT EXISTS login_failures (
    id INTEGER PRIMARY KEY,
    remote_addr TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_addr ON login_failures (remote_addr, at);

-- Worker heartbeats, so /healthz can tell whether anyone is delivering.
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL
);
