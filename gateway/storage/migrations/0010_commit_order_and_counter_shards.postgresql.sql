-- Several machines without taking turns (SPEC 9). Pull and stream read events in the order
-- they were committed: each event keeps the id of the transaction that wrote it, and readers
-- read in (tx, id) order only below the oldest transaction still running (feed.py), so no
-- writer waits for another to keep that order. Rows from before have 0: they were committed
-- in id order. A constant first, so adding the column does not rewrite the table.
ALTER TABLE events ADD COLUMN IF NOT EXISTS tx xid8 NOT NULL DEFAULT '0';
ALTER TABLE events ALTER COLUMN tx SET DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS events_commit_order ON events (tx, id);

-- Counters without a hot row: each database session adds to rows of its own (shard: its
-- backend's pid), a scrape sums them, and the worker folds the rows of sessions that ended
-- into shard 0 (db.fold_counter_shards). Exact as before, since every change is still made
-- in the transaction that changes the rows it counts.
ALTER TABLE metric_totals ADD COLUMN IF NOT EXISTS shard INTEGER NOT NULL DEFAULT 0;
ALTER TABLE metric_totals DROP CONSTRAINT IF EXISTS metric_totals_pkey;
ALTER TABLE metric_totals ADD PRIMARY KEY (kind, label, label2, shard);
CREATE OR REPLACE FUNCTION wahook_metric_add(k TEXT, l TEXT, l2 TEXT, step BIGINT) RETURNS void AS $$
BEGIN
    INSERT INTO metric_totals (kind, label, label2, shard, value) VALUES (k, l, l2, pg_backend_pid(), step)
        ON CONFLICT (kind, label, label2, shard) DO UPDATE SET value = metric_totals.value + step;
END $$ LANGUAGE plpgsql;
-- A delivery's gauge is taken from the session's own row too (it may go below 0; the sum is right).
CREATE OR REPLACE FUNCTION wahook_metric_delivery() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        IF TG_OP = 'UPDATE' AND OLD.state IS NOT DISTINCT FROM NEW.state
                AND OLD.endpoint_id IS NOT DISTINCT FROM NEW.endpoint_id THEN
            RETURN NULL;
        END IF;
        PERFORM wahook_metric_add('deliveries', coalesce(OLD.endpoint_id, 0)::text, OLD.state, -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM wahook_metric_add('deliveries', coalesce(NEW.endpoint_id, 0)::text, NEW.state, 1);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
