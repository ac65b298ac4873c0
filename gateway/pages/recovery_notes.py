"""What the monitor says about automatic recovery (outages.py): during an outage, that the failed
deliveries of a failing endpoint will be redelivered by themselves when it answers again (so
nobody presses "Redeliver all failed" and makes duplicates at a receiver that does not
deduplicate); after it, how many were redelivered and when.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.delivery import delivery_states
from gateway.storage import db

RECENT = 86400  # recoveries shown for a day


@dataclass
class Waiting:
    """A failing endpoint's failed deliveries that recovery will redeliver once it answers."""

    endpoint_id: int
    count: int
    next_probe_at: float | None


@dataclass
class Recovered:
    """An outage that ended: when, since when it had failed, and how many were redelivered."""

    endpoint_id: int
    at: float
    failing_since: str
    redelivered: int


def waiting(conn: db.Connection, config, endpoints: list) -> dict[int, Waiting]:
    """By endpoint id, for each failing endpoint while `auto_recover` is on (else nothing)."""
    if not config["delivery"]["auto_recover"]:
        return {}
    found = {}
    for item in endpoints:
        if item.enabled and item.outage == "failing" and item.failing_since is not None:
            row = conn.execute("SELECT failing_since, next_probe_at FROM endpoints WHERE id = ?", (item.id,)).fetchone()
            if row is None or row["failing_since"] is None:
                continue
            count = delivery_states.count_streak_failed(conn, item.id, row["failing_since"])
            found[item.id] = Waiting(item.id, count, row["next_probe_at"])
    return found


def recoveries(conn: db.Connection, now: float) -> dict[int, Recovered]:
    """The newest recovery of each endpoint in the last day, from its `endpoint.recovered` event."""
    found: dict[int, Recovered] = {}
    for row in conn.execute(
        "SELECT created_at, body FROM events WHERE name = 'endpoint.recovered' AND webhook_id IS NULL"
        " AND created_at >= ? ORDER BY id DESC LIMIT 100",
        (now - RECENT,),
    ):
        try:
            body = json.loads(row["body"])
            endpoint_id = int(body["endpoint_id"])
        except (ValueError, KeyError, TypeError):
            continue
        if endpoint_id not in found:
            found[endpoint_id] = Recovered(
                endpoint_id, row["created_at"], str(body.get("failing_since", "")), int(body.get("redelivering") or 0)
            )
    return found
