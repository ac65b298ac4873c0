"""Event names: which ones an API client may publish, and what an event filter may hold.

A filter (an endpoint's `events`, or `events=` of a pull, a stream or `listen`) holds event
names and `prefix.*` entries. A published name looks like `campaign.completed` and may not
start with a prefix that wahook's own events use, so a client can never pass for Meta or
for the gateway.
"""

from __future__ import annotations

import re

from gateway.intake.event_catalog import SELECTABLE_NAMES

PUBLISHED_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
PREFIX_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\.\*")
WHATSAPP_RE = re.compile(r"whatsapp\.[a-z0-9_.-]{1,64}")
RESERVED_PREFIXES = (
    "message.",
    "template.",
    "account.",
    "whatsapp.",
    "contact.",
    "endpoint.",
    "delivery.",
    "gateway.",
    "webhook.",
)
NAME_MAX = 100
# The contract names template.submitted among the events a campaign tool publishes, though
# `template.` is reserved: wahook never makes it (Meta's are template.status_changed, ...), so
# it is the one reserved-prefix name a client may publish.
PUBLISHABLE_RESERVED = frozenset({"template.submitted"})
# Names wahook makes that no checkbox offers: Send test's event, which a pull, a stream or an
# endpoint gets only by naming it.
GATEWAY_NAMES = ("webhook.test",)


def publish_problem(name) -> str | None:
    """Why `name` cannot be published; None when it can."""
    if not isinstance(name, str) or not name:
        return "event must be a non-empty string such as campaign.completed"
    if len(name) > NAME_MAX:
        return f"event names are at most {NAME_MAX} characters"
    if not PUBLISHED_RE.fullmatch(name):
        return "event must match ^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)+$, e.g. campaign.completed"
    reserved = next((p for p in RESERVED_PREFIXES if name.startswith(p)), None)
    if reserved and name not in PUBLISHABLE_RESERVED:
        return f"names starting with {reserved!r} are wahook's own; pick another prefix"
    return None


def filter_entry_ok(entry: str) -> bool:
    """Whether `entry` may stand in an event filter."""
    if len(entry) > NAME_MAX:
        return False
    return (
        entry in SELECTABLE_NAMES
        or entry in GATEWAY_NAMES
        or bool(WHATSAPP_RE.fullmatch(entry))
        or bool(PREFIX_RE.fullmatch(entry))
        or publish_problem(entry) is None
    )


def split(names) -> list[str]:
    """A filter given as a comma-separated string or a list, as sorted unique entries."""
    if names is None or names == "":
        return []
    if isinstance(names, str):
        names = names.split(",")
    return sorted({str(n).strip() for n in names if str(n).strip()})


def clean_filter(names) -> list[str]:
    """A filter's entries, each checked; raises ValueError naming the first bad one."""
    cleaned = split(names)
    bad = [n for n in cleaned if not filter_entry_ok(n)]
    if bad:
        raise ValueError(
            f"unknown event {bad[0]!r}; known: {', '.join([*SELECTABLE_NAMES, *GATEWAY_NAMES])}, whatsapp.<field>,"
            " a published name such as campaign.completed, or a prefix.* entry such as campaign.*"
        )
    return cleaned
