-- The monitor's last attempt and failure streak per endpoint: without this they walk back
-- through every endpoint's attempts, which is slow for one that has been quiet for long.
CREATE INDEX IF NOT EXISTS attempts_endpoint ON attempts (endpoint_id, id);
