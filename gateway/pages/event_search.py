"""The event log's search: stored Meta webhooks by customer, message id, event name and
delivery state, newest first, a page at a time.

Each filter is one index walk (db migration 4): `events.customer` is the customer's phone
number and `events.customer_user_id` their business-scoped user id, both read from the
event's JSON (`from`, `recipient`, `to` of an echo, `wa_id`, `from_user_id`, …);
`events.message_id` is the WhatsApp message id (wamid); `events.waba_id` and
`events.phone_number_id` (migration 11) the business account and number; `events_name` and
`deliveries_state_webhook` cover the name and the state. A page is found by walking
webhook ids downwards, so the first page of a million stored webhooks costs what the
first page of a hundred does.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping

from gateway.intake.event_catalog import CONTACT_EVENTS, OPERATIONAL_EVENTS, SELECTABLE_NAMES

STATES = ("pending", "retrying", "delivered", "failed")
RARE_STATES = ("pending", "retrying", "failed")  # a small share of all deliveries, once they are sent
FIELDS = ("customer", "message_id", "account", "event", "state")
# Fields looked up in an index of their own on events (not the delivery state's).
EVENT_FIELDS = {"customer", "message_id", "account"}
MAX_LENGTH = 200
PHONE_RE = re.compile(r"[+\d][\d\s().-]*")


def known_names() -> list[str]:
    """Event names offered in the search form (any other name can be typed)."""
    return sorted(set(SELECTABLE_NAMES) | set(CONTACT_EVENTS) | set(OPERATIONAL_EVENTS) | {"whatsapp.meta"})


def filters(args: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The search fields that were filled in, trimmed, and what is wrong with them, if anything."""
    chosen = {name: (args.get(name) or "").strip() for name in FIELDS}
    chosen = {name: value for name, value in chosen.items() if value}
    for name, value in chosen.items():
        if len(value) > MAX_LENGTH or any(ord(c) < 32 for c in value):
            return chosen, f"The {name.replace('_', ' ')} to search for is too long or holds control characters."
    if chosen.get("state") and chosen["state"] not in STATES:
        return chosen, f"A delivery state is one of {', '.join(STATES)}."
    return chosen, None


def customer_keys(value: str) -> tuple[str, str]:
    """(phone number as Meta writes it, user id) to look for: `+1 (650) 555-1234` is 16505551234."""
    phone = re.sub(r"\D", "", value) if PHONE_RE.fullmatch(value) else value
    return phone, value


def webhook_page(
    conn: sqlite3.Connection, chosen: dict[str, str], before: int | None, size: int
) -> tuple[list[int], int | None]:
    """Row ids of the newest `size` webhooks matching every filter below `before`, and the
    `before` of the next page (None on the last)."""
    found: set[int] = set()
    for sql, params in queries(chosen, before):
        found.update(row[0] for row in conn.execute(sql, (*params, size + 1)))
    ids = sorted(found, reverse=True)[: size + 1]
    return ids[:size], ids[size - 1] if len(ids) > size else None


def queries(chosen: dict[str, str], before: int | None) -> list[tuple[str, list]]:
    """The SQL (and values) that find the newest matching webhook ids, each one walk down an index.

    A customer is looked for as a phone number and as a user id in two walks, each in
    webhook order, rather than one OR that would have to sort every event of a busy customer.
    """
    state = chosen.get("state")
    if state in RARE_STATES and not EVENT_FIELDS & chosen.keys():
        # Few deliveries are not delivered, and a name can have most events: walk the state's.
        table, column = "deliveries d", "webhook_id"
        shapes = [(["state = ?"], [state])]
        if "event" in chosen:
            shapes[0][0].append(
                "EXISTS (SELECT 1 FROM events e WHERE e.webhook_id = d.webhook_id AND e.name = ?"
                " AND (d.event_id = e.id OR d.event_id IS NULL))"
            )
            shapes[0][1].append(chosen["event"])
    elif (EVENT_FIELDS | {"event"}) & chosen.keys():
        table, column = "events e", "webhook_id"
        shapes = event_clauses(chosen)
    elif state:
        table, column = "deliveries", "webhook_id"
        shapes = [(["state = ?"], [state])]
    else:
        table, column, shapes = "webhooks", "id", [([], [])]
    result = []
    for where, params in shapes:
        where = [*where, f"{column} IS NOT NULL"]
        if before:
            where.append(f"{column} < ?")
            params = [*params, before]
        # Table, column and clauses are ours; every value is a parameter.
        sql = f"SELECT DISTINCT {column} FROM {table} WHERE {' AND '.join(where)} ORDER BY {column} DESC LIMIT ?"  # noqa: S608
        result.append((sql, params))
    return result


def event_clauses(chosen: dict[str, str]) -> list[tuple[list[str], list]]:
    """WHERE clauses on `events e` (and its deliveries) for the chosen fields, with their values:
    one set, or two for a customer (by phone number, by user id), times two for an account
    (by WhatsApp Business Account id, by phone number id)."""
    shapes = customer_clauses(chosen)
    if "account" not in chosen:
        return shapes
    account = chosen["account"]
    return [
        ([f"{column} = ?", *where], [account, *params])
        for column in ("waba_id", "phone_number_id")
        for where, params in shapes
    ]


def customer_clauses(chosen: dict[str, str]) -> list[tuple[list[str], list]]:
    """event_clauses without the account."""
    where: list[str] = []
    params: list = []
    if "message_id" in chosen:
        where.append("message_id = ?")
        params.append(chosen["message_id"])
    if "event" in chosen:
        where.append("name = ?")
        params.append(chosen["event"])
    if "state" in chosen:
        # A meta-format delivery carries the whole webhook, not one event (event_id NULL).
        where.append(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.webhook_id = e.webhook_id AND d.state = ?"
            " AND (d.event_id = e.id OR d.event_id IS NULL))"
        )
        params.append(chosen["state"])
    if "customer" not in chosen:
        return [(where, params)]
    phone, user_id = customer_keys(chosen["customer"])
    return [(["customer = ?", *where], [phone, *params]), (["customer_user_id = ?", *where], [user_id, *params])]
