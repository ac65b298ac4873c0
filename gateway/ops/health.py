"""GET /healthz: ping every dependency; 200 when all answer, 503 with the reasons otherwise.

`meta` says whether Meta has gone quiet (silence.py); it never makes the answer a 503.
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify

from gateway.delivery import doorbell
from gateway.ops import heartbeats, silence
from gateway.storage.db import get_db

bp = Blueprint("health", __name__)


def check_database() -> str:
    try:
        get_db().execute("SELECT 1 FROM webhooks LIMIT 1").fetchall()
        return "ok"
    except Exception as exc:  # any failure is the answer, not a crash
        return f"error: {exc}"


def check_redis() -> str:
    try:
        doorbell.redis_connection(current_app.config["WAHOOK"]).ping()
        return "ok"
    except Exception as exc:
        return f"error: {exc}"


def check_worker() -> str:
    try:
        seen_at = heartbeats.last_seen(get_db())
    except Exception as exc:
        return f"unknown: {exc}"
    if seen_at is None:
        return "error: no worker has started"
    silent = time.time() - seen_at
    if silent > heartbeats.SILENCE_LIMIT:
        return f"error: no worker heartbeat for {int(silent)} s"
    return "ok"


def check_meta() -> str:
    """ "silent" when Meta has been quiet too long (see silence.py); an alarm, not an outage."""
    try:
        return silence.health_value(get_db(), current_app.config["WAHOOK"])
    except Exception as exc:
        return f"unknown: {exc}"


@bp.get("/healthz")
def healthz():
    report = {"database": check_database(), "redis": check_redis(), "worker": check_worker()}
    report = {"ok": all(v == "ok" for v in report.values()), **report, "meta": check_meta()}
    return jsonify(report), 200 if report["ok"] else 503
