-- As 0011_sessions_silence_and_bounds.sql, in PostgreSQL's types and PL/pgSQL.
CREATE TABLE IF NOT EXISTS silence_announced (
    one BIGINT PRIMARY KEY CHECK (one = 1),
    webhooks_seen BIGINT NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    announced_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS admin_sessions (
    token_hash TEXT PRIMARY KEY,
    password_mark TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL
);

UPDATE events SET body = jsonb_set(
    wahook_json(body), '{url}', to_jsonb(regexp_replace(wahook_json(body) ->> 'url', '[?#].*$', ''))
)::text
WHERE name IN ('delivery.failed', 'endpoint.disabled', 'endpoint.recovered')
    AND jsonb_typeof(wahook_json(body) -> 'url') = 'string' AND (wahook_json(body) ->> 'url') ~ '[?#]';

-- Counted in the session's own row (migration 10); a name's series is any row of its label.
CREATE OR REPLACE FUNCTION wahook_metric_event() RETURNS trigger AS $$
BEGIN
    PERFORM wahook_metric_add('events', CASE
        WHEN NEW.webhook_id IS NOT NULL
            OR split_part(NEW.name, '.', 1) IN ('message', 'template', 'account', 'whatsapp',
                'contact', 'endpoint', 'delivery', 'gateway', 'webhook')
            OR EXISTS (SELECT 1 FROM metric_totals WHERE kind = 'events' AND label = NEW.name)
            OR (SELECT count(DISTINCT label) FROM metric_totals WHERE kind = 'events') < 200
        THEN NEW.name ELSE 'other' END, '', 1);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
