-- 0005_rotation_and_outages.sql as PostgreSQL runs it: the same with PostgreSQL's types (BIGINT for INTEGER, an identity
-- column for INTEGER PRIMARY KEY, DOUBLE PRECISION for REAL: its `real` would lose a time's seconds).
-- Secret rotation: the secret a rotation replaced keeps signing alongside the new one until
-- previous_secret_until, so receivers can switch without losing a delivery.
ALTER TABLE endpoints ADD COLUMN previous_secret TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN previous_secret_until DOUBLE PRECISION;
-- An endpoint's failing streak (see outages.py): when its attempts started failing (NULL while
-- it is healthy), when it is next probed and the probe interval, and until when deliveries of
-- the outage are being redelivered to it after it came back.
ALTER TABLE endpoints ADD COLUMN failing_since DOUBLE PRECISION;
ALTER TABLE endpoints ADD COLUMN next_probe_at DOUBLE PRECISION;
ALTER TABLE endpoints ADD COLUMN probe_interval DOUBLE PRECISION;
ALTER TABLE endpoints ADD COLUMN recovering_until DOUBLE PRECISION;
-- Retry cycles a delivery was given by hand (delivery.failed is sent once per cycle), and how
-- often automatic recovery redelivered it in this cycle (a few times at most: an event the
-- receiver refuses must not be sent again after every outage).
ALTER TABLE deliveries ADD COLUMN cycle BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN auto_redelivered BIGINT NOT NULL DEFAULT 0;
-- The oldest failed deliveries of an endpoint, for its probe and its recovery.
CREATE INDEX IF NOT EXISTS deliveries_failed ON deliveries (endpoint_id, id) WHERE state = 'failed';
