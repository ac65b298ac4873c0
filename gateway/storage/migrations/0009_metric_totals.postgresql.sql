-- Migration 9 as PostgreSQL runs it (0009_metric_totals.sql is SQLite's): each trigger calls a function.
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
