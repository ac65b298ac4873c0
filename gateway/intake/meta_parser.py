"""Turn one Meta webhook body into wahook events.

`parse(body, received_at)` reads every entry, change, message and status of a
`whatsapp_business_account` body and returns one `Event` per update. It never raises:
what it cannot read stays in the event's `raw`; a change it does not know becomes a
generic `whatsapp.<field>` event.

Each body is `event`, `event_id`, `timestamp`, `received_at`, `waba_id`, `phone_number_id`,
`display_phone_number`, the event's own keys, then `raw`. Every key below is always present
(null, "" or [] when Meta sent nothing); ids are strings:

- message.received: message_id, from, from_user_id, from_parent_user_id, contact_name,
  contact_user_id, contact_parent_user_id, type, content, text, media, location, interactive,
  reaction, contacts, context, referral, errors, original_message_id (what an `edit` or
  `revoke` refers to). A type's object is null for other types; an `edit` fills them from the
  new version. `from` is "" when the customer hides their phone number behind a username.
- message.status_updated: message_id, status, recipient, recipient_user_id,
  recipient_parent_user_id, errors, conversation, pricing, stale, current_status. The parser
  cannot know what came before: it sets stale false and current_status the status itself, and
  the intake transaction settles both (see status_order.py).
- message.echo: message_id, from, to, to_user_id, type, content.

- template.status_changed: template_id, template_name, language, status, reason, category.
- template.quality_changed: template_id, template_name, language, previous_quality, quality.
- template.category_changed: template_id, template_name, language, previous_category,
  category, correct_category, category_update_timestamp.
- account.updated: type, field. account.quality_event: type, user_phone, field.
- whatsapp.<field>: field.

A message.received `Event` also carries `contact`, the customer it names (wa_id, user_id,
name, raw), from which the intake transaction draws contact events (see contacts.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.intake.event_catalog import event_id_for, iso, storable
from gateway.intake.meta_message import (
    as_dict,
    as_list,
    change_key,
    contact_entries,
    content_of,
    errors_of,
    message_fields,
    pick,
    sender_entry,
    text,
    text_or_none,
    unix,
)

log = logging.getLogger("wahook.events")

ACCOUNT_UPDATED_FIELDS = frozenset(
    {"account_update", "account_review_update", "business_capability_update", "phone_number_name_update"}
)
QUALITY_FIELDS = frozenset({"phone_number_quality_update", "account_alerts", "user_preferences"})
PREFERENCES = {"stop": "marketing_opt_out", "resume": "marketing_opt_in"}
TEMPLATE_KEYS = "template_id=message_template_id template_name=message_template_name language=message_template_language"
UNSAFE_NAME = re.compile(r"[^a-z0-9_.-]")


@dataclass(frozen=True)
class Sighting:
    """A customer as one message names them: by phone (wa_id), by user id, or both."""

    wa_id: str | None
    user_id: str | None
    name: str | None
    raw: dict | None  # Meta's contacts[] entry for them, when the change had one

    def __post_init__(self) -> None:
        # Stored in the contacts table: a lone surrogate (a cut emoji) must stay escaped.
        for key in ("wa_id", "user_id", "name"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, storable(value))


@dataclass(frozen=True)
class Event:
    name: str
    dedupe_key: str
    body: dict[str, Any] = field(default_factory=dict)
    contact: Sighting | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dedupe_key", storable(self.dedupe_key))


def sighting(fields: dict, entry: dict) -> Sighting | None:
    """The customer a message names, or None when it carries neither a phone nor a user id."""
    wa_id = fields["from"] or entry.get("wa_id")
    user_id = fields["from_user_id"] or entry.get("user_id")
    if not wa_id and not user_id:
        return None
    return Sighting(wa_id or None, user_id or None, entry.get("name") or None, entry.get("raw"))


# -- changes


def parse(body: dict[str, Any], received_at: float) -> list[Event]:
    """Every event in a Meta webhook body, in the body's order. Never raises."""
    if not isinstance(body, dict) or body.get("object") != "whatsapp_business_account":
        return []
    received_iso = iso(received_at)
    fallback_ts = unix(received_at) or 0
    events: list[Event] = []
    for entry in as_list(body.get("entry")):
        if not isinstance(entry, dict):
            continue
        for change in as_list(entry.get("changes")):
            if not isinstance(change, dict):
                continue
            parser = None
            try:
                parser = ChangeParser(entry, change, received_iso, fallback_ts)
                events.extend(parser.events())
            except Exception:
                # A surprise in one change must not cost the others; keep it whole as generic.
                log.exception("could not read a %r change; forwarding it as generic", change.get("field"))
                try:
                    events.append(parser.generic())
                except Exception:
                    log.exception("could not forward a change even as generic")
    return events


