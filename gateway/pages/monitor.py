"""The Webhook Health Monitor: how deliveries are going, per endpoint and overall.

Everything is read from SQLite on each page load: rates from `attempts` (last hour and
day), open and failed counts from `deliveries`, the per-minute chart from `attempts`,
the intake's last webhook from `webhooks` and forged or broken signatures from
`rejections`. Redelivery buttons restart failed deliveries and wake a worker; failed
deliveries of deleted endpoints are counted apart and can only be dismissed.
`endpoint_health` is also what the settings page shows for each endpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from gateway import runstate
from gateway.delivery import delivery_states, doorbell, endpoints, outages
from gateway.ops import heartbeats, silence
from gateway.pages import recovery_notes
from gateway.pages.auth import safe_next
from gateway.storage import db
from gateway.storage.db import get_db, row_id

bp = Blueprint("monitor", __name__)

HOUR, DAY = 3600, 86400
PAGE_SIZE = 25
FAILED_SHOWN = 10  # failed deliveries per page: on a phone each is a card of its own
CHART_MINUTES = 60


@dataclass
class EndpointHealth:
    """One endpoint's line on the monitor."""

    id: int
    url: str
    enabled: bool
    disabled_reason: str
    hour_total: int = 0
    hour_ok: int = 0
    day_total: int = 0
    day_ok: int = 0
    pending: int = 0
    retrying: int = 0
    failed: int = 0
    streak: int = 0  # failed attempts since the last success
    failing_since: float | None = None
    last_attempt: db.Row | None = None
    last_error: db.Row | None = None  # the newest failed attempt of the last day
    outage: str = "healthy"  # outages.endpoint_state: failing, recovering or healthy
    recovering_until: float | None = None
    accounts: tuple[str, ...] = ()  # the WhatsApp accounts it takes; empty = all

    @property
    def state(self) -> str:
        """healthy, failing, recovering, disabled or idle: what the status line and its colour say."""
        if not self.enabled:
            return "disabled"
        if self.streak or self.outage == "failing":
            return "failing"
        if self.outage == "recovering":
            return "recovering"
        if self.last_attempt is None:
            return "idle"
        return "healthy"


def endpoint_health(conn: db.Connection, now: float | None = None) -> list[EndpointHealth]:
    """Each configured endpoint's rates, open deliveries, failure streak and last error.

    The one place an endpoint's health is worked out: the monitor and the settings page
    both show it, so they always agree.
    """
    now = time.time() if now is None else now
    rows = {
        row["id"]: EndpointHealth(
            row["id"],
            row["url"],
            bool(row["enabled"]),
            row["disabled_reason"],
            failing_since=row["failing_since"],
            outage=outages.endpoint_state(row),
            recovering_until=row["recovering_until"],
            accounts=tuple(endpoints.as_dict(row)["accounts"]),
        )
        for row in endpoints.list_all(conn)
    }
    for row in db.read_aside(  # a day of attempts: ~650 ms a million (see read_aside)
        conn,
        "SELECT endpoint_id, count(*) AS day_total, sum(ok) AS day_ok,"
        " sum(CASE WHEN attempted_at >= ? THEN 1 ELSE 0 END) AS hour_total,"
        " sum(CASE WHEN ok <> 0 AND attempted_at >= ? THEN 1 ELSE 0 END) AS hour_ok"
        " FROM attempts WHERE attempted_at >= ? GROUP BY endpoint_id",
        (now - HOUR, now - HOUR, now - DAY),
    ):
        if row["endpoint_id"] in rows:
            item = rows[row["endpoint_id"]]
            item.day_total, item.day_ok = row["day_total"], row["day_ok"]
            item.hour_total, item.hour_ok = row["hour_total"], row["hour_ok"]
    for row in conn.execute(
        "SELECT endpoint_id, state, count(*) FROM deliveries WHERE state IN ('pending', 'retrying', 'failed')"
        " GROUP BY endpoint_id, state"
    ):
        if row[0] in rows:
            setattr(rows[row[0]], row[1], row[2])
    for item in rows.values():
        # Each is one look-up in the attempts_endpoint index (endpoint_id, id), however long
        # the endpoint has been quiet.
        item.last_attempt = conn.execute(
            "SELECT * FROM attempts WHERE endpoint_id = ? ORDER BY id DESC LIMIT 1", (item.id,)
        ).fetchone()
        if item.last_attempt is not None and not item.last_attempt["ok"]:
            last_ok = conn.execute(
                "SELECT id FROM attempts WHERE endpoint_id = ? AND ok = 1 ORDER BY id DESC LIMIT 1", (item.id,)
            ).fetchone()
            streak = conn.execute(
                "SELECT count(*), min(attempted_at) FROM attempts WHERE id > ? AND endpoint_id = ?",
                (last_ok[0] if last_ok else 0, item.id),
            ).fetchone()
            item.streak, item.failing_since = streak[0], streak[1]
        item.last_error = conn.execute(
            "SELECT * FROM attempts WHERE attempted_at >= ? AND endpoint_id = ? AND ok = 0"
            " ORDER BY attempted_at DESC LIMIT 1",
            (now - DAY, item.id),
        ).fetchone()
    return list(rows.values())


