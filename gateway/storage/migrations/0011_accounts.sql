-- Accounts routing (accounts.py): the WhatsApp Business Account ids and phone number ids an
-- endpoint takes, as a JSON list; [] takes every account.
ALTER TABLE endpoints ADD COLUMN accounts TEXT NOT NULL DEFAULT '[]';
-- Each event's account, read out of its JSON like migration 4's search columns: pull, stream
-- and WebSocket filter on them (accounts=), and the event log searches by them.
ALTER TABLE events ADD COLUMN waba_id TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(body) THEN nullif(json_extract(body, '$.waba_id'), '') END
) VIRTUAL;
ALTER TABLE events ADD COLUMN phone_number_id TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(body) THEN nullif(json_extract(body, '$.phone_number_id'), '') END
) VIRTUAL;
CREATE INDEX IF NOT EXISTS events_waba ON events (waba_id, webhook_id) WHERE waba_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_phone_number ON events (phone_number_id, webhook_id)
    WHERE phone_number_id IS NOT NULL;
