"""The API for the admin's own systems (SPEC 7): publish, pull and stream events.

    POST /api/v1/events   scope publish   {"event": "campaign.completed", "data": {...}} -> 202
    GET  /api/v1/events   scope read      ?after=<event_id>&limit=100&events=a,b
    GET  /api/v1/stream   scope read      Server-Sent Events, resumes after Last-Event-ID
    GET  /api/v1/ws       scope read      the same over a WebSocket, resumes after ?after=
    POST /api/v1/stream-tokens  scope read  a signed, expiring token for a browser (?token=)

The three reading routes take `?token=` in place of the key, and `accounts=` beside
`events=`. Browser origins in api.allowed_origins get CORS (cors.py).

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

from gateway.api import api_keys, cors, event_reader, stream, stream_tokens, ws_hub
from gateway.delivery import accounts, doorbell, outbox
from gateway.intake import event_names, webhook
from gateway.storage import db
from gateway.storage.db import get_db, transaction

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


def allowed_origins() -> list[str]:
    return current_app.config["WAHOOK"]["api"]["allowed_origins"]


@bp.before_request
def check_origin() -> Response | None:
    """Answer CORS preflights; refuse a WebSocket or token request from a foreign page (403)."""
    if cors.is_preflight(request):
        return cors.preflight(request, allowed_origins())
    browser_only = (
        "token" in request.args
        or request.headers.get("Upgrade", "").lower() == "websocket"
        or request.endpoint == "api.mint_stream_token"
    )
    if browser_only and not cors.origin_allowed(request, allowed_origins()):
        return error(403, "this page's origin is not in api.allowed_origins")
    return None


@bp.after_request
def no_store(response: Response) -> Response:
    # Answers carry customers' messages: keep them out of every cache on the way.
    response.headers.setdefault("Cache-Control", "no-store")
    return cors.add_headers(request, response, allowed_origins())


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


def authorize(scope: str) -> api_keys.ApiKey:
    """The request's API key, checked for `scope`; raises ApiError (the key itself is never logged)."""
    try:
        return api_keys.check(get_db(), api_keys.bearer(request.headers.get("Authorization")), scope)
    except api_keys.Refused as exc:
        raise ApiError(exc.status, exc.message) from None


def covers(allowed: tuple[str, ...], entry: str) -> bool:
    """Whether a filter entry asks for nothing beyond the non-empty filter `allowed`."""
    if not entry.endswith(".*"):
        return outbox.selects(allowed, entry)
    return any(a.endswith(".*") and entry.startswith(a[:-1]) for a in allowed)


class Reader:
    """Who reads, and within which filters: an API key, or a stream token minted from one."""

    def __init__(self, key: api_keys.ApiKey, grant: stream_tokens.Grant | None) -> None:
        self.key = key
        self.grant = grant

    def events(self) -> list[str]:
        """The events filter: the request's `events=`, which a token's own filter must cover."""
        asked = read_filter()
        if self.grant is None or not self.grant.events:
            return asked
        extra = [entry for entry in asked if not covers(self.grant.events, entry)]
        if extra:
            raise ApiError(403, f"this token does not allow {extra[0]!r}; it allows {', '.join(self.grant.events)}")
        return asked or list(self.grant.events)

    def accounts(self) -> list[str]:
        try:
            asked = accounts.clean(request.args.get("accounts"))
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        if self.grant is None or not self.grant.accounts:
            return asked
        extra = sorted(set(asked) - set(self.grant.accounts))
        if extra:
            raise ApiError(403, f"this token does not allow account {extra[0]!r}")
        return asked or list(self.grant.accounts)


def reader() -> Reader:
    """The request's reader: `?token=` (a stream token) or a read key in the header."""
    token = request.args.get("token")
    if token is None:
        return Reader(authorize("read"), None)
    try:
        key, grant = stream_tokens.check(get_db(), current_app.config["SECRET_KEY"], token)
    except api_keys.Refused as exc:
        raise ApiError(exc.status, exc.message) from None
    return Reader(key, grant)


def read_publish() -> tuple[str, dict]:
    """The event name and data of a publish request; raises ApiError."""
    raw = webhook.body_of(request.environ, MAX_BODY_BYTES)
    if raw is None:
        raise ApiError(413, "body larger than 1 MiB")
    try:
        body = webhook.DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "body is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object: {"event": "campaign.completed", "data": {...}}')
    extra = sorted(set(body) - {"event", "data"})
    if extra:
        raise ApiError(422, f"unknown field {extra[0]!r}; a publish has only event and data")
    problem = event_names.publish_problem(body.get("event"))
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
        api_keys.touch(conn, key, now, force=True)
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
    doorbell.wake(current_app.config["WAHOOK"])
    return Response(text, status=202, mimetype="application/json")


