-- Each lane claims its own endpoint's due deliveries, oldest first, and the worker asks
-- which endpoints have any: both are one index look-up with this index, however many
-- deliveries other endpoints have waiting. It replaces the index on next_attempt_at alone,
-- with which a dead endpoint's backlog had to be read past to find anyone else's.
CREATE INDEX IF NOT EXISTS deliveries_lane ON deliveries (endpoint_id, next_attempt_at)
    WHERE state IN ('pending', 'retrying');
DROP INDEX IF EXISTS deliveries_due;
