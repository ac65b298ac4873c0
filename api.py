"""The API for the admin's own systems (SPEC 7): publish, pull and stream events.

    POST /api/v1/events   scope publish   {"event": "campaign.completed", "data": {...}} -> 202
    GET  /api/v1/events   scope read      ?after=<event_id>&limit=100&events=a,b
    GET  /api/v1/stream   scope read      Server-Sent Events, resumes after Last-Event-ID

Every answer is JSON; every error is {"error": "..."} with 400 (unreadable input), 401 (no,
unknown or revoked key), 403 (scope), 413 (body over 1 MiB), 422 (a value that cannot be
used: a reserved name, an unknown cursor, a limit out of range) or 503 (database busy, or
no stream slot left). A publish is answered only after its event, its deliveries and its
Idempotency-Key are committed in one transaction.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time

import psycopg
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

import apikeys
import db
import feed
import intake
import jobs
import names
import outbox
import stream
from db import get_db, transaction

bp = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_BODY_BYTES = 1024 * 1024
IDEMPOTENCY_SECONDS = 24 * 3600
IDEMPOTENCY_RE = re.compile(r"[\x21-\x7e]{1,255}")
DEFAULT_LIMIT = 100
# Keys of every published body that come from wahook, not from `data`.
OWN_KEYS = frozenset({"event", "event_id", "timestamp", "received_at", "source"})


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def answer(value, status: int = 200) -> Response:
    return Response(json.dumps(value, ensure_ascii=False), status=status, mimetype="application/json")


def error(status: int, message: str) -> Response:
    response = answer({"error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="wahook"'
    return response


@bp.after_request
def no_store(response: Response) -> Response:
    # Answers carry customers' messages: keep them out of every cache on the way.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.errorhandler(ApiError)
def api_error(exc: ApiError) -> Response:
    return error(exc.status, exc.message)


@bp.errorhandler(HTTPException)
def allowed_methods(exc: HTTPException) -> str | None:
    """The Allow header of a 405: the methods a client may use, not the HEAD and OPTIONS every
    route answers anyway. None for any other error."""
    if not isinstance(exc, MethodNotAllowed) or not exc.valid_methods:
        return None
    return ", ".join(m for m in sorted(exc.valid_methods) if m not in ("HEAD", "OPTIONS"))


def http_error(exc: HTTPException) -> Response:
    response = error(exc.code or 400, exc.description or exc.name)
    allow = allowed_methods(exc)
    if allow:
        response.headers["Allow"] = allow
    return response


@bp.errorhandler(sqlite3.Error)
@bp.errorhandler(psycopg.Error)
@bp.errorhandler(db.StorageError)
def storage_error(exc: Exception) -> Response:
    current_app.logger.error("API request could not use the database: %s", exc)
    response = error(503, "storage busy, retry later")
    response.headers["Retry-After"] = "1"
    return response


def authorize(scope: str) -> apikeys.ApiKey:
    """The request's API key, checked for `scope`; raises ApiError (the key itself is never logged)."""
    try:
        return apikeys.check(get_db(), apikeys.bearer(request.headers.get("Authorization")), scope)
    except apikeys.Refused as exc:
        raise ApiError(exc.status, exc.message) from None


def read_publish() -> tuple[str, dict]:
    """The event name and data of a publish request; raises ApiError."""
    raw = intake.read_body(MAX_BODY_BYTES)
    if raw is None:
        raise ApiError(413, "body larger than 1 MiB")
    try:
        body = intake.DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "body is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object: {"event": "campaign.completed", "data": {...}}')
    extra = sorted(set(body) - {"event", "data"})
    if extra:
        raise ApiError(422, f"unknown field {extra[0]!r}; a publish has only event and data")
    problem = names.publish_problem(body.get("event"))
    if problem:
        raise ApiError(422, problem)
    data = body.get("data", {})
    if not isinstance(data, dict):
        raise ApiError(422, "data must be a JSON object")
    clash = sorted(OWN_KEYS & set(data))
    if clash:
        raise ApiError(422, f"data may not hold {clash[0]!r}: wahook sets it")
    return body["event"], data


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_RE.fullmatch(key):
        raise ApiError(400, "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces")
    return key