@dataclass
class Chart:
    """Delivered and failed attempts per minute, with the geometry of an SVG bar chart."""

    buckets: list[dict[str, Any]] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0
    top: int = 1  # the value at the top of the scale
    width: int = 600
    height: int = 120
    bar: float = 10.0


def nice_top(value: int) -> int:
    """The smallest of 1, 2, 4, 6, 8, 10, 20, 40, … that is at least `value`: even, so half is a whole count."""
    step = 1
    while True:
        for factor in (1, 2, 4, 6, 8):
            if step * factor >= value:
                return step * factor
        step *= 10


def chart(conn: db.Connection, now: float) -> Chart:
    this_minute = int(now // 60)
    first = this_minute - CHART_MINUTES + 1
    counts = {
        row[0]: (row[1], row[2])
        for row in db.read_aside(
            conn,
            "SELECT CAST(attempted_at AS BIGINT) / 60 AS minute, sum(ok), sum(1 - ok) FROM attempts"
            " WHERE attempted_at >= ? GROUP BY minute",
            (first * 60,),
        )
    }
    result = Chart()
    result.bar = result.width / CHART_MINUTES
    result.top = nice_top(max((ok + bad for ok, bad in counts.values()), default=1))
    scale = result.height / result.top
    for position, minute in enumerate(range(first, this_minute + 1)):
        ok, bad = counts.get(minute, (0, 0))
        result.delivered += ok
        result.failed += bad
        ok_height, bad_height = ok * scale, bad * scale
        result.buckets.append(
            {
                "minute": minute * 60,
                "ok": ok,
                "failed": bad,
                "x": round(position * result.bar + 1, 2),
                "ok_y": round(result.height - ok_height, 2),
                "ok_h": round(ok_height, 2),
                "bad_y": round(result.height - ok_height - bad_height, 2),
                "bad_h": round(bad_height, 2),
            }
        )
    return result


def recent_attempts(conn: db.Connection, before: int | None) -> tuple[list[db.Row], int | None]:
    """A page of attempts, newest first, and the id to pass as `before` for the next page."""
    where, params = ("WHERE a.id < ?", [before]) if before else ("", [])
    rows = conn.execute(
        "SELECT a.*, d.event_name, d.endpoint_url, d.webhook_id, d.state, w.webhook_id AS public_webhook_id"  # noqa: S608
        " FROM attempts a JOIN deliveries d ON d.id = a.delivery_id LEFT JOIN webhooks w ON w.id = d.webhook_id"
        f" {where} ORDER BY a.id DESC LIMIT ?",  # where is one of two fixed strings
        (*params, PAGE_SIZE + 1),
    ).fetchall()
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return rows, rows[-1]["id"] if more else None


@dataclass
class Failed:
    """Failed deliveries as the monitor counts them: a page of those whose endpoint exists,
    and apart from them those of deleted endpoints (not dismissed), which can only be dismissed."""

    rows: list[db.Row]
    total: int  # endpoint exists: redeliverable once the endpoint is enabled
    disabled: int  # of total, waiting for a disabled endpoint
    page: int
    pages: int
    orphaned: list[db.Row]
    orphaned_total: int


def failed_deliveries(conn: db.Connection, page: int = 1) -> Failed:
    counts = conn.execute(
        "SELECT count(d.endpoint_id), sum(CASE WHEN e.enabled = 0 THEN 1 ELSE 0 END),"
        " sum(CASE WHEN d.endpoint_id IS NULL AND d.dismissed_at IS NULL THEN 1 ELSE 0 END)"
        " FROM deliveries d LEFT JOIN endpoints e ON e.id = d.endpoint_id WHERE d.state = 'failed'"
    ).fetchone()
    total, orphaned_total = counts[0], counts[2] or 0
    pages = max(1, -(-total // FAILED_SHOWN))
    page = min(max(page, 1), pages)
    query = (
        "SELECT d.*, e.enabled AS endpoint_enabled FROM deliveries d LEFT JOIN endpoints e ON e.id = d.endpoint_id"
        " WHERE d.state = 'failed' AND d.endpoint_id IS {} ORDER BY d.updated_at DESC, d.id DESC LIMIT ? OFFSET ?"
    )
    return Failed(
        rows=conn.execute(query.format("NOT NULL"), (FAILED_SHOWN, (page - 1) * FAILED_SHOWN)).fetchall(),
        total=total,
        disabled=counts[1] or 0,
        page=page,
        pages=pages,
        orphaned=conn.execute(
            query.format("NULL AND d.dismissed_at IS NULL"),  # one of two fixed strings
            (FAILED_SHOWN, 0),
        ).fetchall(),
        orphaned_total=orphaned_total,
    )


def intake_summary(conn: db.Connection, now: float) -> dict[str, Any]:
    """The last webhook from Meta (and from `simulate`, apart) and the signatures refused in the
    last hour and day."""

    def rejected(seconds: int) -> int:
        return conn.execute(
            "SELECT coalesce(sum(count), 0) FROM rejections WHERE minute >= ?", (int((now - seconds) // 60),)
        ).fetchone()[0]

    return {
        "last_webhook": silence.last_meta_webhook(conn),
        "last_simulated": conn.execute("SELECT max(received_at) FROM webhooks WHERE simulated = 1").fetchone()[0],
        "rejected_hour": rejected(HOUR),
        "rejected_day": rejected(DAY),
        "reasons": conn.execute(
            "SELECT reason, sum(count) AS count FROM rejections WHERE minute >= ? GROUP BY reason ORDER BY 2 DESC",
            (int((now - DAY) // 60),),
        ).fetchall(),
    }


def worker_summary(conn: db.Connection, now: float) -> dict[str, Any]:
    running, seen_at = heartbeats.recent(conn, now)
    return {"running": running, "seen_at": seen_at}


@bp.get("/monitor")
def index():
    conn = get_db()
    now = time.time()
    before = request.args.get("before", type=row_id)  # an odd cursor is the first page
    attempts, older = recent_attempts(conn, before)
    failed = failed_deliveries(conn, request.args.get("failed_page", 1, type=int))
    health_rows = endpoint_health(conn, now)
    workers = worker_summary(conn, now)
    config = current_app.config["WAHOOK"]
    waiting = recovery_notes.waiting(conn, config, health_rows)
    return render_template(
        "monitor.html",
        endpoints=health_rows,
        failing=[e for e in health_rows if e.state == "failing"],
        workers=workers,
        chart=chart(conn, now),
        attempts=attempts,
        before=before,
        older=older,
        failed=failed,
        failed_total=failed.total,
        intake=intake_summary(conn, now),
        open_total=sum(e.pending + e.retrying for e in health_rows),
        **runstate.page_notices(current_app.config["WAHOOK"], current_app.config.get("WAHOOK_CONFIG_LOADED")),
        quiet=silence.state(conn, config, now),
        auto_recover=config["delivery"]["auto_recover"],
        waiting=waiting,
        waiting_total=sum(w.count for w in waiting.values()),
        recovered=recovery_notes.recoveries(conn, now),
    )


def back(default: str) -> str:
    return safe_next(request.form.get("next")) if request.form.get("next") else default


@bp.post("/monitor/redeliver/<int:delivery_id>")
def redeliver_one(delivery_id: int):
    conn = get_db()
    count = delivery_states.redeliver(conn, ids=[delivery_id])
    if count:
        doorbell.wake(current_app.config["WAHOOK"])
        flash(f"Delivery #{delivery_id} queued again: a fresh retry cycle has started.", "ok")
    else:
        flash(
            f"Delivery #{delivery_id} was not redelivered: it is not failed, or its endpoint is deleted or disabled.",
            "warn",
        )
    return redirect(back(url_for("monitor.index", _anchor="failed")), 303)


@bp.post("/monitor/redeliver-failed")
def redeliver_all():
    conn = get_db()
    count = delivery_states.redeliver(conn)
    if count:
        doorbell.wake(current_app.config["WAHOOK"])
    noun = "delivery" if count == 1 else "deliveries"
    message = f"{count} failed {noun} queued again." if count else "There was no failed delivery to redeliver."
    waiting = failed_deliveries(conn).disabled
    if waiting:
        message += (
            f" {waiting} more wait{'s' if waiting == 1 else ''} for a disabled endpoint:"
            " enable it on the settings page, then redeliver."
        )
    flash(message, "warn" if waiting else "ok")
    return redirect(url_for("monitor.index", _anchor="failed"), 303)


@bp.post("/monitor/dismiss/<int:delivery_id>")
def dismiss_one(delivery_id: int):
    if delivery_states.dismiss_orphaned(get_db(), [delivery_id]):
        flash(f"Delivery #{delivery_id} dismissed. Its attempts stay in the event log.", "ok")
    else:
        flash(f"Delivery #{delivery_id} was not dismissed: only a failed delivery of a deleted endpoint is.", "warn")
    return redirect(back(url_for("monitor.index", _anchor="orphaned")), 303)


@bp.post("/monitor/dismiss-orphaned")
def dismiss_all():
    count = delivery_states.dismiss_orphaned(get_db())
    noun = "delivery" if count == 1 else "deliveries"
    flash(f"{count} failed {noun} of deleted endpoints dismissed. Their attempts stay in the event log.", "ok")
    return redirect(url_for("monitor.index", _anchor="orphaned"), 303)
