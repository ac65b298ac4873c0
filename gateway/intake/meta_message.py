"""One WhatsApp message, and the pieces of a change, read tolerantly out of Meta's JSON.

Meta's JSON is trusted for its shape only as far as it is checked here: a reader given
something of the wrong type answers "", None, {} or [] instead of raising, so one odd field
never costs the rest of a webhook. `message_fields` is a message's part of a
message.received body (see meta_parser.py for the whole event); `content_of` is the one-line
summary every message event carries.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

MEDIA_TYPES = frozenset({"image", "video", "audio", "voice", "document", "sticker"})
CONTENT_MAX = 256


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
