"""What wahook's events are called, and how their ids and times are written.

The catalog of event names (SPEC 3), the `evt_...` id an event gets from its duplicate key
(stable across Meta's retries), `iso` for the times in event bodies, and `storable` for text
that must survive being stored as UTF-8. The parser (meta_parser.py), the outbox, the API and
the pages all use these; only the intake needs the parser itself.
"""

from __future__ import annotations

import base64
import hashlib
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


def event_id_for(dedupe_key: str) -> str:
    digest = hashlib.sha256(storable(dedupe_key).encode("utf-8")).digest()[:15]
    return "evt_" + base64.b32encode(digest).decode("ascii").lower()


def iso(received_at: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(received_at))
    except (TypeError, ValueError, OverflowError, OSError):
        return ""
