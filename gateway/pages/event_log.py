"""The event log: stored Meta webhooks newest first, the events drawn from each and where
each delivery stands, searchable (event_search.py); a detail page shows the raw body, every event
as formatted JSON and every attempt of each delivery across its retry cycles.

Everything here is what customers and Meta sent, so it only ever reaches the page
through Jinja's escaping: JSON is pretty-printed into a string, never into markup.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from flask import Blueprint, Response, abort, render_template, request

from gateway.intake.event_catalog import storable
from gateway.pages import event_search, own_events
from gateway.storage import db
from gateway.storage.db import get_db, row_id

bp = Blueprint("eventlog", __name__)

PAGE_SIZE = 20
SHOWN_BYTES = 256 * 1024  # a formatted body longer than this is cut on the page (the download is whole)
SUMMARY_CHARS = 160
# The few fields a list line needs, read by SQLite so a 3 MB message is not loaded for it.
SUMMARY_PATHS = (
    "from",
    "from_user_id",
    "contact_name",
    "type",
    "content",
    "status",
    "recipient",
    "recipient_user_id",
    "to",
    "to_user_id",
    "wa_id",
    "user_id",
    "name",
    "previous_name",
    "stale",
    "current_status",
    "template_name",
    "language",
    "quality",
    "category",
    "field",
)


def pretty(text: str | bytes) -> tuple[str, bool]:
    """JSON indented for reading, and whether it was cut; text that is not JSON is shown as it is."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError, RecursionError):
        # A lone surrogate (a cut emoji) decodes from JSON but cannot be sent as UTF-8: keep it escaped.
        text = storable(json.dumps(json.loads(text), indent=2, ensure_ascii=False))
    return (text[:SHOWN_BYTES], True) if len(text) > SHOWN_BYTES else (text, False)


# Where each event names its customer: (phone field, user id field). A customer who hides
# the phone behind a WhatsApp username has only the user id.
CUSTOMER_FIELDS = {
    "message.received": ("from", "from_user_id"),
    "message.status_updated": ("recipient", "recipient_user_id"),
    "message.echo": ("to", "to_user_id"),
    "contact.created": ("wa_id", "user_id"),
    "contact.updated": ("wa_id", "user_id"),
}


def field_text(fields: dict[str, Any], key: str) -> str:
    """A field as page text; a lone surrogate a customer sent stays escaped, so the page can be sent."""
    value = fields.get(key)
    return "" if value is None else storable(str(value))


def customer(name: str, fields: dict[str, Any]) -> str:
    """The customer an event names, as every page shows them: the phone number, else the user
    id; "" for an event about no customer."""
    phone, user_id = CUSTOMER_FIELDS.get(name, ("", ""))
    return field_text(fields, phone) or field_text(fields, user_id) if phone else ""


def summary(name: str, fields: dict[str, Any]) -> str:
    """One line about an event, from the customer's words where there are any."""

    def get(key: str) -> str:
        return field_text(fields, key)

    who = customer(name, fields)
    if name == "message.received":
        text = f"{get('contact_name') or who}: [{get('type')}] {get('content')}".strip()
    elif name == "message.echo":
        text = f"to {who}: [{get('type')}] {get('content')}".strip()
    elif name == "message.status_updated":
        text = f"{get('status')} → {who}"
        if fields.get("stale"):
            text += f" (stale: already {get('current_status')})"
    elif name == "contact.created":
        text = f"{get('name') or '(no profile name)'} ({who})"
    elif name == "contact.updated":
        text = f"{get('previous_name') or '(no profile name)'} → {get('name') or '(no profile name)'} ({who})"
    elif name.startswith("template."):
        change = get("status") or get("quality") or get("category")
        language = f" ({get('language')})" if get("language") else ""
        text = f"{get('template_name')}{language}: {change}"
    elif name.startswith("account."):
        text = get("type")
    else:
        text = get("field")
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def events_of(conn: db.Connection, webhook_ids: list[int], full: bool = False) -> dict[int, list[dict]]:
    """The events of these webhooks, each with its deliveries, grouped by webhook row id."""
    if not webhook_ids:
        return {}
    marks = ",".join("?" for _ in webhook_ids)
    rows = conn.execute(
        f"SELECT id, event_id, webhook_id, name, created_at, {'body' if full else 'NULL AS body'},"  # noqa: S608
        f" {db.json_values(conn, 'body', list(SUMMARY_PATHS))} AS fields"
        f" FROM events WHERE webhook_id IN ({marks}) ORDER BY id",
        webhook_ids,
    ).fetchall()
    deliveries = deliveries_of(conn, webhook_ids)
    grouped: dict[int, list[dict]] = {}
    for row in rows:
        values = json.loads(row["fields"]) if row["fields"] else [None] * len(SUMMARY_PATHS)
        fields = dict(zip(SUMMARY_PATHS, values, strict=False))
        grouped.setdefault(row["webhook_id"], []).append(
            {
                "id": row["id"],
                "event_id": row["event_id"],
                "name": row["name"],
                "created_at": row["created_at"],
                "summary": summary(row["name"], fields),
                "body": pretty(row["body"]) if full else None,
                "deliveries": deliveries.get(("event", row["id"]), []),
            }
        )
    return grouped


