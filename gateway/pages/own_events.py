"""Events the event log shows beside Meta's webhooks: the ones no Meta webhook carried.

Three sources make them: the publish API (`campaign.completed`, with `"source": "api"`), the
gateway itself (`delivery.failed`, `endpoint.disabled`, `endpoint.recovered`, `gateway.silent`)
and Send test (`webhook.test`). Each is listed newest first with its source, a one-line summary
and where its deliveries stand, a page at a time, and opens on a page of its own.

Summaries name an endpoint by its id, never by URL: a receiver URL can carry a token.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.delivery.outbox import OPERATIONAL
from gateway.storage import db

PAGE_SIZE = 20
# (label, the CSS class of its badge) by source; Meta's webhooks carry the label "Meta".
SOURCES = {"api": "API", "gateway": "gateway", "test": "test", "meta": "Meta"}


def source(name: str, webhook_id: int | None = None) -> str:
    """Where an event came from: meta, gateway, test or api."""
    if webhook_id is not None:
        return "meta"
    if name in OPERATIONAL:
        return "gateway"
    if name == "webhook.test":
        return "test"
    return "api"


def summary(name: str, body: dict[str, Any]) -> str:
    """One line about an event not drawn from Meta, from its own fields."""
    endpoint = f"endpoint #{body.get('endpoint_id')}"
    if name == "delivery.failed":
        return (
            f"{body.get('failed_event', 'an event')} to {endpoint} failed after {body.get('attempts', '?')}"
            f" attempts: {body.get('last_error', '')}"
        )
    if name == "endpoint.disabled":
        return f"{endpoint} disabled {body.get('reason', '')}".strip()
    if name == "endpoint.recovered":
        count = body.get("redelivering", 0)
        return f"{endpoint} answered again; {count} failed deliver{'y' if count == 1 else 'ies'} redelivered"
    if name == "gateway.silent":
        hours = body.get("hours")
        return f"no webhook from Meta for {hours:g} h" if isinstance(hours, int | float) else "no webhook from Meta"
    if name == "webhook.test":
        return "Send test from the settings page or endpoint test"
    data = {k: v for k, v in body.items() if k not in ("event", "event_id", "timestamp", "received_at", "source")}
    text = json.dumps(data, ensure_ascii=False)
    return text if len(text) <= 160 else text[:159] + "…"


def shown(chosen: dict[str, str]) -> bool:
    """Whether a search can match these events: they name no customer and no message."""
    return not {"customer", "message_id"} & chosen.keys()


def page(conn: db.Connection, chosen: dict[str, str], before: int | None) -> tuple[list[dict], int | None]:
    """The newest PAGE_SIZE events no Meta webhook carried (matching the search's event name
    and delivery state) below row id `before`, each with its deliveries; and the next `before`."""
    where, params = ["webhook_id IS NULL"], []
    if chosen.get("event"):
        where.append("name = ?")
        params.append(chosen["event"])
    if chosen.get("state"):
        where.append("EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.state = ?)")
        params.append(chosen["state"])
    if before:
        where.append("id < ?")
        params.append(before)
    rows = conn.execute(
        f"SELECT id, event_id, name, created_at, body FROM events WHERE {' AND '.join(where)}"  # noqa: S608 (ours)
        " ORDER BY id DESC LIMIT ?",
        (*params, PAGE_SIZE + 1),
    ).fetchall()
    older = rows[PAGE_SIZE - 1]["id"] if len(rows) > PAGE_SIZE else None
    rows = rows[:PAGE_SIZE]
    deliveries = deliveries_of(conn, [row["id"] for row in rows])
    return [listed(row, deliveries.get(row["id"], [])) for row in rows], older


def listed(row: db.Row, deliveries: list[db.Row]) -> dict[str, Any]:
    """An event as the list and its own page show it."""
    try:
        body = json.loads(row["body"])
    except ValueError:
        body = {}
    kind = source(row["name"])
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "name": row["name"],
        "created_at": row["created_at"],
        "source": kind,
        "source_label": SOURCES[kind],
        "summary": summary(row["name"], body if isinstance(body, dict) else {}),
        "deliveries": deliveries,
    }


def deliveries_of(conn: db.Connection, event_rows: list[int]) -> dict[int, list[db.Row]]:
    """The deliveries of these events (by event row id), with every cycle's attempt count."""
    if not event_rows:
        return {}
    marks = ",".join("?" for _ in event_rows)
    result: dict[int, list[db.Row]] = {}
    for row in conn.execute(
        "SELECT d.*, (SELECT count(*) FROM attempts a WHERE a.delivery_id = d.id) AS attempts_total"  # noqa: S608
        f" FROM deliveries d WHERE d.event_id IN ({marks}) ORDER BY d.id",
        event_rows,
    ):
        result.setdefault(row["event_id"], []).append(row)
    return result


def find(conn: db.Connection, event_id: str) -> tuple[db.Row | None, list[db.Row]]:
    """An event no Meta webhook carried, by its event_id, and every attempt of its deliveries."""
    row = conn.execute(
        "SELECT id, event_id, name, created_at, body FROM events WHERE event_id = ? AND webhook_id IS NULL",
        (event_id,),
    ).fetchone()
    if row is None:
        return None, []
    attempts = conn.execute(
        "SELECT a.* FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.event_id = ? ORDER BY a.id",
        (row["id"],),
    ).fetchall()
    return row, attempts
