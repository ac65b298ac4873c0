-- wahook's whole current schema (SQLite), in one file to read. Databases are built and brought
-- up to date by the numbered files in migrations/, never from this file; tests/test_schema.py
-- checks that running this on an empty database gives exactly what the migrations build.
-- PostgreSQL's text differs in types and triggers: migrations/*.postgresql.sql.
-- Times are unix seconds.

-- Every signed Meta POST, byte for byte, stored before Meta gets its 200.
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY,
    webhook_id TEXT NOT NULL UNIQUE,          -- "whk_...": X-Webhook-Id of meta-format deliveries
    received_at REAL NOT NULL,
    object TEXT NOT NULL DEFAULT '',          -- Meta's "object"
    fields TEXT NOT NULL DEFAULT '',          -- the change fields in it, comma separated
    event_count INTEGER NOT NULL DEFAULT 0,   -- new (not duplicate) events drawn from it
    body BLOB NOT NULL,
    -- Signed with the install's local simulate key (`simulate`), not by Meta: "Last Meta
    -- webhook", its metric and gateway.silent count Meta's own only.
    simulated INTEGER NOT NULL DEFAULT 0
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
    body TEXT NOT NULL,
    -- Filled by the writer from the event (event_catalog.search_columns): the event log's search
    -- (the customer as a phone number and as a business-scoped user id, the WhatsApp message id)
    -- and each event's account, for accounts= on pull, stream and WebSocket and the event log.
    customer TEXT,
    customer_user_id TEXT,
    message_id TEXT,
    waba_id TEXT,
    phone_number_id TEXT
);
CREATE INDEX IF NOT EXISTS events_webhook ON events (webhook_id);
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);
-- Each search walks one index newest webhook first and stops after a page.
CREATE INDEX IF NOT EXISTS events_customer ON events (customer, webhook_id) WHERE customer IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_customer_user ON events (customer_user_id, webhook_id)
    WHERE customer_user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_message ON events (message_id, webhook_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_name ON events (name, webhook_id);
CREATE INDEX IF NOT EXISTS events_waba ON events (waba_id, webhook_id) WHERE waba_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_phone_number ON events (phone_number_id, webhook_id)
    WHERE phone_number_id IS NOT NULL;

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
    updated_at REAL NOT NULL,
    -- Secret rotation: the secret a rotation replaced keeps signing alongside the new one
    -- until previous_secret_until, so receivers can switch without losing a delivery.
    previous_secret TEXT NOT NULL DEFAULT '',
    previous_secret_until REAL,
    -- The failing streak (outages.py): when its attempts started failing (NULL while it is
    -- healthy), when it is next probed and the probe interval, and until when deliveries of
    -- the outage are being redelivered to it after it came back.
    failing_since REAL,
    next_probe_at REAL,
    probe_interval REAL,
    recovering_until REAL,
    -- Accounts routing (accounts.py): WhatsApp Business Account ids and phone number ids, as a
    -- JSON list; [] takes every account.
    accounts TEXT NOT NULL DEFAULT '[]',
    -- A local endpoint (SPEC 4 `local`): a receiver on the same machine or network, which alone
    -- may use http:// and loopback or private addresses (never link-local, multicast or reserved).
    local INTEGER NOT NULL DEFAULT 0
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
    updated_at REAL NOT NULL,
    -- A failed delivery of a deleted endpoint can never be sent again; the admin dismisses it.
    -- It then leaves the monitor's counts but keeps its row and attempts (the history).
    dismissed_at REAL,
    -- Retry cycles given by hand (delivery.failed is sent once per cycle), and how often
    -- automatic recovery redelivered it in this cycle (a few times at most).
    cycle INTEGER NOT NULL DEFAULT 0,
    auto_redelivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, endpoint_id);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE INDEX IF NOT EXISTS deliveries_webhook ON deliveries (webhook_id);
-- Each lane claims its own endpoint's due deliveries, oldest first, in one index look-up,
-- however many deliveries other endpoints have waiting.
CREATE INDEX IF NOT EXISTS deliveries_lane ON deliveries (endpoint_id, next_attempt_at)
    WHERE state IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS deliveries_state_webhook ON deliveries (state, webhook_id);
-- The oldest failed deliveries of an endpoint, for its probe and its recovery.
CREATE INDEX IF NOT EXISTS deliveries_failed ON deliveries (endpoint_id, id) WHERE state = 'failed';
-- The oldest delivery still on its way, per endpoint, in one index look-up each.
CREATE INDEX IF NOT EXISTS deliveries_waiting_since ON deliveries (endpoint_id, created_at)
    WHERE state IN ('pending', 'retrying');

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
-- The monitor's last attempt and failure streak per endpoint.
CREATE INDEX IF NOT EXISTS attempts_endpoint ON attempts (endpoint_id, id);

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