def read_filter() -> list[str]:
    try:
        return event_reader.parse_filter(request.args.get("events"))
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def read_limit() -> int:
    text = request.args.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"-?[0-9]{1,9}", text.strip()):
        raise ApiError(400, "limit must be a whole number")
    limit = int(text)
    if not 1 <= limit <= event_reader.MAX_LIMIT:
        raise ApiError(422, f"limit must be between 1 and {event_reader.MAX_LIMIT}")
    return limit


def cursor(event_id: str | None) -> event_reader.Position | None:
    """The position (event_reader.py) after which to read, from an event_id the client has; None when it gave none."""
    if event_id is None:
        return None
    if not event_id or len(event_id) > 100:
        raise ApiError(400, "the cursor must be an event_id such as evt_...")
    try:
        return event_reader.cursor_row(get_db(), event_id)
    except event_reader.UnknownCursor:
        raise ApiError(
            422, f"unknown event_id {event_id!r}: never stored, or pruned after the retention period"
        ) from None


@bp.get("/events")
def pull() -> Response:
    who = reader()
    limit = read_limit()
    wanted, account_ids = who.events(), who.accounts()
    after = cursor(request.args.get("after"))
    conn = get_db()
    api_keys.touch(conn, who.key)
    rows = event_reader.page(conn, after or 0, limit, wanted, account_ids)
    # The bodies are sent as stored, byte for byte, as deliveries send them.
    next_id = json.dumps(rows[-1]["event_id"]) if rows else "null"
    text = '{"events":[' + ",".join(row["body"] for row in rows) + '],"next":' + next_id + "}"
    return Response(text, mimetype="application/json")


def busy(message: str) -> Response:
    response = error(503, message)
    response.headers["Retry-After"] = "5"
    return response


@bp.get("/stream")
def events_stream() -> Response:
    who = reader()
    wanted, account_ids = who.events(), who.accounts()
    resume = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    conn = get_db()
    after = cursor(resume)
    if after is None:
        after = event_reader.latest_row(conn)
    api_keys.touch(conn, who.key)
    refused = stream.take_slot(who.key.id)
    if refused:
        return busy(refused)
    release = lambda: stream.release_slot(who.key.id)  # noqa: E731
    try:
        response = Response(
            stream.events(
                current_app.config["WAHOOK"].database,
                after,
                wanted,
                account_ids,
                who.key.id,
                who.grant.expires_at if who.grant else None,
            ),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    except BaseException:
        release()
        raise
    response.call_on_close(release)
    return response


class HandedOff(Response):
    """The answer of a request whose socket the WebSocket hub took over: nothing more is
    written, and gunicorn drops its handle of the connection (StopIteration means "close it";
    the hub's duplicate keeps the connection itself open)."""

    def __call__(self, environ, start_response):
        raise StopIteration


@bp.get("/ws")
def websocket_expected() -> Response:
    """A plain GET (no Upgrade): say what this address is for."""
    response = error(426, "this address takes WebSocket connections only (Upgrade: websocket)")
    response.headers["Upgrade"] = "websocket"
    return response


@bp.route("/ws", methods=["GET"], websocket=True)
def websocket() -> Response:
    problem = ws_hub.handshake_problem(request.headers)
    if problem:
        return error(400, problem)
    who = reader()
    wanted, account_ids = who.events(), who.accounts()
    conn = get_db()
    after = cursor(request.args.get("after"))
    if after is None:
        after = event_reader.latest_row(conn)
    api_keys.touch(conn, who.key)
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return error(501, "WebSockets are served by gunicorn (make run, or gunicorn app:app)")
    config = current_app.config["WAHOOK"]
    hub = ws_hub.hub(config.database, stream.serving)
    refused = hub.reserve(who.key.id)
    if refused:
        return busy(refused)
    extra = {"Cache-Control": "no-store"}
    origin = request.headers.get("Origin")
    if origin in config["api"]["allowed_origins"]:
        extra["Access-Control-Allow-Origin"] = origin
    try:
        sock.sendall(ws_hub.switching_protocols(request.headers["Sec-WebSocket-Key"], extra))
        mine = ws_hub.take_over(sock)
    except OSError:
        hub.release(who.key.id)
        return HandedOff()
    expires = who.grant.expires_at if who.grant else None
    hub.add(ws_hub.Client(mine, who.key.id, after, wanted, frozenset(account_ids), expires))
    return HandedOff()


@bp.post("/stream-tokens")
def mint_stream_token() -> Response:
    """A stream token for a browser page (see stream_tokens.py)."""
    key = authorize("read")
    raw = webhook.body_of(request.environ, MAX_BODY_BYTES)
    if raw is None:
        raise ApiError(413, "body larger than 1 MiB")
    try:
        body = webhook.DECODER.decode(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "body is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object: {"ttl_seconds": 900, "events": [], "accounts": []}')
    try:
        ttl, events, account_ids = stream_tokens.read_request(body)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    grant = stream_tokens.grant_for(key, ttl, events, account_ids)
    api_keys.touch(get_db(), key)
    token = stream_tokens.encode(current_app.config["SECRET_KEY"], grant)
    return answer({"token": token, "expires_at": grant.expires_at})
