"""The settings page: the Meta callback URL and verify token, and the endpoints.

Endpoints are added, edited, enabled, disabled, deleted, given a new secret and sent a
test from here, through endpoints.py and send.py, so the page refuses exactly what
the CLI refuses, with the same words, shown next to the field they belong to.

A new secret (of a new endpoint, or generated later) is shown in full in the answer to
the POST that made it and never again; it is not put in the session cookie to carry it
across a redirect.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from gateway import runstate
from gateway.api import api_keys
from gateway.delivery import endpoints, send
from gateway.intake.event_catalog import SELECTABLE_GROUPS, SELECTABLE_NAMES, iso
from gateway.pages import monitor
from gateway.storage import db
from gateway.storage.db import get_db

bp = Blueprint("settings", __name__)

TEST_RESPONSE_SHOWN = 300  # characters of a test's response body shown on the page


def config():
    return current_app.config["WAHOOK"]


def callback_url() -> str:
    """Where Meta should post: WAHOOK_PUBLIC_URL when set (behind a proxy or tunnel), else this request's root."""
    base = (os.environ.get("WAHOOK_PUBLIC_URL") or "").strip() or request.url_root
    return base.rstrip("/") + url_for("intake.receive")


def endpoint_or_404(endpoint_id: int) -> db.Row:
    row = endpoints.get(get_db(), endpoint_id)
    if row is None:
        abort(404)
    return row


def form_events() -> list[str]:
    """The checked event names plus any typed in the `other_events` box (whatsapp.<field>, …)."""
    names = request.form.getlist("events")
    names += [n.strip() for n in request.form.get("other_events", "").replace("\n", ",").split(",") if n.strip()]
    return names


def form_values(row: db.Row | None = None) -> dict[str, Any]:
    """What the add or edit form shows: the endpoint's values, or what was just typed."""
    if request.method == "POST":
        events = form_events()
        return {
            "url": request.form.get("url", ""),
            "events": [n for n in events if n in SELECTABLE_NAMES],
            "other_events": ", ".join(n for n in events if n not in SELECTABLE_NAMES),
            "format": request.form.get("format", "events"),
            "accounts": request.form.get("accounts", ""),
            "local": bool(request.form.get("local")),
        }
    if row is None:
        return {"url": "", "events": [], "other_events": "", "format": "events", "accounts": "", "local": False}
    chosen = endpoints.as_dict(row)["events"]
    return {
        "url": row["url"],
        "events": [n for n in chosen if n in SELECTABLE_NAMES],
        "other_events": ", ".join(n for n in chosen if n not in SELECTABLE_NAMES),
        "format": row["format"],
        "accounts": ", ".join(endpoints.as_dict(row)["accounts"]),
        "local": bool(row["local"]),
    }


def drift_notice() -> dict[str, Any]:
    """The delivery rules the config file now gives differently from this process's (see config_drift)."""
    notices = runstate.page_notices(config(), current_app.config.get("WAHOOK_CONFIG_LOADED"))
    return {"delivery_drift": notices["delivery_drift"], "config_file": notices["config_file"]}


def settings_page(add_errors: dict[str, str] | None = None, status: int = 200):
    conn = get_db()
    meta = config()["meta"]
    return (
        render_template(
            "settings.html",
            callback_url=callback_url(),
            verify_token=meta["verify_token"],
            app_secret_set=bool(meta["app_secret"]),
            endpoints=[endpoints.as_dict(row) for row in endpoints.list_all(conn)],
            health={item.id: item for item in monitor.endpoint_health(conn)},
            api_keys=[key.as_dict() for key in api_keys.list_all(conn)],
            groups=SELECTABLE_GROUPS,
            formats=endpoints.FORMATS,
            values=form_values(),
            errors=add_errors or {},
            test_outcome=session.pop("test_outcome", None),
            **drift_notice(),
        ),
        status,
    )


@bp.get("/settings")
def index():
    return settings_page()


@bp.post("/settings/endpoints")
def add():
    fields: dict[str, Any] = {
        "events": form_events(),
        "format": request.form.get("format", "events"),
        "bearer_token": request.form.get("bearer_token", ""),
        "accounts": request.form.get("accounts", ""),
        "local": bool(request.form.get("local")),
    }
    if request.form.get("secret", "").strip():
        fields["secret"] = request.form["secret"].strip()
    try:
        row = endpoints.create(get_db(), config(), request.form.get("url", ""), **fields)
    except endpoints.EndpointError as exc:
        return settings_page({exc.field: exc.message}, 400)
    return render_template(
        "secret.html", title="Endpoint added", endpoint=endpoints.as_dict(row), secret=row["secret"], new=True
    )


