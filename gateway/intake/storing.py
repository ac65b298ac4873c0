"""Storing a Meta webhook: its row, its new events and their deliveries, in the intake transaction.

webhook.py reads and checks the POST and makes an `Arrival` of it, everything that needs no
database; the group commit (storage/groupcommit.py) then writes it while holding the write lock:
- `write_one` writes one arrival, any kind: a message's contact events (contacts.py), a
  status's `stale` (status_order.py), media to download. It is the only way on PostgreSQL, and
  on SQLite when a batch is written with care.
- `write_together` writes a run of plain arrivals of a SQLite batch (`plain`: no customer to look
  up, no media, the status webhooks of a campaign) with a handful of statements for all of them:
  one read of the stored duplicate and status keys, one of the next row ids, one insert per
  table (more past SQLite's limit on bound values, about 80 webhooks). It stores what
  `write_one` would have, one after the other, and is tested against it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from gateway.delivery import outbox
from gateway.intake import contacts, status_order
from gateway.intake import meta_parser as meta_events
from gateway.intake.event_catalog import SearchColumns, search_columns
from gateway.media import store as media_store
from gateway.storage import concurrency, db

# Values bound to one statement: SQLite before 3.32 takes at most 999 (32,766 since).
VALUES_PER_STATEMENT = 999


def encode_event(body: dict) -> str:
    """An event as compact JSON, readable UTF-8; a lone surrogate stays escaped (see events.storable)."""
    return meta_events.storable(json.dumps(body, ensure_ascii=False, separators=(",", ":")))


@dataclass
class Arrival:
    """A checked Meta POST, with all that storing it needs that the database does not know.

    `encoded` and `columns` are each drawn event's JSON text and search columns, made before the
    write lock is taken; `statuses` the (message id, status) of its status events; `keys` the
    dedupe keys write_together looks up for it: its events' own and those that would make a
    status of it stale."""

    public_id: str
    received_at: float
    object: str
    fields: str
    raw: bytes
    simulated: bool
    drawn: list
    encoded: list[str]
    columns: list[SearchColumns]
    statuses: list[tuple[str, str]]
    keys: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = {event.dedupe_key for event in self.drawn if event.dedupe_key is not None}
        for message_id, status in self.statuses:
            self.keys.update(status_order.stale_keys(message_id, status).values())

    @property
    def plain(self) -> bool:
        """Whether write_together may store it: no event names a customer to look up or media."""
        return all(event.contact is None and not has_media(event) for event in self.drawn)

    def row(self, event_count: int) -> tuple:
        """Its webhooks row from webhook_id on, as both ways insert it."""
        return (
            self.public_id,
            self.received_at,
            self.object,
            self.fields,
            event_count,
            self.raw,
            1 if self.simulated else 0,
        )


def has_media(event) -> bool:
    media = event.body.get("media")
    return isinstance(media, dict) and bool(media.get("url"))


def write_one(arrival: Arrival, conn: db.Connection) -> tuple[list[str], int]:
    """Store `arrival` (call inside the transaction); (names of its new events, deliveries made).

    A duplicate event (its dedupe key is already stored) is skipped by the UNIQUE constraint,
    which holds even when two web processes commit the same update at once. The webhook row is
    written with its event count already in, and corrected only when some events turn out to be
    duplicates or a message brought contact events. On PostgreSQL the statements go in a few
    round trips (concurrency.pipelined_transaction): a status webhook takes 3, BEGIN and COMMIT
    included.
    """
    drawn = arrival.drawn
    # Intakes about the same customer or message take turns from here (SQLite's write lock
    # makes every intake do so), so a contact or a status of it in another transaction is seen.
    concurrency.lock_keys(conn, guarded_keys(drawn))
    inserted = conn.execute(
        "INSERT INTO webhooks (webhook_id, received_at, object, fields, event_count, body, simulated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        arrival.row(len(drawn)),
    )
    # Sent before anything is read: on PostgreSQL these and the lock are one round trip.
    stored_statuses = status_order.look_up(conn, arrival.statuses)
    to = outbox.targets(conn)
    webhook_id = inserted.fetchone()[0]
    known = {row[0] for row in stored_statuses} if stored_statuses is not None else set()
    new = settle(conn, arrival, known)
    webhook = (webhook_id, arrival.public_id)
    new_names, made = outbox.add_events(conn, new, arrival.received_at, webhook=webhook, to=to)
    media_store.track(conn, drawn, webhook_id, arrival.received_at)
    if len(new_names) != len(drawn):
        conn.execute("UPDATE webhooks SET event_count = ? WHERE id = ?", (len(new_names), webhook_id))
    return new_names, made


def write_together(conn: db.Connection, arrivals: list[Arrival]) -> list[tuple[list[str], int]]:
    """Store plain `arrivals` in this order, as write_one would one after the other, with a few
    statements for them all (call inside the transaction, on SQLite, holding its write lock: the
    row ids are counted on from the highest stored). Each one's (new event names, deliveries)."""
    # Grows with each arrival below, as the one-by-one reads would see it.
    stored = stored_keys(conn, sorted(set().union(*(arrival.keys for arrival in arrivals))))
    webhook_row, event_row = conn.execute(
        "SELECT (SELECT coalesce(max(id), 0) FROM webhooks), (SELECT coalesce(max(id), 0) FROM events)"
    ).fetchone()
    to = outbox.targets(conn)
    now = time.time()
    webhooks, events, deliveries, results = [], [], [], []
    for arrival in arrivals:
        webhook_row += 1
        new = []
        taken: set[str] = set()
        for event in settle(conn, arrival, stored):
            if event.dedupe_key is not None and (event.dedupe_key in stored or event.dedupe_key in taken):
                continue  # a duplicate: ON CONFLICT would have skipped it
            event_row += 1
            if event.dedupe_key is not None:
                taken.add(event.dedupe_key)
            new.append((event, event_row))
            events.append(
                (event_row, event.event_id, webhook_row, event.name, event.dedupe_key, arrival.received_at, event.body)
                + tuple(event.columns)
            )
        stored |= taken
        webhook = (webhook_row, arrival.public_id)
        made = outbox.delivery_rows(to, new, webhook, now)
        deliveries += made
        webhooks.append((webhook_row, *arrival.row(len(new))))
        results.append(([event.name for event, _ in new], len(made)))
    insert_rows(conn, "webhooks", "id, webhook_id, received_at, object, fields, event_count, body, simulated", webhooks)
    insert_rows(
        conn,
        "events",
        "id, event_id, webhook_id, name, dedupe_key, created_at, body,"
        " customer, customer_user_id, message_id, waba_id, phone_number_id",
        events,
    )
    insert_rows(
        conn,
        "deliveries",
        "endpoint_id, endpoint_url, event_id, webhook_id, event_name, message_id,"
        " next_attempt_at, created_at, updated_at",
        deliveries,
    )
    return results


