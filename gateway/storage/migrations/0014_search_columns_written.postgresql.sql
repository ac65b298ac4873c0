-- The event log's search columns (migration 4) and each event's account (migration 11) were
-- STORED generated columns: every stored event called wahook_json (a PL/pgSQL block with an
-- exception handler, so a subtransaction) about fifteen times. They become plain columns the
-- writer fills from the event it already holds (outbox.py, event_catalog.search_columns); the
-- stored values and their indexes stay as they are.
ALTER TABLE events ALTER COLUMN customer DROP EXPRESSION IF EXISTS;
ALTER TABLE events ALTER COLUMN customer_user_id DROP EXPRESSION IF EXISTS;
ALTER TABLE events ALTER COLUMN message_id DROP EXPRESSION IF EXISTS;
ALTER TABLE events ALTER COLUMN waba_id DROP EXPRESSION IF EXISTS;
ALTER TABLE events ALTER COLUMN phone_number_id DROP EXPRESSION IF EXISTS;