def deliveries_of(conn: db.Connection, webhook_ids: list[int]) -> dict[tuple[str, int], list[db.Row]]:
    """Deliveries keyed by ("event", event row id), or ("webhook", webhook row id) for the meta format."""
    marks = ",".join("?" for _ in webhook_ids)
    result: dict[tuple[str, int], list[db.Row]] = {}
    # `attempts` counts the current retry cycle only; the attempts table has every cycle's.
    for row in conn.execute(
        "SELECT d.*, e.enabled AS endpoint_enabled,"  # noqa: S608 (placeholders)
        " (SELECT count(*) FROM attempts a WHERE a.delivery_id = d.id) AS attempts_total"
        " FROM deliveries d LEFT JOIN endpoints e"
        f" ON e.id = d.endpoint_id WHERE d.webhook_id IN ({marks}) ORDER BY d.id",
        webhook_ids,
    ):
        key = ("event", row["event_id"]) if row["event_id"] is not None else ("webhook", row["webhook_id"])
        result.setdefault(key, []).append(row)
    return result


def attempts_of(conn: db.Connection, webhook_id: int) -> dict[int, list[db.Row]]:
    """Every attempt of the webhook's deliveries, across retry cycles, oldest first, by delivery id."""
    result: dict[int, list[db.Row]] = {}
    for row in conn.execute(
        "SELECT a.* FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = ? ORDER BY a.id",
        (webhook_id,),
    ):
        result.setdefault(row["delivery_id"], []).append(row)
    return result


def find_webhook(conn: db.Connection, ref: str) -> db.Row | None:
    """A webhook by its row id (`/events/12`) or its public id (`/events/whk_…`)."""
    column = "id" if ref.isdigit() else "webhook_id"
    if column == "id" and len(ref) > 18:
        return None
    return conn.execute(
        f"SELECT * FROM webhooks WHERE {column} = ?",  # noqa: S608 (one of two column names)
        (int(ref) if column == "id" else ref,),
    ).fetchone()


@bp.get("/events")
def index():
    conn = get_db()
    before = request.args.get("before", type=row_id)  # an odd cursor is the first page
    filters, problem = event_search.filters(request.args)
    if problem:
        ids: list[int] = []
        older = None
    else:
        ids, older = event_search.webhook_page(conn, filters, before, PAGE_SIZE)
    rows = (
        conn.execute(
            "SELECT id, webhook_id, received_at, object, fields, event_count, length(body) AS size, simulated"  # noqa: S608
            f" FROM webhooks WHERE id IN ({','.join('?' for _ in ids)}) ORDER BY id DESC",  # placeholders only
            ids,
        ).fetchall()
        if ids
        else []
    )
    events = events_of(conn, ids)
    deliveries = deliveries_of(conn, ids) if ids else {}
    total = db.read_aside(conn, "SELECT count(*) FROM webhooks")[0][0]  # ~8 ms a million
    own_before = request.args.get("own_before", type=row_id)
    own, own_older = ([], None)
    if not problem and own_events.shown(filters):
        own, own_older = own_events.page(conn, filters, own_before)
    return (
        render_template(
            "events.html",
            webhooks=[
                {"row": row, "events": events.get(row["id"], []), "meta": deliveries.get(("webhook", row["id"]), [])}
                for row in rows
            ],
            before=before,
            older=older,
            total=total,
            own=own,
            own_before=own_before,
            own_older=own_older,
            filters=filters,
            problem=problem,
            states=event_search.STATES,
            names=event_search.known_names(),
        ),
        400 if problem else 200,
    )


@bp.get("/events/<ref>")
def detail(ref: str):
    conn = get_db()
    row = find_webhook(conn, ref)
    if row is None:
        abort(404)
    body, cut = pretty(bytes(row["body"]))
    return render_template(
        "event.html",
        webhook=row,
        body=body,
        cut=cut,
        size=len(row["body"]),
        events=events_of(conn, [row["id"]], full=True).get(row["id"], []),
        attempts=attempts_of(conn, row["id"]),
        meta=deliveries_of(conn, [row["id"]]).get(("webhook", row["id"]), []),
    )


@bp.get("/events/event/<event_id>")
def own_detail(event_id: str):
    """An event no Meta webhook carried (published, operational, test): its JSON and deliveries."""
    conn = get_db()
    row, attempts = own_events.find(conn, event_id[:100])
    if row is None:
        abort(404)
    history: dict[int, list[db.Row]] = {}
    for attempt in attempts:
        history.setdefault(attempt["delivery_id"], []).append(attempt)
    return render_template(
        "own_event.html",
        event=own_events.listed(row, own_events.deliveries_of(conn, [row["id"]]).get(row["id"], [])),
        body=pretty(row["body"]),
        attempts=history,
    )


@bp.get("/events/<ref>/raw")
def raw(ref: str):
    """The stored body, byte for byte, as a download (never rendered by the browser)."""
    row = find_webhook(get_db(), ref)
    if row is None:
        abort(404)
    return Response(
        bytes(row["body"]),
        mimetype="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{row["webhook_id"]}.json"'},
    )
