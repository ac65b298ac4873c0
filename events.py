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

import base64
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("wahook.events")

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

MEDIA_TYPES = frozenset({"image", "video", "audio", "voice", "document", "sticker"})
ACCOUNT_UPDATED_FIELDS = frozenset(
    {"account_update", "account_review_update", "business_capability_update", "phone_number_name_update"}
)
QUALITY_FIELDS = frozenset({"phone_number_quality_update", "account_alerts", "user_preferences"})
PREFERENCES = {"stop": "marketing_opt_out", "resume": "marketing_opt_in"}
CONTENT_MAX = 256
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


def storable(text: str) -> str:
    """`text` with any lone surrogate (JSON allows "\\ud83d", and a cut emoji arrives that way)
    kept as its escape, so it can be encoded as UTF-8 and stored."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def event_id_for(dedupe_key: str) -> str:
    digest = hashlib.sha256(storable(dedupe_key).encode("utf-8")).digest()[:15]
    return "evt_" + base64.b32encode(digest).decode("ascii").lower()


# -- tolerant readers: Meta's JSON is trusted for shape only as far as we check it


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def text_or_none(value: Any) -> str | None:
    """A string as is, a number as its digits (ids sometimes arrive as integers), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def text(value: Any) -> str:
    return text_or_none(value) or ""


def number(value: Any) -> float | int | None:
    """A JSON number of sane size (coordinates, prices, quantities), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if abs(value) < 1e15 else None


def unix(value: Any) -> int | None:
    """Meta's timestamps: seconds as a string or an integer. None when unusable."""
    if isinstance(value, str):
        value = value.strip()
        if not (value.isascii() and value.isdigit() and len(value) <= 15):
            return None
        value = int(value)
    elif isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value < 2**53 else None


