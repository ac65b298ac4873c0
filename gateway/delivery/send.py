"""Delivering one batch of deliveries: sign, send, and decide what each outcome means.

A failed attempt is data, not an exception: its status code, error, duration and the
start of the response are stored on an `attempts` row and on the delivery, and the
delivery moves to `retrying` (next attempt after the next `retry_schedule` delay) or,
after the last one, to `failed`, where it waits for a redelivery.

Every write to `deliveries` (claims, leases, state changes) is delivery_states.py's; this module
signs and sends and says which state each delivery moves to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from gateway.delivery import accounts, delivery_states, endpoints, leases, outages, outbox
from gateway.intake.event_catalog import iso, search_columns
from gateway.net import safe_http
from gateway.ops import config_drift
from gateway.storage import concurrency, db
from gateway.storage.db import transaction

USER_AGENT = "Wahook-Webhook/1.0"
# Past the attempt's own timeout, time to write its result before another worker may take it.
LEASE_MARGIN = 10
MAX_RETRY_AFTER = 3600
RESPONSE_KEEP = 1024


@dataclass
class Outcome:
    """What one attempt came to, as stored and as shown."""

    ok: bool
    status_code: int | None
    duration_ms: int
    error: str
    response_body: str = ""
    retry_after: float | None = None
    permanent: bool = False

    def summary(self) -> dict:
        return {
            "ok": self.ok,
            "status_code": self.status_code,
            "duration_ms": self.duration_ms,
            "error": self.error or None,
        }


def signature_headers(secrets_: str | list[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Both signatures of SPEC section 5 for one attempt.

    With several secrets (the new one first, then the one a rotation replaced, while their
    overlap lasts) `webhook-signature` carries one `v1,` signature per secret, space separated,
    as Standard Webhooks allows; `X-Webhook-Signature` is made with the first (newest) only.
    """
    keys = [secrets_] if isinstance(secrets_, str) else secrets_
    stamp = str(timestamp).encode("ascii")
    plain = hmac.new(keys[0].encode("utf-8"), stamp + b"." + body, hashlib.sha256).hexdigest()
    signed = message_id.encode("utf-8") + b"." + stamp + b"." + body
    standard = " ".join(
        "v1," + base64.b64encode(hmac.new(endpoints.secret_key_bytes(key), signed, hashlib.sha256).digest()).decode()
        for key in keys
    )
    return {
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": plain,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
    }


def payloads(conn: db.Connection, deliveries: list[db.Row], account_ids: list[str] = ()) -> dict[int, bytes]:
    """The exact bytes to POST for each delivery: the event's JSON, or the original Meta body for
    meta format (only the entries of `account_ids` when given: accounts.trim_meta). Two
    queries for a whole batch: {delivery id: bytes}, pruned ones left out."""
    wanted: dict[tuple[str, int], list[int]] = {}
    for delivery in deliveries:
        source = (
            ("events", delivery["event_id"])
            if delivery["event_id"] is not None
            else ("webhooks", delivery["webhook_id"])
        )
        if source[1] is not None:
            wanted.setdefault(source, []).append(delivery["id"])
    found: dict[int, bytes] = {}
    for table in ("events", "webhooks"):
        ids = [source_id for kind, source_id in wanted if kind == table]
        if not ids:
            continue
        marks = ",".join("?" * len(ids))
        for source_id, body in conn.execute(f"SELECT id, body FROM {table} WHERE id IN ({marks})", ids):  # noqa: S608
            data = body.encode("utf-8") if table == "events" else accounts.trim_meta(bytes(body), account_ids)
            for delivery_id in wanted[(table, source_id)]:
                found[delivery_id] = data
    return found