@bp.route("/settings/endpoints/<int:endpoint_id>", methods=["GET", "POST"])
def edit(endpoint_id: int):
    row = endpoint_or_404(endpoint_id)
    errors: dict[str, str] = {}
    if request.method == "POST":
        fields: dict[str, Any] = {
            "url": request.form.get("url", ""),
            "events": form_events(),
            "format": request.form.get("format", "events"),
            "accounts": request.form.get("accounts", ""),
            "local": bool(request.form.get("local")),
        }
        # The token is never shown; an empty box keeps it, the checkbox removes it.
        if request.form.get("remove_bearer_token"):
            fields["bearer_token"] = ""
        elif request.form.get("bearer_token", "").strip():
            fields["bearer_token"] = request.form["bearer_token"]
        try:
            endpoints.update(get_db(), config(), endpoint_id, **fields)
        except endpoints.EndpointError as exc:
            errors[exc.field] = exc.message
        except KeyError:
            abort(404)
        else:
            flash(f"Endpoint #{endpoint_id} saved.", "ok")
            return redirect(url_for("settings.index", _anchor=f"endpoint-{endpoint_id}"), 303)
    return (
        render_template(
            "edit.html",
            endpoint=endpoints.as_dict(row),
            values=form_values(row),
            groups=SELECTABLE_GROUPS,
            formats=endpoints.FORMATS,
            errors=errors,
        ),
        400 if errors else 200,
    )


@bp.post("/settings/endpoints/<int:endpoint_id>/enable")
def enable(endpoint_id: int):
    endpoint_or_404(endpoint_id)
    endpoints.update(get_db(), config(), endpoint_id, enabled=True)
    flash(
        f"Endpoint #{endpoint_id} enabled. Deliveries that failed meanwhile stay failed:"
        " redeliver them from the monitor.",
        "ok",
    )
    return redirect(url_for("settings.index", _anchor=f"endpoint-{endpoint_id}"), 303)


@bp.post("/settings/endpoints/<int:endpoint_id>/disable")
def disable(endpoint_id: int):
    endpoint_or_404(endpoint_id)
    endpoints.disable(get_db(), endpoint_id, f"by the admin at {iso(time.time())}")
    flash(f"Endpoint #{endpoint_id} disabled. Nothing is sent to it until it is enabled again.", "ok")
    return redirect(url_for("settings.index", _anchor=f"endpoint-{endpoint_id}"), 303)


@bp.route("/settings/endpoints/<int:endpoint_id>/delete", methods=["GET", "POST"])
def delete(endpoint_id: int):
    row = endpoint_or_404(endpoint_id)
    if request.method == "GET":
        return render_template("confirm.html", action="delete", endpoint=endpoints.as_dict(row))
    endpoints.remove(get_db(), endpoint_id)
    flash(f"Endpoint #{endpoint_id} ({row['url']}) deleted. Its delivery history stays on the monitor.", "ok")
    return redirect(url_for("settings.index"), 303)


@bp.route("/settings/endpoints/<int:endpoint_id>/secret", methods=["GET", "POST"])
def new_secret(endpoint_id: int):
    row = endpoint_or_404(endpoint_id)
    if request.method == "GET":
        return render_template("confirm.html", action="secret", endpoint=endpoints.as_dict(row))
    try:
        hours = endpoints.check_keep_old_hours(request.form.get("keep_old_hours", "24"))
    except endpoints.EndpointError as exc:
        return render_template("confirm.html", action="secret", endpoint=endpoints.as_dict(row), error=exc.message), 400
    try:
        rotated = endpoints.rotate_secret(get_db(), endpoint_id, hours)
    except KeyError:
        abort(404)
    return render_template(
        "secret.html",
        title="New secret generated",
        endpoint=endpoints.as_dict(row),
        secret=rotated["secret"],
        new=False,
        old_until=rotated["previous_secret_until"],
    )


@bp.post("/settings/endpoints/<int:endpoint_id>/test")
def send_test(endpoint_id: int):
    endpoint_or_404(endpoint_id)
    try:
        outcome = send.send_test(get_db(), config(), endpoint_id)
    except KeyError:
        abort(404)
    # Small enough for the cookie; the full attempt is on the monitor.
    session["test_outcome"] = {
        "endpoint_id": endpoint_id,
        "ok": outcome.ok,
        "status_code": outcome.status_code,
        "duration_ms": outcome.duration_ms,
        "error": outcome.error[:TEST_RESPONSE_SHOWN],
        "response": outcome.response_body[:TEST_RESPONSE_SHOWN],
        "truncated": len(outcome.response_body) > TEST_RESPONSE_SHOWN,
        "at": time.time(),
    }
    return redirect(url_for("settings.index", _anchor=f"endpoint-{endpoint_id}"), 303)
