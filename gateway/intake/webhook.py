"""Meta intake: the verification GET and the signed webhook POST.

A POST gets its 200 only after the raw body, the events drawn from it and their
deliveries are committed in one transaction; then a worker is woken. If the commit
fails Meta gets a 503 and retries; if Redis is down Meta still gets its 200.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import secrets
import time
from functools import partial

from flask import Blueprint, Response, current_app, request

from gateway.delivery import doorbell
from gateway.intake import meta_parser as meta_events
from gateway.intake import storing
from gateway.intake.event_catalog import search_columns
from gateway.media import links
from gateway.storage import db, groupcommit
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


def mac(key: str, raw: bytes) -> bytes:
    """HMAC-SHA256 of `raw` with `key`, as Meta signs a body: OpenSSL's one-shot call, without
    building an HMAC object in Python (the intake checks two keys on every POST)."""
    return hmac.digest(key.encode("utf-8"), raw, "sha256")


def meta_signature(app_secret: str, raw: bytes) -> str:
    """The X-Hub-Signature-256 value Meta sends with `raw` (simulate and the benchmark sign with it)."""
    return "sha256=" + mac(app_secret, raw).hex()


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
    given = bytes.fromhex(match.group(1))
    meta_ok = hmac.compare_digest(mac(app_secret or "-", raw), given) and bool(app_secret)
    local_ok = hmac.compare_digest(mac(local_key or "-", raw), given) and bool(local_key)
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


def store(database: str, raw: bytes, body: dict, drawn: list, received_at: float, simulated: bool = False) -> int:
    """Write the webhook, its new events and their deliveries in one transaction (storing.py),
    and return once it is committed: how many deliveries were created. On SQLite that
    transaction is shared with the other webhooks this process receives at the same moment
    (groupcommit.py); this webhook's writes stand or fall alone within it.
    """
    arrival = arrival_of(raw, body, drawn, received_at, simulated)
    together = (storing.write_together, arrival) if arrival.plain else None
    # One transaction with the other webhooks arriving now (groupcommit.py); back once it is committed.
    new_names, made = groupcommit.run(database, partial(storing.write_one, arrival), together)
    log.info(
        "webhook stored: %d new events, %d deliveries", len(new_names), made, extra={"webhook_id": arrival.public_id}
    )
    return made


def arrival_of(raw: bytes, body: dict, drawn: list, received_at: float, simulated: bool = False) -> storing.Arrival:
    """What storing the webhook `raw` (parsed: `body`, its events: `drawn`) needs that the database
    does not know, made here, before the write lock is taken."""
    fields = sorted(
        {
            c["field"]
            for e in meta_events.as_list(body.get("entry"))
            if isinstance(e, dict)
            for c in meta_events.as_list(e.get("changes"))
            if isinstance(c, dict) and isinstance(c.get("field"), str)
        }
    )
    return storing.Arrival(
        public_id=webhook_public_id(received_at),
        received_at=received_at,
        object=meta_events.storable(str(body.get("object", ""))[:100]),
        fields=meta_events.storable(",".join(fields)[:500]),
        raw=raw,
        simulated=simulated,
        drawn=drawn,
        encoded=[storing.encode_event(event.body) for event in drawn],
        columns=[search_columns(event.name, event.body) for event in drawn],
        statuses=[(e.body["message_id"], e.body["status"]) for e in drawn if e.name == "message.status_updated"],
    )


def webhook_public_id(received_at: float) -> str:
    """A new `whk_` id: the time in milliseconds, then 48 random bits. Ids made one after the
    other sort together, so each goes next to the last in the UNIQUE index on them: a batch of
    webhooks changes one page of it, not one each (a page written is a page the commit writes)."""
    return f"whk_{int(received_at * 1000) % (1 << 48):012x}{secrets.token_hex(6)}"