def build_headers(endpoint: db.Row, delivery: db.Row, body: bytes) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Webhook-Event": delivery["event_name"],
        "X-Webhook-Id": delivery["message_id"],
        **signature_headers(
            endpoints.signing_secrets(endpoint, time.time()), delivery["message_id"], int(time.time()), body
        ),
    }
    if endpoint["bearer_token"]:
        headers["Authorization"] = f"Bearer {endpoint['bearer_token']}"
    return headers


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit() alone also accepts "²", which float() refuses
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def send(
    sender: safe_http.Sender, endpoint: db.Row, delivery: db.Row, body: bytes, timeout: float, config=None
) -> Outcome:
    """One HTTP attempt; every way it can go wrong comes back as an Outcome. With `config` (the
    one the sender's rules came from), a refusal by a delivery rule says so when the config file
    changed that rule since (config_drift)."""
    started = time.monotonic()
    try:
        response = sender.post(
            endpoint["url"], body, build_headers(endpoint, delivery, body), timeout, local=bool(endpoint["local"])
        )
    except safe_http.DeliveryError as exc:
        error = config_drift.refusal(config, exc.message, exc.rule, exc.hint) if config is not None else exc.message
        return Outcome(False, None, int((time.monotonic() - started) * 1000), error, permanent=exc.permanent)
    code = response.status_code
    text = response.body[:RESPONSE_KEEP].decode("utf-8", errors="replace")
    if 200 <= code < 300:
        return Outcome(True, code, response.duration_ms, "", text)
    error = f"HTTP {code}"
    if 300 <= code < 400:
        location = response.headers.get("Location", "")
        error += f": redirect to {location[:200] or '?'} not followed"
    retry_after = None
    if code in (429, 503):
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    return Outcome(False, code, response.duration_ms, error, text, retry_after)


def next_step(config, delivery: db.Row, outcome: Outcome, now: float) -> tuple[str, int, float]:
    """(state, attempts in this cycle, next attempt time) after `outcome`."""
    attempts = delivery["attempts"] + 1
    if outcome.ok:
        return "delivered", attempts, now
    delay = leases.retry_delay(
        attempts, config["delivery"]["retry_schedule"], outcome.permanent or outcome.status_code == 410
    )
    if delay is None:
        return "failed", attempts, now
    if outcome.retry_after is not None:
        # Retry-After may push the retry later, never sooner, and never past an hour.
        delay = max(delay, min(outcome.retry_after, MAX_RETRY_AFTER))
    return "retrying", attempts, now + delay


def record(conn: db.Connection, config, owner: str, results: list[tuple[db.Row, Outcome]]) -> None:
    """Store the attempts and move each delivery on, in one transaction for the batch."""
    now = time.time()
    gone: dict[int, str] = {}
    with concurrency.pipelined_transaction(conn):
        sent = []
        for delivery, outcome in results:
            delivery_states.record_attempt(conn, delivery, now - outcome.duration_ms / 1000, outcome)
            state, attempts, next_at = next_step(config, delivery, outcome, now)
            moved = delivery_states.finish_later(conn, delivery["id"], owner, state, attempts, next_at, outcome)
            sent.append((delivery, outcome, state, attempts, moved))
            if outcome.status_code == 410 and delivery["endpoint_id"] is not None:
                gone[delivery["endpoint_id"]] = f"receiver answered 410 Gone at {iso(now)}"
        # Read only now: on PostgreSQL the whole batch went in one round trip.
        finished = [(d, o, state, attempts) for d, o, state, attempts, moved in sent if moved.fetchone() is not None]
        for endpoint_id, reason in gone.items():
            endpoints.mark_disabled(conn, endpoint_id, reason)
            # The rest of our batch: mark_disabled leaves leased deliveries to their owner, us.
            delivery_states.fail_leased(conn, owner, f"endpoint disabled: {reason}", endpoint_id=endpoint_id)
        if results:
            outages.after_batch(conn, config, results[0][0]["endpoint_id"], finished, now)


