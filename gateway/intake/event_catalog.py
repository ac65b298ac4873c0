"""What wahook's events are called, and how their ids and times are written.

The catalog of event names (SPEC 3), the `evt_...` id an event gets from its duplicate key
(stable across Meta's retries), `iso` for the times in event bodies, and `storable` for text
that must survive being stored as UTF-8. The parser (meta_parser.py), the outbox, the API and
the pages all use these; only the intake needs the parser itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

# The named events, grouped for the settings page; EVENT_NAMES keeps the contract's table order.
EVENT_GROUPS = {
    "message": ["message.received", "message.status_updated", "message.echo"],
    "template": ["template.status_changed", "template.quality_changed", "template.category_changed"],
    "account": ["account.updated", "account.quality_event"],
}
EVENT_NAMES = [name for names in EVENT_GROUPS.values() for name in names]
# Drawn beside the Meta events (SPEC 3): contact events in the intake transaction, operational
# ones by the gateway itself, sent only to endpoints that name them.
CONTACT_EVENTS = ["contact.created", "contact.updated"]
OPERATIONAL_EVENTS = ["endpoint.disabled", "endpoint.recovered", "delivery.failed", "gateway.silent"]
# What the settings page offers as checkboxes, by group.
SELECTABLE_GROUPS = {**EVENT_GROUPS, "contact": CONTACT_EVENTS, "operational": OPERATIONAL_EVENTS}
SELECTABLE_NAMES = [name for names in SELECTABLE_GROUPS.values() for name in names]


def storable(text: str) -> str:
    """`text` with any lone surrogate (JSON allows "\\ud83d", and a cut emoji arrives that way)
    kept as its escape, so it can be encoded as UTF-8 and stored."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# Where an event names its customer: the first of these keys that is present and not empty.
CUSTOMER_KEYS = ("recipient", "from", "wa_id", "user_phone")
CUSTOMER_USER_KEYS = ("recipient_user_id", "from_user_id", "user_id")
# An echo is a message the business sent: its customer is the one it went `to`.
ECHO_CUSTOMER_KEYS = ("recipient", "to", "from", "wa_id", "user_phone")
ECHO_CUSTOMER_USER_KEYS = ("recipient_user_id", "to_user_id", "from_user_id", "user_id")

SearchColumns = tuple[str | None, str | None, str | None, str | None, str | None]


def search_columns(name: str, body: dict) -> SearchColumns:
    """(customer, customer_user_id, message_id, waba_id, phone_number_id) of an event, as its row
    keeps them: what the event log searches by and what `accounts=` filters on. Filled by
    whoever stores the event, from the body it already holds (parsing the stored JSON again in
    the database cost a tenth of an intake); migration 14 computed the same for older events."""
    echo = name == "message.echo"
    return (
        _first(body, ECHO_CUSTOMER_KEYS if echo else CUSTOMER_KEYS),
        _first(body, ECHO_CUSTOMER_USER_KEYS if echo else CUSTOMER_USER_KEYS),
        _first(body, ("message_id",)),
        _first(body, ("waba_id",)),
        _first(body, ("phone_number_id",)),
    )


def _first(body: dict, keys: tuple[str, ...]) -> str | None:
    """The first of `keys` in `body` with a value other than null or "", as text (a number or an
    object as its JSON)."""
    for key in keys:
        value = body.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return storable(value)
    return None


def event_id_for(dedupe_key: str) -> str:
    digest = hashlib.sha256(storable(dedupe_key).encode("utf-8")).digest()[:15]
    return "evt_" + base64.b32encode(digest).decode("ascii").lower()


def iso(received_at: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(received_at))
    except (TypeError, ValueError, OverflowError, OSError):
        return ""