def one_line(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    line = " ".join(value.split())
    return line if len(line) <= CONTENT_MAX else line[: CONTENT_MAX - 1] + "…"


def canonical(value: Any) -> str:
    """Stable JSON text (sorted keys) for content hashing, whatever the value holds."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        # Keys of mixed types cannot be sorted; a dict fresh from JSON never has them.
        return repr(type(value))


def change_key(entry: dict, change: dict, extra: str = "") -> str:
    material = "\n".join((canonical(entry.get("id")), canonical(entry.get("time")), canonical(change), extra))
    return "change:" + hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


def iso(received_at: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(received_at))
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def pick(source: dict, keys: str) -> dict:
    """Text fields of `source` by name; "out=in" renames. Missing or odd values become None."""
    pairs = (key.partition("=") for key in keys.split())
    return {out: text_or_none(source.get(inner or out)) for out, _, inner in pairs}


def errors_of(value: Any) -> list[dict]:
    """Meta's error objects as {code, title, message, details}; details come from error_data."""
    out = []
    for err in as_list(value):
        if isinstance(err, dict):
            code = err.get("code")
            code = code if isinstance(code, int | str) and not isinstance(code, bool) else None
            details = text_or_none(as_dict(err.get("error_data")).get("details"))
            out.append({"code": code, **pick(err, "title message"), "details": details})
    return out


# -- message contents


def interactive_of(payload: dict) -> dict:
    """{type, id, title, description} from an interactive reply of any kind."""
    kind = text_or_none(payload.get("type"))
    reply = as_dict(payload.get(kind)) if kind else {}
    found = {"type": kind, **pick(reply, "id title description")}
    if kind == "nfm_reply":
        # A Flow's answers are JSON in raw; its short body ("Sent") or name stands as title.
        found["title"] = text_or_none(reply.get("body")) or text_or_none(reply.get("name"))
    return found


def order_summary(order: dict) -> str:
    items = [i for i in as_list(order.get("product_items")) if isinstance(i, dict)]
    count = sum(q for i in items if isinstance(q := number(i.get("quantity")), int)) or len(items)
    summary = f"Order of {count} item{'s' if count != 1 else ''}"
    currencies = {text(i.get("currency")) for i in items}
    prices = [(number(i.get("item_price")), number(i.get("quantity"))) for i in items]
    if items and len(currencies) == 1 and all(p is not None and q is not None for p, q in prices):
        summary += f" ({sum(p * q for p, q in prices):.2f} {currencies.pop()})"
    note = text_or_none(order.get("text"))
    return f"{summary}: {note}" if note else summary


def content_of(mtype: str, msg: dict) -> str:
    """The human summary of a message (or echo) of any type: a text's whole body, else one line."""
    payload = msg.get(mtype)
    payload = as_dict(payload) if not isinstance(payload, str) else {"body": payload}
    if mtype == "text":
        # The whole body, as the customer wrote it (up to 4,096 characters): never cut.
        body = payload.get("body")
        return body if isinstance(body, str) else ""
    if mtype == "system":
        found = payload.get("body")
    elif mtype in MEDIA_TYPES:
        found = payload.get("caption") or payload.get("filename")
    elif mtype == "button":
        found = payload.get("text") or payload.get("payload")
    elif mtype == "interactive":
        found = interactive_of(payload)["title"]
    elif mtype == "reaction":
        found = payload.get("emoji")
    elif mtype == "location":
        lat, long = number(payload.get("latitude")), number(payload.get("longitude"))
        found = payload.get("name") or (f"{lat},{long}" if lat is not None and long is not None else "")
    elif mtype == "contacts":
        contacts = as_list(msg.get("contacts"))
        found = ", ".join(text(as_dict(as_dict(c).get("name")).get("formatted_name")) for c in contacts)
    elif mtype == "order":
        found = order_summary(payload)
    elif mtype == "edit":
        inner = as_dict(payload.get("message"))
        found = content_of(text(inner.get("type")), inner)
    else:  # an unknown type (or an echoed template): whatever reads like its text
        found = next((payload[k] for k in ("body", "text", "caption", "title", "name", "emoji") if k in payload), "")
    return one_line(found)


def fill_by_type(fields: dict, mtype: str, msg: dict) -> None:
    """Set the type's own object (text, media, location, ...) on a message's fields."""
    payload = as_dict(msg.get(mtype))
    if mtype == "text":
        fields["text"] = text_or_none(payload.get("body"))
    elif mtype in MEDIA_TYPES:
        media = pick(payload, "id mime_type sha256 filename caption")
        fields["media"] = {**media, "voice": payload.get("voice") is True or mtype == "voice"}
    elif mtype == "location":
        coordinates = {"latitude": number(payload.get("latitude")), "longitude": number(payload.get("longitude"))}
        fields["location"] = {**coordinates, **pick(payload, "name address")}
    elif mtype == "interactive":
        fields["interactive"] = interactive_of(payload)
    elif mtype == "reaction":
        fields["reaction"] = pick(payload, "message_id emoji")
    elif mtype == "contacts":
        fields["contacts"] = [c for c in as_list(msg.get("contacts")) if isinstance(c, dict)]


def message_fields(msg: dict, entry: dict) -> dict:
    """A message's fields; `entry` is its sender's contacts[] entry as `contact_entries` reads it."""
    mtype = text(msg.get("type"))
    context = msg.get("context")
    fields = {
        "message_id": text(msg.get("id")),
        "from": text(msg.get("from")),
        "from_user_id": text_or_none(msg.get("from_user_id")),
        "from_parent_user_id": text_or_none(msg.get("from_parent_user_id")),
        "contact_name": entry.get("name") or "",
        "contact_user_id": entry.get("user_id"),
        "contact_parent_user_id": entry.get("parent_user_id"),
        "type": mtype,
        "content": content_of(mtype, msg),
        **dict.fromkeys(("text", "media", "location", "interactive", "reaction")),
        "contacts": [],
        "context": None,
        "referral": msg.get("referral") if isinstance(msg.get("referral"), dict) else None,
        "errors": errors_of(msg.get("errors")),
        "original_message_id": None,
    }
    if isinstance(context, dict):
        fields["context"] = pick(context, "message_id=id from")
        for flag in ("forwarded", "frequently_forwarded"):
            fields["context"][flag] = context.get(flag) is True
    if mtype in ("edit", "revoke"):
        payload = as_dict(msg.get(mtype))
        fields["original_message_id"] = text_or_none(payload.get("original_message_id"))
        inner = as_dict(payload.get("message"))
        fill_by_type(fields, text(inner.get("type")), inner)
    else:
        fill_by_type(fields, mtype, msg)
    return fields


def contact_entries(value: dict) -> list[dict]:
    """The change's contacts[] as {wa_id, user_id, parent_user_id, name, raw}, ids as text or None."""
    found = []
    for contact in as_list(value.get("contacts")):
        if isinstance(contact, dict):
            entry = pick(contact, "wa_id user_id parent_user_id")
            entry["name"] = text_or_none(as_dict(contact.get("profile")).get("name"))
            entry["raw"] = contact
            found.append(entry)
    return found


def sender_entry(entries: list[dict], sender: str, user_id: str | None) -> dict:
    """The first contacts[] entry for this sender: by phone (wa_id), else by user id; {} if none."""
    for key, wanted in (("wa_id", sender), ("user_id", user_id)):
        if wanted:
            for entry in entries:
                if entry[key] == wanted:
                    return entry
    return {}


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
