"""Accounts routing (SPEC 4 and 7): which WhatsApp accounts' events an endpoint or reader gets.

An accounts filter is a list of WhatsApp Business Account ids and phone number ids; empty
means every account. An event carrying a `waba_id` or `phone_number_id` passes a non-empty
filter only when one of them is listed; an event carrying neither (published, operational)
passes any accounts filter and is chosen by its event name alone.

A `meta` endpoint gets Meta's body itself, which may mix accounts: `trim_meta` keeps only
the entries (and, within an entry of another business, the changes) that belong to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from gateway.intake import event_names

ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
MAX_IDS = 200


def clean(value) -> list[str]:
    """An accounts filter from a list or a comma-separated string, sorted; raises ValueError."""
    ids = event_names.split(value)
    bad = [i for i in ids if not ID_RE.fullmatch(i)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not an account id; give WhatsApp Business Account or phone number ids")
    if len(ids) > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} account ids")
    return ids


def takes(wanted: Iterable[str], waba_id: str | None, phone_number_id: str | None) -> bool:
    """Whether an event with these ids passes the accounts filter `wanted`."""
    if not wanted or not (waba_id or phone_number_id):
        return True
    wanted = wanted if isinstance(wanted, (set, frozenset)) else set(wanted)
    return waba_id in wanted or phone_number_id in wanted


def sql(wanted: list[str]) -> tuple[str, list]:
    """An SQL condition on the events table's waba_id and phone_number_id columns doing `takes`."""
    marks = ",".join("?" for _ in wanted)
    return (
        f"((waba_id IS NULL AND phone_number_id IS NULL) OR waba_id IN ({marks}) OR phone_number_id IN ({marks}))",
        [*wanted, *wanted],
    )


def change_phone_number_id(change: dict) -> str | None:
    """The business phone number a Meta change concerns, as meta_parser.py reads it."""
    value = change.get("value") if isinstance(change.get("value"), dict) else {}
    metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
    found = metadata.get("phone_number_id") or value.get("phone_number_id")
    if not found and value.get("entity_type") == "PHONE_NUMBER":
        found = value.get("entity_id")
    return str(found) if found else None


def trim_meta(raw: bytes, wanted: Iterable[str]) -> bytes:
    """Meta's body with only the entries and changes of the accounts in `wanted`. The original
    bytes when nothing had to go (or nothing can be read), so most deliveries stay byte for byte."""
    wanted = set(wanted)
    if not wanted:
        return raw
    try:
        body = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(body, dict) or not isinstance(body.get("entry"), list):
        return raw
    kept, trimmed = [], False
    for entry in body["entry"]:
        if not isinstance(entry, dict) or str(entry.get("id", "")) in wanted:
            kept.append(entry)
            continue
        changes = entry.get("changes") if isinstance(entry.get("changes"), list) else []
        mine = [c for c in changes if isinstance(c, dict) and change_phone_number_id(c) in wanted]
        trimmed = trimmed or len(mine) != len(changes)
        if mine:
            kept.append({**entry, "changes": mine})
    if not trimmed:
        return raw
    return json.dumps({**body, "entry": kept}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
