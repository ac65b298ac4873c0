"""Turn a Meta webhook body into wahook events (placeholder until the parser lands)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    name: str
    dedupe_key: str
    body: dict[str, Any] = field(default_factory=dict)


def event_id_for(dedupe_key: str) -> str:
    digest = hashlib.sha256(dedupe_key.encode("utf-8")).digest()[:15]
    return "evt_" + base64.b32encode(digest).decode("ascii").lower()


def parse(body: dict[str, Any], received_at: float) -> list[Event]:
    return []
