"""`GET /media/<token>`: the file behind an event's `media.url`, and the admin's media pieces.

The link is public (a receiver has no session) and proves itself: a token signed with the
installation's key and not yet expired (links.py), else 403. The file is streamed from
disk with its `mime_type` and Content-Length (send_file: the server's sendfile where it has one,
else fixed-size chunks; never the whole file in memory). Asked for before the worker downloaded
it, the link downloads it then; a failed download answers 502 with the reason.

Files are what customers sent, served from the admin pages' own origin, so they come with a
sandboxing Content-Security-Policy and nosniff: an HTML or SVG "image" cannot run script here.

For the admin: the settings page's "Check token" button (one Graph call, the outcome shown,
the token never), and the monitor's media row, both through template partials.
"""

from __future__ import annotations

import re
import time

from flask import Blueprint, Flask, Response, current_app, flash, redirect, send_file, session, url_for

from gateway.media import downloads, fetch, links, store
from gateway.storage import db

bp = Blueprint("media", __name__)
admin_bp = Blueprint("media_admin", __name__)

FETCH_WAIT = 20.0  # seconds a link waits for a download another process is making (gunicorn's limit is 30)
MIME_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,126}/[A-Za-z0-9][\w.+-]{0,126}")
UNSAFE_IN_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")
MEDIA_CSP = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'"


def _text(body: str, status: int, **headers: str) -> Response:
    return Response(body + "\n", status=status, mimetype="text/plain", headers=headers)


@bp.get("/media/<token>")
def serve(token: str) -> Response:
    config = current_app.config["WAHOOK"]
    try:
        media_id = links.check_token(links.installation_key(config), token)
    except links.LinkRefused as exc:
        return _text(f"link refused: {exc}", 403)
    conn = db.get_db()
    row = store.get(conn, media_id)
    if row is not None and row["state"] not in ("downloaded", "failed"):
        row = downloads.obtain(conn, config, media_id, f"web.{media_id}", FETCH_WAIT)
        if row is None:
            return _text("the file is still being downloaded; try again shortly", 503, **{"Retry-After": "10"})
    if row is None:
        return _text("no such media (it may have been pruned after storage.retention_days)", 404)
    if row["state"] != "downloaded":
        return _text(f"the file could not be downloaded from Meta: {row['last_error']}", 502)
    path = store.media_dir(config) / row["file"]
    if not path.is_file():
        return _text("the file is no longer on disk", 502)
    # Both come from the customer's message: a newline would break the header, a slash is no name.
    name = UNSAFE_IN_NAME.sub("_", row["filename"]).strip(" .")[:200] or None
    mime = row["mime_type"] if MIME_TYPE.fullmatch(row["mime_type"]) else "application/octet-stream"
    response = send_file(
        path,
        mimetype=mime,
        download_name=name,
        as_attachment=False,
        conditional=True,
        etag=row["file"],
        max_age=3600,
    )
    response.headers["Content-Security-Policy"] = MEDIA_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.get("/media/")
@bp.get("/media/<path:rest>")
def not_a_link(rest: str = "") -> Response:
    """Anything under /media/ that is not one token: a slash, an encoded one (%2f), dots. Answered
    here rather than by the login redirect every unknown admin address gets."""
    return _text("not a media link", 404)


@admin_bp.post("/settings/media/check-token")
def check_token() -> Response:
    """One Graph call with the access token; the outcome is shown on the settings page."""
    ok, message = fetch.check_token(current_app.config["WAHOOK"])
    session["media_token_check"] = {"ok": ok, "message": message, "at": time.time()}
    flash("Access token checked." if ok else "Access token check failed.", "ok" if ok else "error")
    return redirect(url_for("settings.index", _anchor="media"), 303)


def media_settings() -> dict:
    """What the settings page's media partial shows (never the token itself)."""
    config = current_app.config["WAHOOK"]
    return {
        "token_set": bool(config["meta"]["access_token"]),
        "graph_url": config["meta"]["graph_url"],
        "max_bytes": config["media"]["max_bytes"],
        "link_days": config["media"]["link_days"],
        "check": session.pop("media_token_check", None),
    }


def media_summary() -> dict:
    """The monitor's media row."""
    return {"token_set": bool(current_app.config["WAHOOK"]["meta"]["access_token"])} | store.summary(db.get_db())


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(admin_bp)
    app.jinja_env.globals.update(media_settings=media_settings, media_summary=media_summary)
