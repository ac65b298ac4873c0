"""PostgreSQL's own text of the migrations whose SQLite SQL it cannot run with types mapped.

pg.schema_text maps the column types of every other migration by itself; a migration that
uses SQLite-only SQL (triggers, INSERT OR IGNORE, PRAGMA) gets its text here under the same
number, doing the same thing. tests/test_pg.py fails for a migration that needs one and has none.
"""


def _customer_column(name: str, paths: list[str]) -> str:
    """A column read out of the event's JSON, as migration 4's generated columns (PostgreSQL
    computes them when a row is written: STORED; wahook_json is NULL for text it cannot read)."""
    values = ",\n    ".join(
        f"CASE WHEN name = 'message.echo' THEN nullif(wahook_json(body) ->> '{p[5:]}', '') END"
        if p.startswith("echo:")
        else f"nullif(wahook_json(body) ->> '{p}', '')"
        for p in paths
    )
    column = f"ALTER TABLE events ADD COLUMN IF NOT EXISTS {name} TEXT GENERATED ALWAYS AS"
    return f"{column} (coalesce(\n    {values}\n)) STORED;"


TEXT: dict[int, str] = {
    4: f"""
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
{_customer_column("customer", ["recipient", "echo:to", "from", "wa_id", "user_phone"])}
{_customer_column("customer_user_id", ["recipient_user_id", "echo:to_user_id", "from_user_id", "user_id"])}
{_customer_column("message_id", ["message_id"])}
CREATE INDEX IF NOT EXISTS events_customer ON events (customer, webhook_id) WHERE customer IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_customer_user ON events (customer_user_id, webhook_id)
    WHERE customer_user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_message ON events (message_id, webhook_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_name ON events (name, webhook_id);
CREATE INDEX IF NOT EXISTS deliveries_state_webhook ON deliveries (state, webhook_id);
""",  # noqa: S608 (the columns are ours)
    9: """
CREATE TABLE IF NOT EXISTS metric_totals (
    kind TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    label2 TEXT NOT NULL DEFAULT '',
    value BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, label, label2)
);
INSERT INTO metric_totals (kind, label, label2, value)
    SELECT 'webhooks', 'received', '', count(*) FROM webhooks ON CONFLICT DO NOTHING;
INSERT INTO metric_totals (kind, label, label2, value)
    SELECT 'webhooks', 'rejected', '', coalesce(sum(count), 0) FROM rejections ON CONFLICT DO NOTHING;
INSERT INTO metric_totals (kind, label, label2, value)
    SELECT 'events', name, '', count(*) FROM events GROUP BY name ON CONFLICT DO NOTHING;
INSERT INTO metric_totals (kind, label, label2, value)
    SELECT 'attempts', coalesce(endpoint_id, 0)::text, CASE WHEN ok <> 0 THEN 'success' ELSE 'failure' END, count(*)
    FROM attempts GROUP BY 2, 3 ON CONFLICT DO NOTHING;
INSERT INTO metric_totals (kind, label, label2, value)
    SELECT 'deliveries', coalesce(endpoint_id, 0)::text, state, count(*) FROM deliveries GROUP BY 2, 3
    ON CONFLICT DO NOTHING;

-- One function adds `step` to a series; the triggers below call it as SQLite's do.
CREATE OR REPLACE FUNCTION wahook_metric_add(k TEXT, l TEXT, l2 TEXT, step BIGINT) RETURNS void AS $$
BEGIN
    INSERT INTO metric_totals (kind, label, label2, value) VALUES (k, l, l2, step)
        ON CONFLICT (kind, label, label2) DO UPDATE SET value = metric_totals.value + step;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION wahook_metric_webhook() RETURNS trigger AS $$
BEGIN
    PERFORM wahook_metric_add('webhooks', 'received', '', 1);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER metric_webhook AFTER INSERT ON webhooks
    FOR EACH ROW EXECUTE FUNCTION wahook_metric_webhook();

CREATE OR REPLACE FUNCTION wahook_metric_rejection() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM wahook_metric_add('webhooks', 'rejected', '', NEW.count);
    ELSIF NEW.count > OLD.count THEN
        PERFORM wahook_metric_add('webhooks', 'rejected', '', NEW.count - OLD.count);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER metric_rejection AFTER INSERT OR UPDATE OF count ON rejections
    FOR EACH ROW EXECUTE FUNCTION wahook_metric_rejection();

CREATE OR REPLACE FUNCTION wahook_metric_event() RETURNS trigger AS $$
BEGIN
    PERFORM wahook_metric_add('events', NEW.name, '', 1);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER metric_event AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION wahook_metric_event();

CREATE OR REPLACE FUNCTION wahook_metric_attempt() RETURNS trigger AS $$
BEGIN
    PERFORM wahook_metric_add('attempts', coalesce(NEW.endpoint_id, 0)::text,
        CASE WHEN NEW.ok <> 0 THEN 'success' ELSE 'failure' END, 1);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER metric_attempt AFTER INSERT ON attempts
    FOR EACH ROW EXECUTE FUNCTION wahook_metric_attempt();

-- Deliveries are a gauge: added on insert, moved on a change of state or endpoint (a
-- deleted endpoint sets it NULL), taken away on delete.
CREATE OR REPLACE FUNCTION wahook_metric_delivery() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        IF TG_OP = 'UPDATE' AND OLD.state IS NOT DISTINCT FROM NEW.state
                AND OLD.endpoint_id IS NOT DISTINCT FROM NEW.endpoint_id THEN
            RETURN NULL;
        END IF;
        UPDATE metric_totals SET value = value - 1
            WHERE kind = 'deliveries' AND label = coalesce(OLD.endpoint_id, 0)::text AND label2 = OLD.state;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM wahook_metric_add('deliveries', coalesce(NEW.endpoint_id, 0)::text, NEW.state, 1);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER metric_delivery AFTER INSERT OR DELETE OR UPDATE OF state, endpoint_id ON deliveries
    FOR EACH ROW EXECUTE FUNCTION wahook_metric_delivery();

CREATE INDEX IF NOT EXISTS deliveries_waiting_since ON deliveries (endpoint_id, created_at)
    WHERE state IN ('pending', 'retrying');
""",
    10: f"""
ALTER TABLE endpoints ADD COLUMN IF NOT EXISTS accounts TEXT NOT NULL DEFAULT '[]';
{_customer_column("waba_id", ["waba_id"])}
{_customer_column("phone_number_id", ["phone_number_id"])}
CREATE INDEX IF NOT EXISTS events_waba ON events (waba_id, webhook_id) WHERE waba_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_phone_number ON events (phone_number_id, webhook_id)
    WHERE phone_number_id IS NOT NULL;
""",
}
