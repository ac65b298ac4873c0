-- The silent period last announced as gateway.silent (silence.py), kept apart from the history
-- that pruning removes: the webhook that began the silence and the event that announced it both
-- go after retention_days, and the same silence must not be sent twice. A period is named by
-- how many webhooks had been received when it was announced.
CREATE TABLE IF NOT EXISTS silence_announced (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    webhooks_seen INTEGER NOT NULL,
    since REAL NOT NULL,
    announced_at REAL NOT NULL
);

-- Admin sessions that are open (admin_sessions.py): the cookie carries a random token, kept
-- here as its sha256, so logging out ends the session on the server and a copied cookie stops
-- working. password_mark ties the row to the password it was opened with.
CREATE TABLE IF NOT EXISTS admin_sessions (
    token_hash TEXT PRIMARY KEY,
    password_mark TEXT NOT NULL,
    created_at REAL NOT NULL,
    seen_at REAL NOT NULL
);

-- Operational events stored before this carry the endpoint's whole URL, which can hold a token
-- (`…/hook?token=…`) that `read` API keys could pull: cut it at the query string or the
-- fragment, as new ones are (SPEC 3). (Endpoint URLs with credentials are refused when added.)
UPDATE events SET body = json_set(body, '$.url', substr(
    json_extract(body, '$.url'), 1,
    CASE WHEN instr(json_extract(body, '$.url'), '?') = 0 THEN instr(json_extract(body, '$.url'), '#')
        WHEN instr(json_extract(body, '$.url'), '#') = 0 THEN instr(json_extract(body, '$.url'), '?')
        ELSE min(instr(json_extract(body, '$.url'), '?'), instr(json_extract(body, '$.url'), '#')) END - 1
))
WHERE name IN ('delivery.failed', 'endpoint.disabled', 'endpoint.recovered') AND json_valid(body)
    AND json_type(body, '$.url') = 'text'
    AND (instr(json_extract(body, '$.url'), '?') > 0 OR instr(json_extract(body, '$.url'), '#') > 0);

-- Event names a publish key invents must not grow /metrics without bound: a name gets a series
-- of its own while there are fewer than 200 (db.EVENT_SERIES_MAX), and keeps it; past that, a
-- new name is counted as "other". Meta's events (from a webhook) and wahook's own names (their
-- prefixes are names.RESERVED_PREFIXES) always have their own.
DROP TRIGGER IF EXISTS metric_event;
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