def stored_keys(conn: db.Connection, keys: list[str]) -> set[str]:
    """Which of the dedupe `keys` an event already stored has."""
    found: set[str] = set()
    for start in range(0, len(keys), VALUES_PER_STATEMENT):
        found |= {row[0] for row in status_order.stored_among(conn, keys[start : start + VALUES_PER_STATEMENT])}
    return found


def insert_rows(conn: db.Connection, table: str, columns: str, rows: list[tuple]) -> None:
    """INSERT `rows` into `table`, as many rows per statement as VALUES_PER_STATEMENT allows."""
    if not rows:
        return
    marks = "(" + ",".join("?" * len(rows[0])) + ")"
    per_statement = VALUES_PER_STATEMENT // len(rows[0])
    for start in range(0, len(rows), per_statement):
        part = rows[start : start + per_statement]
        values = [value for row in part for value in row]
        conn.execute(f"INSERT INTO {table} ({columns}) VALUES " + ",".join([marks] * len(part)), values)  # noqa: S608


def guarded_keys(drawn: list) -> list[str]:
    """What this body's intake reads and must see settled by any other intake first: each
    customer a message names (by phone and by user id, as contacts.find looks them up) and
    each message a status is about. See concurrency.lock_keys."""
    keys = []
    for event in drawn:
        seen = event.contact
        if seen is not None:
            phone_number_id = event.body["phone_number_id"]
            keys += [f"contact:{phone_number_id}:wa:{seen.wa_id}"] if seen.wa_id else []
            keys += [f"contact:{phone_number_id}:user:{seen.user_id}"] if seen.user_id else []
        if event.name == "message.status_updated" and event.body["message_id"]:
            keys.append(f"status:{event.body['message_id']}")
    return keys


def settle(conn: db.Connection, arrival: Arrival, known: set[str]) -> list[outbox.NewEvent]:
    """The events to store, finished with what only the database knows. Call inside the transaction.

    Each message's contact events go just ahead of it (a lower event id); a status gets its
    `stale` and `current_status` (from `known`, the stored dedupe keys of its statuses), and is
    encoded again only when they differ from the parser's guess (in order, the usual case, it
    is not).
    """
    new = []
    earlier: dict[str, str] = {}  # the highest status per message so far in this body
    for event, text_body, searched in zip(arrival.drawn, arrival.encoded, arrival.columns, strict=True):
        if event.contact is not None:
            for found in contacts.draw(conn, event, arrival.received_at):
                text_found, found_columns = encode_event(found.body), search_columns(found.name, found.body)
                new.append(
                    outbox.NewEvent(found.body["event_id"], found.name, found.dedupe_key, text_found, found_columns)
                )
        if event.name == "message.status_updated":
            body = event.body
            message_id, status = body["message_id"], body["status"]
            stale, current = status_order.settle(conn, message_id, status, earlier.get(message_id), known)
            earlier[message_id] = status_order.highest([current, status]) or earlier.get(message_id) or ""
            if stale or current != status:
                text_body = encode_event({**body, "stale": stale, "current_status": current})
        new.append(outbox.NewEvent(event.body["event_id"], event.name, event.dedupe_key, text_body, searched))
    return new