def fail_unsendable(conn: db.Connection, owner: str, deliveries: list[db.Row], reason: str) -> None:
    """End deliveries that cannot be sent at all (endpoint deleted or disabled, payload pruned)."""
    with transaction(conn):
        delivery_states.fail_leased(conn, owner, reason, ids=[d["id"] for d in deliveries])


def deliver_claimed(
    conn: db.Connection,
    config,
    sender: safe_http.Sender,
    endpoint_id: int | None,
    claimed: list[db.Row],
    owner: str,
) -> list[tuple[db.Row, Outcome]]:
    """Send and record deliveries of one endpoint that `owner` has leased, one after another.

    The lease covers one attempt; before each further attempt of a slow batch the whole
    batch's lease is extended, so a worker killed mid-batch holds it up for one timeout at
    most, and no delivery already sent can be taken by another worker before it is recorded.
    """
    if not claimed:
        return []
    timeout = float(config["delivery"]["timeout"])
    lease = timeout + LEASE_MARGIN
    lease_until = min(d["lease_until"] for d in claimed)  # as claimed, whatever lease was asked for
    endpoint = endpoints.get(conn, endpoint_id) if endpoint_id is not None else None
    if endpoint is None or not endpoint["enabled"]:
        why = (
            "endpoint deleted"
            if endpoint is None
            else f"endpoint disabled: {endpoint['disabled_reason'] or 'by the admin'}"
        )
        fail_unsendable(conn, owner, claimed, why)
        return []
    bodies = payloads(conn, claimed, json.loads(endpoint["accounts"] or "[]"))
    results = []
    for delivery in claimed:
        if time.time() + timeout + 1 > lease_until:
            # Every delivery of the batch, sent ones too: they are recorded only at the end.
            lease_until = time.time() + lease
            delivery_states.extend_lease(conn, [d["id"] for d in claimed], owner, lease_until)
        body = bodies.get(delivery["id"])
        if body is None:
            fail_unsendable(conn, owner, [delivery], "event no longer stored (pruned)")
            continue
        outcome = send(sender, endpoint, delivery, body, timeout, config)
        results.append((delivery, outcome))
        if outcome.status_code == 410:
            break  # the endpoint is gone: record() fails the rest of the batch with it
    record(conn, config, owner, results)
    return results


def send_test(conn: db.Connection, config, endpoint_id: int) -> Outcome:
    """Deliver a signed `webhook.test` event to one endpoint now, in this process.

    It is stored like any delivery (so it shows on the monitor) but gets no retries:
    the admin is watching and can press the button again.
    """
    endpoint = endpoints.get(conn, endpoint_id)
    if endpoint is None:
        raise KeyError(endpoint_id)
    now = time.time()
    event_id = "evt_test_" + secrets.token_hex(10)
    body = {
        "event": "webhook.test",
        "event_id": event_id,
        "timestamp": int(now),
        "received_at": iso(now),
        "message": "This is a test event from wahook. If you can read it, deliveries work.",
    }
    owner = "test-" + secrets.token_hex(4)
    delivery = config["delivery"]
    timeout = float(delivery["timeout"])
    text = json.dumps(body, separators=(",", ":"))
    event = outbox.NewEvent(event_id, "webhook.test", None, text, search_columns("webhook.test", body))
    with transaction(conn):
        event_row = outbox.add_event_row(conn, event, now)
        # Leased from the start: a worker pumping meanwhile must not send it too.
        test_row = outbox.add_leased(
            conn, endpoint_id, endpoint["url"], event_row, event, owner, now + timeout + LEASE_MARGIN
        )
    sender = safe_http.Sender(allow_http=delivery["allow_http"], allow_private=delivery["allow_private_urls"])
    try:
        outcome = send(sender, endpoint, test_row, payloads(conn, [test_row])[test_row["id"]], timeout, config)
        # A test has no retry cycle: pretend the schedule is empty so a failure is final.
        record(conn, {"delivery": {**delivery, "retry_schedule": []}}, owner, [(test_row, outcome)])
    finally:
        sender.close()
    return outcome
