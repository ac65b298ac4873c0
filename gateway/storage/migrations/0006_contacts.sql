-- Customers per business phone number, for contact.created / contact.updated (contacts.py).
-- Found by wa_id (their phone), else by user_id (the business-scoped id of a customer who
-- hides the phone behind a username). seen_ts is the newest message's own time: an older
-- message arriving late never renames anyone.
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY,
    phone_number_id TEXT NOT NULL,
    wa_id TEXT,
    user_id TEXT,
    name TEXT,
    seen_ts REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS contacts_wa_id ON contacts (phone_number_id, wa_id);
CREATE INDEX IF NOT EXISTS contacts_user_id ON contacts (phone_number_id, user_id);
