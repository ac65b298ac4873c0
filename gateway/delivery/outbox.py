"""The outbox: the fan-out. Every event is stored here, with a delivery for each endpoint that wants it.

A delivery is one row per (event, endpoint), or per (Meta webhook, endpoint) for the
`meta` format, written in the transaction that stores the event, so an event is never
stored without its deliveries. Every later change to a delivery (claims, attempts,
retries, redeliveries) is delivery_states.py's. Functions that say "call inside a
transaction" leave the transaction to the caller, so one commit can cover more than them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.delivery import accounts
from gateway.intake.event_catalog import (
    OPERATIONAL_EVENTS,
    SearchColumns,
    event_id_for,
    iso,
    search_columns,
    storable,
)
from gateway.storage import db

# Sent only to endpoints that name them: an empty filter selects every other event.
OPERATIONAL = frozenset(OPERATIONAL_EVENTS)


@dataclass(frozen=True)
class Target:
    """An enabled endpoint as the fan-out sees it."""

    id: int
    url: str
    format: str
    wanted: frozenset[str]
    account_ids: frozenset[str] = frozenset()  # empty: every account (accounts.py)

    def selects(self, name: str) -> bool:
        return selects(self.wanted, name)


def selects(wanted: Iterable[str], name: str) -> bool:
    """Whether an endpoint's `events` filter picks the event `name`.

    An entry is a name or a `prefix.*`; an empty filter picks everything but the
    operational events, which go only where they are named.
    """
    wanted = frozenset(wanted)
    if not wanted:
        return name not in OPERATIONAL
    if name in wanted:
        return True
    return any(entry.endswith(".*") and name.startswith(entry[:-1]) for entry in wanted)


def targets(conn: db.Connection) -> list[Target]:
    """Every enabled endpoint with its filter, read once per transaction that fans out: once per
    group commit batch of webhooks (db.transaction_memo), not once per webhook."""
    memo = db.transaction_memo(conn)
    if memo is None:
        return read_targets(conn)
    found = memo.get("targets")
    if found is None:
        found = memo["targets"] = read_targets(conn)
    return found


def read_targets(conn: db.Connection) -> list[Target]:
    return [
        Target(
            row["id"],
            row["url"],
            row["format"],
            frozenset(json.loads(row["events"] or "[]")),
            frozenset(json.loads(row["accounts"] or "[]")),
        )
        for row in conn.execute("SELECT id, url, events, format, accounts FROM endpoints WHERE enabled = 1")
    ]


@dataclass(frozen=True)
class NewEvent:
    """An event about to be stored: its public id, name, duplicate key and JSON text, and what
    its row is searched by (event_catalog.search_columns of the body the text was made from)."""

    event_id: str
    name: str
    dedupe_key: str | None
    body: str
    columns: SearchColumns


def add_events(
    conn: db.Connection,
    new: list[NewEvent],
    created_at: float,
    *,
    webhook: tuple[int, str] | None = None,
    to: list[Target] | None = None,
    exclude_endpoint: int | None = None,
) -> tuple[list[str], int]:
    """Store events and a delivery for each endpoint that selects them. Call inside a transaction.

    A duplicate (its dedupe key already stored) is skipped by the UNIQUE constraint, which
    holds even when two web processes commit the same update at once. `webhook` is the
    source Meta webhook (row id, public id): `meta`-format endpoints get one delivery of
    it when any new event selects them. `exclude_endpoint` keeps an operational event
    away from the endpoint it is about. Returns (names of new events, deliveries made).
    """
    if to is None:
        to = targets(conn)
    to = [t for t in to if t.id != exclude_endpoint]
    webhook_row = webhook[0] if webhook else None
    # Every insert is sent before any answer is read: on PostgreSQL one round trip for them all.
    sent = [_insert_event(conn, event, created_at, webhook_row) for event in new]
    stored = []
    for event, cursor in zip(new, sent, strict=True):
        inserted = cursor.fetchone()
        if inserted is not None:
            stored.append((event, inserted[0]))
    rows = delivery_rows(to, stored, webhook, time.time())
    if rows:
        conn.executemany(
            "INSERT INTO deliveries (endpoint_id, endpoint_url, event_id, webhook_id, event_name, message_id,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return [event.name for event, _ in stored], len(rows)


def delivery_rows(
    to: list[Target], stored: list[tuple[NewEvent, int]], webhook: tuple[int, str] | None, now: float
) -> list[tuple]:
    """The deliveries rows (endpoint_id, endpoint_url, event_id, webhook_id, event_name, message_id,
    next_attempt_at, created_at, updated_at) for `stored`, the new events with their row ids:
    one per event and `events`-format endpoint that selects it, and one of the whole Meta
    `webhook` (row id, public id) per `meta`-format endpoint that any of them selects."""
    webhook_row = webhook[0] if webhook else None
    rows = []
    # An event's accounts are read from its JSON only when some endpoint routes by account.
    by_account = any(t.account_ids for t in to)
    new_events = []
    for event, row_id in stored:
        ids = event.columns[3:] if by_account else (None, None)
        new_events.append((event.name, ids))
        for target in to:
            if target.format == "events" and target.selects(event.name) and accounts.takes(target.account_ids, *ids):
                rows.append((target.id, target.url, row_id, webhook_row, event.name, event.event_id, now, now, now))
    if webhook is not None:
        for target in to:
            if target.format == "meta" and any(
                target.selects(name) and accounts.takes(target.account_ids, *ids) for name, ids in new_events
            ):
                rows.append((target.id, target.url, None, webhook_row, "whatsapp.meta", webhook[1], now, now, now))
    return rows


def add_event_row(conn: db.Connection, event: NewEvent, created_at: float, webhook_row: int | None = None):
    """Store one event without fanning it out; its row id, or None for a duplicate."""
    inserted = _insert_event(conn, event, created_at, webhook_row).fetchone()
    return None if inserted is None else inserted[0]


def _insert_event(conn: db.Connection, event: NewEvent, created_at: float, webhook_row: int | None):
    """Send one event's insert; its cursor holds the new row id, or no row for a duplicate.

    Pull and stream read events in commit order without making writers take turns (event_reader.py)."""
    return conn.execute(
        "INSERT INTO events (event_id, webhook_id, name, dedupe_key, created_at, body,"
        " customer, customer_user_id, message_id, waba_id, phone_number_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        (event.event_id, webhook_row, event.name, event.dedupe_key, created_at, event.body, *event.columns),
    )


def add_leased(
    conn: db.Connection, endpoint_id: int, url: str, event_row: int, event: NewEvent, owner: str, until: float
) -> db.Row:
    """A delivery that `owner` holds from the start (a test send): no worker may take it. Call
    inside a transaction."""
    now = time.time()
    return conn.execute(
        "INSERT INTO deliveries (endpoint_id, endpoint_url, event_id, event_name, message_id, next_attempt_at,"
        " lease_owner, lease_until, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (endpoint_id, url, event_row, event.name, event.event_id, now, owner, until, now, now),
    ).fetchone()


def publish(
    conn: db.Connection,
    name: str,
    data: dict,
    *,
    dedupe_key: str,
    exclude_endpoint: int | None = None,
) -> str | None:
    """Store an event the gateway or an API client makes (not drawn from a Meta webhook) and
    fan it out. Call inside a transaction.

    The body is flat like every event: `event`, `event_id`, `timestamp`, `received_at`, then
    `data`'s keys. `dedupe_key` makes a repeat a no-op (give one that names the occurrence,
    e.g. the failed delivery's id); its event_id comes from it. Returns the event_id, or None
    when it was a duplicate.
    """
    now = time.time()
    event_id = event_id_for(dedupe_key)
    body = {"event": name, "event_id": event_id, "timestamp": int(now), "received_at": iso(now), **data}
    # storable: a lone surrogate an API client sent ("\ud800") stays escaped, so it can be stored.
    text = storable(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
    event = NewEvent(event_id, name, dedupe_key, text, search_columns(name, body))
    new, _ = add_events(conn, [event], now, exclude_endpoint=exclude_endpoint)
    return event_id if new else None
