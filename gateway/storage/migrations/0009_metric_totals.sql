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
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'webhooks', 'received', '', count(*) FROM webhooks;
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'webhooks', 'rejected', '', coalesce(sum(count), 0) FROM rejections;
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'events', name, '', count(*) FROM events GROUP BY name;
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'attempts', coalesce(endpoint_id, 0), CASE WHEN ok THEN 'success' ELSE 'failure' END, count(*)
    FROM attempts GROUP BY 2, 3;
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'deliveries', coalesce(endpoint_id, 0), state, count(*) FROM deliveries GROUP BY 2, 3;
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
CREATE TRIGGER IF NOT EXISTS metric_event AFTER INSERT ON events BEGIN
    INSERT INTO metric_totals (kind, label, label2, value) VALUES ('events', NEW.name, '', 1)
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
-- The oldest delivery still on its way, per endpoint, in one index look-up each.
CREATE INDEX IF NOT EXISTS deliveries_waiting_since ON deliveries (endpoint_id, created_at)
    WHERE state IN ('pending', 'retrying');