-- Endpoint ids are never reused, so a new endpoint never inherits a deleted one's attempts:
-- the highest id ever used is kept here (INTEGER PRIMARY KEY alone would hand out a deleted
-- endpoint's id again).
CREATE TABLE IF NOT EXISTS endpoint_ids (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    last INTEGER NOT NULL
);
INSERT INTO endpoint_ids (one, last) VALUES (1, 0);
-- An endpoint inserted with an explicit id (a restored backup, a script) raises the mark too.
CREATE TRIGGER IF NOT EXISTS endpoint_ids_seen AFTER INSERT ON endpoints BEGIN
    UPDATE endpoint_ids SET last = max(last, NEW.id);
END;

-- Customers per business phone number, for contact.created / contact.updated (contacts.py).
-- Found by wa_id (their phone), else by user_id (the business-scoped id of a customer who
-- hides the phone behind a username). seen_ts is the newest message's own time: an older
-- message arriving late never renames anyone.
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY,
    phone_number_id TEXT NOT NULL,
    wa_id TEXT,
    user_id TEXT,
    name TEXT,
    seen_ts REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS contacts_wa_id ON contacts (phone_number_id, wa_id);
CREATE INDEX IF NOT EXISTS contacts_user_id ON contacts (phone_number_id, user_id);

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

-- Running totals for GET /metrics (metrics.py), kept by triggers in the very transaction
-- that changes the rows, so every web process and worker adds to the same numbers and a
-- scrape reads a few dozen rows instead of counting a million. `kind` names the series;
-- a counter's row is only ever added to (pruning history does not take from it).
CREATE TABLE IF NOT EXISTS metric_totals (
    kind TEXT NOT NULL,                       -- webhooks, events, attempts, deliveries
    label TEXT NOT NULL DEFAULT '',           -- outcome, event name, or endpoint id
    label2 TEXT NOT NULL DEFAULT '',          -- result or state
    value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, label, label2)
);
INSERT INTO metric_totals (kind, label, label2, value)
    VALUES ('webhooks', 'received', '', 0), ('webhooks', 'rejected', '', 0);
CREATE TRIGGER IF NOT EXISTS metric_webhook AFTER INSERT ON webhooks BEGIN
    INSERT INTO metric_totals (kind, label, label2, value) VALUES ('webhooks', 'received', '', 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS metric_rejection_new AFTER INSERT ON rejections BEGIN
    INSERT INTO metric_totals (kind, label, label2, value) VALUES ('webhooks', 'rejected', '', NEW.count)
        ON CONFLICT DO UPDATE SET value = value + NEW.count;
END;
CREATE TRIGGER IF NOT EXISTS metric_rejection_more AFTER UPDATE OF count ON rejections
    WHEN NEW.count > OLD.count BEGIN
    INSERT INTO metric_totals (kind, label, label2, value)
        VALUES ('webhooks', 'rejected', '', NEW.count - OLD.count)
        ON CONFLICT DO UPDATE SET value = value + NEW.count - OLD.count;
END;
-- A name an API client publishes gets a series of its own while there are fewer than 200
-- (db.EVENT_SERIES_MAX); past that, new ones count as "other". Meta's and wahook's own always count.
CREATE TRIGGER IF NOT EXISTS metric_event AFTER INSERT ON events BEGIN
    INSERT INTO metric_totals (kind, label, label2, value) VALUES ('events', CASE
        WHEN NEW.webhook_id IS NOT NULL
            OR substr(NEW.name, 1, instr(NEW.name, '.') - 1) IN ('message', 'template', 'account', 'whatsapp',
                'contact', 'endpoint', 'delivery', 'gateway', 'webhook')
            OR EXISTS (SELECT 1 FROM metric_totals WHERE kind = 'events' AND label = NEW.name)
            OR (SELECT count(DISTINCT label) FROM metric_totals WHERE kind = 'events') < 200
        THEN NEW.name ELSE 'other' END, '', 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS metric_attempt AFTER INSERT ON attempts BEGIN
    INSERT INTO metric_totals (kind, label, label2, value)
        VALUES ('attempts', coalesce(NEW.endpoint_id, 0), CASE WHEN NEW.ok THEN 'success' ELSE 'failure' END, 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
-- Deliveries are a gauge (how many are in each state now): added on insert, moved on a
-- change of state or endpoint (a deleted endpoint sets it NULL), taken away on delete.
CREATE TRIGGER IF NOT EXISTS metric_delivery_new AFTER INSERT ON deliveries BEGIN
    INSERT INTO metric_totals (kind, label, label2, value)
        VALUES ('deliveries', coalesce(NEW.endpoint_id, 0), NEW.state, 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS metric_delivery_moved AFTER UPDATE OF state, endpoint_id ON deliveries
    WHEN OLD.state IS NOT NEW.state OR OLD.endpoint_id IS NOT NEW.endpoint_id BEGIN
    UPDATE metric_totals SET value = value - 1
        WHERE kind = 'deliveries' AND label = CAST(coalesce(OLD.endpoint_id, 0) AS TEXT) AND label2 = OLD.state;
    INSERT INTO metric_totals (kind, label, label2, value)
        VALUES ('deliveries', coalesce(NEW.endpoint_id, 0), NEW.state, 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS metric_delivery_gone AFTER DELETE ON deliveries BEGIN
    UPDATE metric_totals SET value = value - 1
        WHERE kind = 'deliveries' AND label = CAST(coalesce(OLD.endpoint_id, 0) AS TEXT) AND label2 = OLD.state;
END;

-- The silent period last announced as gateway.silent (silence.py): pruning takes the webhook
-- that began it and the event that announced it, and the same silence must not be sent twice.
CREATE TABLE IF NOT EXISTS silence_announced (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    webhooks_seen INTEGER NOT NULL,           -- webhooks ever received when it was announced
    since REAL NOT NULL,
    announced_at REAL NOT NULL
);

-- Open admin sessions (admin_sessions.py): the sha256 of the cookie's token, so logging out
-- ends a session on the server; password_mark ties it to the password it was opened with.
CREATE TABLE IF NOT EXISTS admin_sessions (
    token_hash TEXT PRIMARY KEY,
    password_mark TEXT NOT NULL,
    created_at REAL NOT NULL,
    seen_at REAL NOT NULL
);
