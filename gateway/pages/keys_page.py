"""The API keys on the settings page: make one (shown once), revoke one.

The list itself is drawn by the settings page (settings.settings_page); these are the two
forms it posts to. A new key is shown in full in the answer to the POST that made it and
never again: only its hash is stored.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from gateway.api import api_keys
from gateway.storage.db import get_db

bp = Blueprint("keys", __name__)


@bp.post("/settings/apikeys")
def add():
    try:
        made, key = api_keys.create(get_db(), request.form.get("name", ""), request.form.getlist("scopes"))
    except api_keys.ApiKeyError as exc:
        flash(f"The API key was not made: {exc.message}.", "warn")
        return redirect(url_for("settings.index", _anchor="api-keys"), 303)
    return render_template("apikey.html", api_key=made.as_dict(), key=key)


@bp.post("/settings/apikeys/<int:key_id>/revoke")
def revoke(key_id: int):
    if not api_keys.revoke(get_db(), key_id):
        abort(404)
    flash(f"API key #{key_id} revoked: every request with it is refused from now on.", "ok")
    return redirect(url_for("settings.index", _anchor="api-keys"), 303)
