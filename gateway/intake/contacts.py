"""Contacts: `contact.created` and `contact.updated`, drawn in the intake transaction.

A small table keeps each customer per business phone number, found by `wa_id` (their phone),
else by `user_id` (the business-scoped id Meta sends when a customer hides their phone behind
a username). The first message that names a customer makes `contact.created`; a later one
with a different profile name, or an id where there was none, makes `contact.updated` with
`previous_name`. The intake stores these ahead of the message that caused them, in the same
transaction, so they get the lower event id and pull and stream list them first.

Duplicates: a retried Meta webhook finds the contact as it left it, so nothing changed and
nothing is drawn; the one case it could still look changed (an older message retried after
a newer one renamed the customer) is caught by checking that the message is new before
drawing an update. A message older than the contact's last sighting never renames it, so
Meta's out-of-order delivery cannot flip a name back.
"""

from __future__ import annotations

from gateway.intake.event_catalog import event_id_for
from gateway.intake.meta_parser import Event, Sighting
from gateway.storage import db

# The envelope keys a contact event shares with the message that caused it.
HEAD = ("received_at", "waba_id", "phone_number_id", "display_phone_number")


def find(conn: db.Connection, phone_number_id: str, seen: Sighting) -> db.Row | None:
    """The stored contact this sighting names: by wa_id first, else by user id."""
    if seen.wa_id:
        row = conn.execute(
            "SELECT * FROM contacts WHERE phone_number_id = ? AND wa_id = ?", (phone_number_id, seen.wa_id)
        ).fetchone()
        if row is not None:
            return row
    if seen.user_id:
        # Found by user id only when it has no other phone: a different wa_id is someone else.
        return conn.execute(
            "SELECT * FROM contacts WHERE phone_number_id = ? AND user_id = ? AND (wa_id IS NULL OR wa_id = ?)"
            " ORDER BY id LIMIT 1",
            (phone_number_id, seen.user_id, seen.wa_id or ""),
        ).fetchone()
    return None


def draw(conn: db.Connection, message: Event, now: float) -> list[Event]:
    """The contact events `message` causes (none, created or updated), the table brought up to
    date. Call inside the intake transaction, before storing the message."""
    seen = message.contact
    if seen is None:
        return []
    body = message.body
    phone_number_id = body["phone_number_id"]
    seen_ts = body["timestamp"]
    row = find(conn, phone_number_id, seen)
    if row is None:
        inserted = conn.execute(
            "INSERT INTO contacts (phone_number_id, wa_id, user_id, name, seen_ts, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
            (phone_number_id, seen.wa_id, seen.user_id, seen.name, seen_ts, now, now),
        ).fetchone()
        if inserted is None:
            return []
        key = f"contact.created:{phone_number_id}:{seen.wa_id or 'user:' + seen.user_id}"
        return [contact_event("contact.created", key, message, seen.wa_id, seen.user_id, seen.name, None)]

    renamed = bool(seen.name) and seen.name != row["name"]
    new_ids = (seen.user_id and not row["user_id"]) or (seen.wa_id and not row["wa_id"])
    if not (renamed or new_ids) or seen_ts < row["seen_ts"] or is_stored(conn, message.dedupe_key):
        return []
    wa_id, user_id = row["wa_id"] or seen.wa_id, row["user_id"] or seen.user_id
    name = seen.name if renamed else row["name"]
    conn.execute(
        "UPDATE contacts SET wa_id = ?, user_id = ?, name = ?, seen_ts = ?, updated_at = ? WHERE id = ?",
        (wa_id, user_id, name, seen_ts, now, row["id"]),
    )
    key = f"contact.updated:{phone_number_id}:{row['id']}:{message.dedupe_key}"
    return [contact_event("contact.updated", key, message, wa_id, user_id, name, row["name"], updated=True)]


def is_stored(conn: db.Connection, dedupe_key: str) -> bool:
    return conn.execute("SELECT 1 FROM events WHERE dedupe_key = ?", (dedupe_key,)).fetchone() is not None


def contact_event(
    name: str,
    key: str,
    message: Event,
    wa_id: str | None,
    user_id: str | None,
    contact_name: str | None,
    previous_name: str | None,
    updated: bool = False,
) -> Event:
    """A flat contact event with the message's envelope, its time and Meta's contacts[] entry as raw."""
    body = {"event": name, "event_id": event_id_for(key), "timestamp": message.body["timestamp"]}
    body.update({head: message.body[head] for head in HEAD})
    body.update(wa_id=wa_id, user_id=user_id, name=contact_name)
    if updated:
        body["previous_name"] = previous_name
    body["raw"] = message.contact.raw if message.contact else None
    return Event(name, key, body)