@bp.post("/events")
def publish() -> Response:
    key = authorize("publish")
    name, data = read_publish()
    idem = idempotency_key()
    conn = get_db()
    now = time.time()
    with transaction(conn):
        apikeys.touch(conn, key, now, force=True)
        if idem is not None:
            earlier = conn.execute(
                "SELECT status, answer FROM idempotency_keys WHERE api_key_id = ? AND key = ? AND created_at > ?",
                (key.id, idem, now - IDEMPOTENCY_SECONDS),
            ).fetchone()
            if earlier is not None:
                return Response(earlier["answer"], status=earlier["status"], mimetype="application/json")
        # A fresh key per publish: two publishes with the same data are two events.
        event_id = outbox.publish(conn, name, {"source": "api", **data}, dedupe_key="api:" + secrets.token_hex(16))
        text = json.dumps({"event_id": event_id})
        if idem is not None:
            conn.execute(
                "INSERT INTO idempotency_keys (api_key_id, key, created_at, status, answer) VALUES (?, ?, ?, 202, ?)"
                " ON CONFLICT (api_key_id, key) DO UPDATE SET created_at = excluded.created_at,"
                " status = excluded.status, answer = excluded.answer",
                (key.id, idem, now, text),
            )
            conn.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (now - IDEMPOTENCY_SECONDS,))
    jobs.wake(current_app.config["WAHOOK"])
    return Response(text, status=202, mimetype="application/json")


def read_filter() -> list[str]:
    try:
        return feed.parse_filter(request.args.get("events"))
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def read_limit() -> int:
    text = request.args.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"-?[0-9]{1,9}", text.strip()):
        raise ApiError(400, "limit must be a whole number")
    limit = int(text)
    if not 1 <= limit <= feed.MAX_LIMIT:
        raise ApiError(422, f"limit must be between 1 and {feed.MAX_LIMIT}")
    return limit


def cursor(event_id: str | None) -> feed.Position | None:
    """The position (feed.py) after which to read, from an event_id the client has; None when it gave none."""
    if event_id is None:
        return None
    if not event_id or len(event_id) > 100:
        raise ApiError(400, "the cursor must be an event_id such as evt_...")
    try:
        return feed.cursor_row(get_db(), event_id)
    except feed.UnknownCursor:
        raise ApiError(
            422, f"unknown event_id {event_id!r}: never stored, or pruned after the retention period"
        ) from None


@bp.get("/events")
def pull() -> Response:
    key = authorize("read")
    limit = read_limit()
    wanted = read_filter()
    after = cursor(request.args.get("after"))
    conn = get_db()
    apikeys.touch(conn, key)
    rows = feed.page(conn, after or 0, limit, wanted)
    # The bodies are sent as stored, byte for byte, as deliveries send them.
    next_id = json.dumps(rows[-1]["event_id"]) if rows else "null"
    text = '{"events":[' + ",".join(row["body"] for row in rows) + '],"next":' + next_id + "}"
    return Response(text, mimetype="application/json")


@bp.get("/stream")
def events_stream() -> Response:
    key = authorize("read")
    wanted = read_filter()
    resume = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    conn = get_db()
    after = cursor(resume)
    if after is None:
        after = feed.latest_row(conn)
    apikeys.touch(conn, key)
    if not stream.take_slot():
        response = error(503, "this web process has no stream slot free; retry shortly")
        response.headers["Retry-After"] = "5"
        return response
    try:
        response = Response(
            stream.events(current_app.config["WAHOOK"].database, after, wanted),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    except BaseException:
        stream.release_slot()
        raise
    response.call_on_close(stream.release_slot)
    return response
