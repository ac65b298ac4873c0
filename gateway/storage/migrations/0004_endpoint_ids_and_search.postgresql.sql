-- Migration 4 as PostgreSQL runs it (0004_endpoint_ids_and_search.sql is SQLite's): triggers call functions,
-- and the search columns read JSON with PostgreSQL's operators, STORED.
CREATE TABLE IF NOT EXISTS endpoint_ids (
    one BIGINT PRIMARY KEY CHECK (one = 1),
    last BIGINT NOT NULL
);
INSERT INTO endpoint_ids (one, last) VALUES (1, greatest(
    (SELECT coalesce(max(id), 0) FROM endpoints),
    (SELECT coalesce(max(endpoint_id), 0) FROM deliveries),
    (SELECT coalesce(max(endpoint_id), 0) FROM attempts)
)) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION wahook_endpoint_ids_seen() RETURNS trigger AS $$
BEGIN
    UPDATE endpoint_ids SET last = greatest(last, NEW.id);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER endpoint_ids_seen AFTER INSERT ON endpoints
    FOR EACH ROW EXECUTE FUNCTION wahook_endpoint_ids_seen();
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS dismissed_at DOUBLE PRECISION;
-- SQLite's json_valid guard: text PostgreSQL will not read as JSON (an escaped lone surrogate
-- a customer sent) gives NULL, so the event is still stored, as on SQLite.
CREATE OR REPLACE FUNCTION wahook_json(t TEXT) RETURNS jsonb AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$ LANGUAGE plpgsql IMMUTABLE;
ALTER TABLE events ADD COLUMN IF NOT EXISTS customer TEXT GENERATED ALWAYS AS (coalesce(
    nullif(wahook_json(body) ->> 'recipient', ''),
    CASE WHEN name = 'message.echo' THEN nullif(wahook_json(body) ->> 'to', '') END,
    nullif(wahook_json(body) ->> 'from', ''),
    nullif(wahook_json(body) ->> 'wa_id', ''),
    nullif(wahook_json(body) ->> 'user_phone', '')
)) STORED;
ALTER TABLE events ADD COLUMN IF NOT EXISTS customer_user_id TEXT GENERATED ALWAYS AS (coalesce(
    nullif(wahook_json(body) ->> 'recipient_user_id', ''),
    CASE WHEN name = 'message.echo' THEN nullif(wahook_json(body) ->> 'to_user_id', '') END,
    nullif(wahook_json(body) ->> 'from_user_id', ''),
    nullif(wahook_json(body) ->> 'user_id', '')
)) STORED;
ALTER TABLE events ADD COLUMN IF NOT EXISTS message_id TEXT GENERATED ALWAYS AS (coalesce(
    nullif(wahook_json(body) ->> 'message_id', '')
)) STORED;
CREATE INDEX IF NOT EXISTS events_customer ON events (customer, webhook_id) WHERE customer IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_customer_user ON events (customer_user_id, webhook_id)
    WHERE customer_user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_message ON events (message_id, webhook_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_name ON events (name, webhook_id);
CREATE INDEX IF NOT EXISTS deliveries_state_webhook ON deliveries (state, webhook_id);
