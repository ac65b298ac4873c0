"""Meta intake: the verification GET and the signed webhook POST.

A POST gets its 200 only after the raw body, the events drawn from it and their
deliveries are committed in one transaction; then a worker is woken. If the commit
fails Meta gets a 503 and retries; if Redis is down Meta still gets its 200.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time

from flask import Blueprint, Response, current_app, request

from gateway.delivery import doorbell, outbox
from gateway.intake import contacts, status_order
from gateway.intake import meta_parser as meta_events
from gateway.intake.event_catalog import search_columns
from gateway.media import links
from gateway.media import store as media_store
from gateway.storage import concurrency, db, groupcommit
from gateway.storage.db import transaction

log = logging.getLogger("wahook.intake")

# Meta's callback URL path; run.py prints it, simulate and the benchmark post to it.
PATH = "/api/webhooks/whatsapp"
bp = Blueprint("intake", __name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
DRAIN_LIMIT = 64 * 1024 * 1024  # past this an oversized chunked body is cut off, not read
SIGNATURE_RE = re.compile(r"sha256=([0-9a-fA-F]{64})")


def text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


@bp.get(PATH)
def verify() -> Response:
    """Meta's subscription check: echo hub.challenge when the verify token matches."""
    mode = request.args.get("hub.mode")
    token = request.args.get("hub.verify_token")
    challenge = request.args.get("hub.challenge")
    if mode is None or token is None or challenge is None:
        return text("hub.mode, hub.verify_token and hub.challenge are required", 400)
    expected = current_app.config["WAHOOK"]["meta"]["verify_token"]
    # An empty configured token refuses everything, so a fresh install is not open.
    same = hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))
    if mode == "subscribe" and expected and same:
        return text(challenge, 200)
    return text("verification refused", 403)