class ChangeParser:
    """Draws the events of one change; holds what all of them share."""

    def __init__(self, entry: dict, change: dict, received_iso: str, fallback_ts: int) -> None:
        self.entry = entry
        self.change = change
        self.field = change.get("field")
        self.raw_value = change.get("value")
        self.value = as_dict(self.raw_value)
        metadata = as_dict(self.value.get("metadata"))
        phone_number_id = text(metadata.get("phone_number_id")) or text(self.value.get("phone_number_id"))
        if not phone_number_id and self.value.get("entity_type") == "PHONE_NUMBER":
            phone_number_id = text(self.value.get("entity_id"))
        self.entry_ts = unix(entry.get("time")) or fallback_ts
        self.head = {
            "received_at": received_iso,
            "waba_id": text(entry.get("id")),
            "phone_number_id": phone_number_id,
            "display_phone_number": text(metadata.get("display_phone_number"))
            or text(self.value.get("display_phone_number")),
        }

    def make(
        self, name: str, key: str, ts: int | None, fields: dict, raw: Any, contact: Sighting | None = None
    ) -> Event:
        body = {"event": name, "event_id": event_id_for(key), "timestamp": ts or self.entry_ts, **self.head}
        body.update(fields)
        body["raw"] = raw
        return Event(name, key, body, contact)

    def whole(self, name: str, fields: dict) -> Event:
        """An event for the change as a whole, keyed by its content."""
        return self.make(name, change_key(self.entry, self.change), None, fields, self.raw_value)

    def generic(self) -> Event:
        field_name = self.field if isinstance(self.field, str) else ""
        name = "whatsapp." + (UNSAFE_NAME.sub("_", field_name.lower())[:64] or "unknown")
        return self.whole(name, {"field": field_name})

    def events(self) -> list[Event]:
        field_name, value = self.field, self.value
        found: list[Event] = []
        if field_name == "messages":
            found = self.messages() + self.statuses()
        elif field_name == "smb_message_echoes":
            found = self.echoes()
        elif field_name == "message_template_status_update" and "event" not in value and "new_quality_score" in value:
            # Meta's own reference shows quality updates under this field; read them as what they are.
            found = [self.template("template.quality_changed")]
        elif field_name == "message_template_status_update":
            found = [self.template("template.status_changed")]
        elif field_name == "message_template_quality_update":
            found = [self.template("template.quality_changed")]
        elif field_name == "template_category_update":
            found = [self.template("template.category_changed")]
        elif field_name in ACCOUNT_UPDATED_FIELDS:
            kind = value.get("event") if field_name == "account_update" else value.get("decision")
            fields = {"type": text_or_none(kind), "field": field_name}
            found = [self.whole("account.updated", fields)]
        elif field_name in QUALITY_FIELDS:
            found = self.quality_events()
        # A known field with nothing we recognise in it (say value.errors alone) still reaches receivers.
        return found or [self.generic()]

    def items(self, list_name: str) -> list[tuple[int, dict]]:
        return [(i, item) for i, item in enumerate(as_list(self.value.get(list_name))) if isinstance(item, dict)]

    def item_key(self, prefix: str, item: dict, list_name: str, index: int, suffix: str = "") -> str:
        """`prefix:wamid` when the item has an id, else a hash of the change's content."""
        wamid = item.get("id")
        if isinstance(wamid, str) and wamid:
            return f"{prefix}:{wamid}{suffix}"
        return change_key(self.entry, self.change, f"{list_name}:{index}")

    def messages(self) -> list[Event]:
        entries, out = contact_entries(self.value), []
        for index, msg in self.items("messages"):
            key = self.item_key("message", msg, "messages", index)
            entry = sender_entry(entries, text(msg.get("from")), text_or_none(msg.get("from_user_id")))
            fields = message_fields(msg, entry)
            ts = unix(msg.get("timestamp"))
            out.append(self.make("message.received", key, ts, fields, msg, sighting(fields, entry)))
        return out

    def statuses(self) -> list[Event]:
        out = []
        for index, status in self.items("statuses"):
            state = text(status.get("status"))
            conversation, pricing = status.get("conversation"), status.get("pricing")
            fields = {
                "message_id": text(status.get("id")),
                "status": state,
                "recipient": text(status.get("recipient_id")),
                **pick(status, "recipient_user_id recipient_parent_user_id"),
                "errors": errors_of(status.get("errors")),
                "conversation": conversation if isinstance(conversation, dict) else None,
                "pricing": pricing if isinstance(pricing, dict) else None,
                # Settled in the intake transaction, which knows what came before.
                "stale": False,
                "current_status": state,
            }
            key = self.item_key("status", status, "statuses", index, f":{state}")
            out.append(self.make("message.status_updated", key, unix(status.get("timestamp")), fields, status))
        return out

    def echoes(self) -> list[Event]:
        out = []
        for index, echo in self.items("message_echoes"):
            mtype = text(echo.get("type"))
            fields = {"message_id": text(echo.get("id")), "from": text(echo.get("from")), "to": text(echo.get("to"))}
            fields["to_user_id"] = text_or_none(echo.get("to_user_id"))
            fields.update(type=mtype, content=content_of(mtype, echo))
            key = self.item_key("echo", echo, "message_echoes", index)
            out.append(self.make("message.echo", key, unix(echo.get("timestamp")), fields, echo))
        return out

    def template(self, name: str) -> Event:
        value = self.value
        fields = pick(value, TEMPLATE_KEYS)
        if name == "template.status_changed":
            status = text_or_none(value.get("event"))
            fields.update(
                status=status.lower() if status else None, **pick(value, "reason category=message_template_category")
            )
        elif name == "template.quality_changed":
            fields.update(pick(value, "previous_quality=previous_quality_score quality=new_quality_score"))
        else:
            # An announced (not yet made) change carries correct_category and when it will apply.
            fields.update(pick(value, "previous_category category=new_category correct_category"))
            fields["category_update_timestamp"] = unix(value.get("category_update_timestamp"))
        return self.whole(name, fields)

    def quality_events(self) -> list[Event]:
        value, field_name = self.value, self.field
        if field_name != "user_preferences":
            alert = as_dict(value.get("alert_info")).get("alert_type")
            kind = value.get("event") if field_name == "phone_number_quality_update" else alert
            fields = {"type": text_or_none(kind), "user_phone": None, "field": field_name}
            return [self.whole("account.quality_event", fields)]
        out = []
        for index, pref in self.items("user_preferences"):
            choice = text(pref.get("value"))
            kind = PREFERENCES.get(choice) if pref.get("category") in (None, "marketing_messages") else None
            fields = {"type": kind or choice or None, "user_phone": text_or_none(pref.get("wa_id"))}
            fields["field"] = field_name
            key = change_key(self.entry, self.change, f"user_preferences:{index}")
            out.append(self.make("account.quality_event", key, unix(pref.get("timestamp")), fields, self.raw_value))
        return out
