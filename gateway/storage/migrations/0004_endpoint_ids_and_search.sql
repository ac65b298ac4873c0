-- Endpoint ids are never reused, so a new endpoint never inherits a deleted one's attempts.
-- INTEGER PRIMARY KEY hands out max(id) + 1, which is a deleted endpoint's id again; the
-- table cannot become AUTOINCREMENT without being rebuilt, and rebuilding it (DROP TABLE)
-- would null every delivery's endpoint through ON DELETE SET NULL. So the highest id ever
-- used is kept here, seeded from every place an old id survives.
CREATE TABLE IF NOT EXISTS endpoint_ids (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO endpoint_ids (one, last) VALUES (1, max(
    (SELECT coalesce(max(id), 0) FROM endpoints),
    (SELECT coalesce(max(endpoint_id), 0) FROM deliveries),
    (SELECT coalesce(max(endpoint_id), 0) FROM attempts)
));
-- An endpoint inserted with an explicit id (a restored backup, a script) raises the mark too.
CREATE TRIGGER IF NOT EXISTS endpoint_ids_seen AFTER INSERT ON endpoints BEGIN
    UPDATE endpoint_ids SET last = max(last, NEW.id);
END;

-- A failed delivery of a deleted endpoint can never be sent again; the admin dismisses it.
-- It then leaves the monitor's counts but keeps its row and attempts (the history).
ALTER TABLE deliveries ADD COLUMN dismissed_at REAL;

-- The event log's search. The customer (a phone number, or a business-scoped user id) and
-- the WhatsApp message id are read out of the event's JSON by generated columns: nothing at
-- intake has to fill them, old rows have them at once, and the indexes hold the values.
ALTER TABLE events ADD COLUMN customer TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(body) THEN coalesce(
        nullif(json_extract(body, '$.recipient'), ''),
        CASE WHEN name = 'message.echo' THEN nullif(json_extract(body, '$.to'), '') END,
        nullif(json_extract(body, '$.from'), ''),
        nullif(json_extract(body, '$.wa_id'), ''),
        nullif(json_extract(body, '$.user_phone'), '')
    ) END
) VIRTUAL;
ALTER TABLE events ADD COLUMN customer_user_id TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(body) THEN coalesce(
        nullif(json_extract(body, '$.recipient_user_id'), ''),
        CASE WHEN name = 'message.echo' THEN nullif(json_extract(body, '$.to_user_id'), '') END,
        nullif(json_extract(body, '$.from_user_id'), ''),
        nullif(json_extract(body, '$.user_id'), '')
    ) END
) VIRTUAL;
ALTER TABLE events ADD COLUMN message_id TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(body) THEN nullif(json_extract(body, '$.message_id'), '') END
) VIRTUAL;
-- Each search walks one index newest webhook first and stops after a page.
CREATE INDEX IF NOT EXISTS events_customer ON events (customer, webhook_id) WHERE customer IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_customer_user ON events (customer_user_id, webhook_id)
    WHERE customer_user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_message ON events (message_id, webhook_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_name ON events (name, webhook_id);
CREATE INDEX IF NOT EXISTS deliveries_state_webhook ON deliveries (state, webhook_id);
