-- Accounts routing (accounts.py): the WhatsApp Business Account ids and phone number ids an
-- endpoint takes, as a JSON list; [] takes every account. Each event's account is read out of
-- its JSON like migration 4's search columns, for accounts= on pull, stream and WebSocket.
ALTER TABLE endpoints ADD COLUMN IF NOT EXISTS accounts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE events ADD COLUMN IF NOT EXISTS waba_id TEXT GENERATED ALWAYS AS (coalesce(
    nullif(wahook_json(body) ->> 'waba_id', '')
)) STORED;
ALTER TABLE events ADD COLUMN IF NOT EXISTS phone_number_id TEXT GENERATED ALWAYS AS (coalesce(
    nullif(wahook_json(body) ->> 'phone_number_id', '')
)) STORED;
CREATE INDEX IF NOT EXISTS events_waba ON events (waba_id, webhook_id) WHERE waba_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_phone_number ON events (phone_number_id, webhook_id)
    WHERE phone_number_id IS NOT NULL;