def meta_signature(app_secret: str, raw: bytes) -> str:
    """The X-Hub-Signature-256 value Meta sends with `raw` (simulate and the benchmark sign with it)."""
    return "sha256=" + hmac.new(app_secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()


def signature_problem(raw: bytes, header: str | None, app_secret: str, local_key: str = "") -> tuple[str | None, bool]:
    """Why the X-Hub-Signature-256 header does not prove Meta (or `simulate`) sent `raw` (None
    if it does), and whether it was signed with the local simulate key rather than by Meta.

    `local_key` is the install's simulate key (see runstate): a body signed with it is
    accepted whether or not the App secret is set, so `simulate` works on a fresh install
    and keeps working after. Both comparisons run every time, in constant time.
    """
    if not header:
        return ("missing signature" if app_secret else "no app_secret configured"), False
    match = SIGNATURE_RE.fullmatch(header.strip())
    if not match:
        return ("malformed signature" if app_secret else "no app_secret configured"), False
    given = "sha256=" + match.group(1).lower()
    meta_ok = hmac.compare_digest(meta_signature(app_secret or "-", raw), given) and bool(app_secret)
    local_ok = hmac.compare_digest(meta_signature(local_key or "-", raw), given) and bool(local_key)
    if meta_ok or local_ok:
        return None, not meta_ok
    return ("wrong signature" if app_secret else "no app_secret configured"), False


def count_rejection(database: str, reason: str) -> None:
    """Count a refused POST for the monitor; a failure to count must not change the 401."""
    try:
        conn = db.connection(database)
        with transaction(conn):
            conn.execute(
                "INSERT INTO rejections (minute, reason, count) VALUES (?, ?, 1)"
                " ON CONFLICT (minute, reason) DO UPDATE SET count = rejections.count + 1",
                (int(time.time() // 60), reason),
            )
    except db.Error as exc:
        log.warning("could not count a rejected signature: %s", exc)


def read_chunked(stream, limit: int) -> bytes | None:
    """A body of no announced length, or None when it is over `limit` bytes: read up to one byte
    past the limit, and when longer the rest is drained, within a bound, so the client gets to
    read its 413."""
    raw = stream.read(limit + 1)
    if len(raw) <= limit:
        return raw
    drained = 0
    while drained < DRAIN_LIMIT and (chunk := stream.read(64 * 1024)):
        drained += len(chunk)
    return None


def body_of(environ: dict, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The raw body of the request `environ` describes, or None when it is over `limit` bytes.

    Read from the WSGI environ, not through Flask, as Meta's POST is answered ahead of Flask
    (wsgi.py). A chunked body has no length to check first: see read_chunked (werkzeug's limit
    would hand back its first `limit` bytes as if that were all, then refused as a bad signature).
    """
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        length = None
    if length is None or length < 0:
        # No length: a chunked body (gunicorn says the stream ends), else an empty one, as werkzeug reads it.
        return read_chunked(environ["wsgi.input"], limit) if environ.get("wsgi.input_terminated") else b""
    if length > limit:
        return None
    return environ["wsgi.input"].read(length)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    number = float(literal)
    if math.isinf(number):
        raise ValueError(f"{literal} is out of range")
    return number


# NaN, Infinity and 1e999 parse in Python but could not be written back as JSON to receivers.
# One decoder for every request: json.loads with options would build a new one each time.
DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)


@bp.post(PATH)
def receive() -> Response:
    """Meta's POST; served by wsgi.py ahead of Flask, so this view runs only where that is not in front."""
    status, answer = respond(request.environ, current_app.config)
    return text(answer, status)


def respond(environ: dict, app_config) -> tuple[int, str]:
    """(status, text) for one Meta POST given as its WSGI environ; `app_config` is the Flask
    app's config (WAHOOK, WAHOOK_SIMULATE_KEY)."""
    config = app_config["WAHOOK"]
    raw = body_of(environ)
    if raw is None:
        return 413, "body larger than 4 MiB"
    # From here a thread about to commit other webhooks waits a moment for this one
    # (groupcommit.coming); not while the body arrives, which a slow client can make long.
    with groupcommit.coming(config.database):
        return accept(config, raw, environ, app_config.get("WAHOOK_SIMULATE_KEY", ""))


def accept(config, raw: bytes, environ: dict, simulate_key: str) -> tuple[int, str]:
    """Check, parse and store one Meta POST whose body is `raw`; its answer."""
    problem, simulated = signature_problem(
        raw, environ.get("HTTP_X_HUB_SIGNATURE_256"), config["meta"]["app_secret"], simulate_key
    )
    if problem:
        count_rejection(config.database, problem)
        return 401, f"signature refused: {problem}"
    try:
        body = DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return 400, "body is not UTF-8 JSON"
    if not isinstance(body, dict):
        return 400, "body is not a JSON object"

    received_at = time.time()
    try:
        drawn = meta_events.parse(body, received_at)
    except Exception:
        # A parser bug must not cost Meta's retries or the body: keep it raw, with no events.
        log.exception("could not draw events from a webhook; stored raw")
        drawn = []
    links.attach(drawn, config, received_at, environ)
    try:
        new_deliveries = store(config.database, raw, body, drawn, received_at, simulated)
    except db.Error as exc:
        log.error("could not store a webhook, answering 503 so Meta retries: %s", exc)
        return 503, "storage unavailable, retry later"
    if new_deliveries:
        doorbell.wake(config)
    return 200, "ok"


def encode_event(body: dict) -> str:
    """An event as compact JSON, readable UTF-8; a lone surrogate stays escaped (see events.storable)."""
    return meta_events.storable(json.dumps(body, ensure_ascii=False, separators=(",", ":")))


def store(database: str, raw: bytes, body: dict, drawn: list, received_at: float, simulated: bool = False) -> int:
    """Write the webhook, its new events and their deliveries in one transaction, and return
    once it is committed. On SQLite that transaction is shared with the other webhooks this
    process receives at the same moment (groupcommit.py); this webhook's writes stand or fall
    alone within it.

    Returns how many deliveries were created. A duplicate event (its dedupe key is
    already stored) is skipped by the UNIQUE constraint, which holds even when two web
    processes commit the same update at once.

    This runs once per Meta POST while the write lock is held, so it does the little it
    must: the webhook row is written with its event count already in, and corrected only
    when some events turn out to be duplicates or a message brought contact events; the
    outbox reads each endpoint's filter once. Contact events and a status's `stale` are
    decided here, under the lock, so two web processes cannot both act on the same old state.
    On PostgreSQL the statements go in a few round trips (concurrency.pipelined_transaction): a status
    webhook takes 3, BEGIN and COMMIT included.
    """
    fields = sorted(
        {
            c["field"]
            for e in meta_events.as_list(body.get("entry"))
            if isinstance(e, dict)
            for c in meta_events.as_list(e.get("changes"))
            if isinstance(c, dict) and isinstance(c.get("field"), str)
        }
    )
    webhook_public_id = "whk_" + secrets.token_hex(12)
    encoded = [encode_event(event.body) for event in drawn]
    columns = [search_columns(event.name, event.body) for event in drawn]  # read before the lock, not under it
    statuses = [(e.body["message_id"], e.body["status"]) for e in drawn if e.name == "message.status_updated"]

    def write(conn: db.Connection) -> tuple[list[str], int]:
        # Intakes about the same customer or message take turns from here (SQLite's write lock
        # makes every intake do so), so a contact or a status of it in another transaction is seen.
        concurrency.lock_keys(conn, guarded_keys(drawn))
        inserted = conn.execute(
            "INSERT INTO webhooks (webhook_id, received_at, object, fields, event_count, body, simulated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                webhook_public_id,
                received_at,
                meta_events.storable(str(body.get("object", ""))[:100]),
                meta_events.storable(",".join(fields)[:500]),
                len(drawn),
                raw,
                1 if simulated else 0,
            ),
        )
        # Sent before anything is read: on PostgreSQL these and the lock are one round trip.
        stored_statuses = status_order.look_up(conn, statuses)
        to = outbox.targets(conn)
        webhook_id = inserted.fetchone()[0]
        known = {row[0] for row in stored_statuses} if stored_statuses is not None else set()
        new = settle(conn, drawn, encoded, columns, received_at, known)
        new_names, made = outbox.add_events(conn, new, received_at, webhook=(webhook_id, webhook_public_id), to=to)
        media_store.track(conn, drawn, webhook_id, received_at)
        if len(new_names) != len(drawn):
            conn.execute("UPDATE webhooks SET event_count = ? WHERE id = ?", (len(new_names), webhook_id))
        return new_names, made

    # One transaction with the other webhooks arriving now (groupcommit.py); back once it is committed.
    new_names, made = groupcommit.run(database, write)
    log.info(
        "webhook stored: %d new events, %d deliveries", len(new_names), made, extra={"webhook_id": webhook_public_id}
    )
    return made


def guarded_keys(drawn: list) -> list[str]:
    """What this body's intake reads and must see settled by any other intake first: each
    customer a message names (by phone and by user id, as contacts.find looks them up) and
    each message a status is about. See concurrency.lock_keys."""
    keys = []
    for event in drawn:
        seen = event.contact
        if seen is not None:
            phone_number_id = event.body["phone_number_id"]
            keys += [f"contact:{phone_number_id}:wa:{seen.wa_id}"] if seen.wa_id else []
            keys += [f"contact:{phone_number_id}:user:{seen.user_id}"] if seen.user_id else []
        if event.name == "message.status_updated" and event.body["message_id"]:
            keys.append(f"status:{event.body['message_id']}")
    return keys


def settle(
    conn: db.Connection, drawn: list, encoded: list[str], columns: list, now: float, known: set[str]
) -> list[outbox.NewEvent]:
    """The events to store, finished with what only the database knows. Call inside the transaction.

    Each message's contact events go just ahead of it (a lower event id); a status gets its
    `stale` and `current_status` (from `known`, the stored statuses status_order.look_up
    found), and is encoded again only when they differ from the parser's guess (in order, the
    usual case, it is not). `encoded` and `columns` are each drawn event's JSON text and search
    columns, made before the transaction: they need nothing the database knows.
    """
    new = []
    earlier: dict[str, str] = {}  # the highest status per message so far in this body
    for event, text_body, searched in zip(drawn, encoded, columns, strict=True):
        if event.contact is not None:
            for found in contacts.draw(conn, event, now):
                text_found, found_columns = encode_event(found.body), search_columns(found.name, found.body)
                new.append(
                    outbox.NewEvent(found.body["event_id"], found.name, found.dedupe_key, text_found, found_columns)
                )
        if event.name == "message.status_updated":
            body = event.body
            message_id, status = body["message_id"], body["status"]
            stale, current = status_order.settle(conn, message_id, status, earlier.get(message_id), known)
            earlier[message_id] = status_order.highest([current, status]) or earlier.get(message_id) or ""
            if stale or current != status:
                text_body = encode_event({**body, "stale": stale, "current_status": current})
        new.append(outbox.NewEvent(event.body["event_id"], event.name, event.dedupe_key, text_body, searched))
    return new
