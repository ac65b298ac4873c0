"""Delivery end to end: real Redis, a real RQ SimpleWorker running drain jobs, the worker's
dispatcher and sweeper, and real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time

import pytest
from rq import SimpleWorker
from standardwebhooks.webhooks import Webhook

import worker
from conftest import text_message, wait_until
from gateway.delivery import delivery_states, doorbell, endpoints, leases, send
from gateway.net import safe_http
from gateway.storage import db
from gateway.storage.db import get_db
from receiver import Behaviour

pytestmark = pytest.mark.engines

# These tests follow one message through delivery; a customer's first message also makes a
# contact.created (tests/intake/test_contacts.py), kept out here so each message is one delivery.
MESSAGES = "message.received"


def run_rq_burst(app) -> None:
    """Run queued drain jobs the way RQ's own tests do: a SimpleWorker in burst mode."""
    connection = doorbell.redis_connection(app.config["WAHOOK"])
    SimpleWorker([doorbell.QUEUE_NAME], connection=connection).work(burst=True)


def delivery_row(conn, delivery_id: int = 1):
    return conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()


def attempts_of(conn, delivery_id: int = 1):
    return conn.execute("SELECT * FROM attempts WHERE delivery_id = ? ORDER BY id", (delivery_id,)).fetchall()


# --- what arrives ---------------------------------------------------------------------------------


def test_event_arrives_signed_with_every_header(app, post_webhook, receiver, add_endpoint, conn):
    endpoint = add_endpoint(receiver.url, events=MESSAGES, bearer_token="tok-123")
    dispatcher = worker.Dispatcher(app.config["WAHOOK"])
    doorbell.set_drain_handler(dispatcher.on_drain_job)
    try:
        assert post_webhook(text_message("wamid.SIGNED")).status_code == 200
        run_rq_burst(app)  # the drain job queued by the intake
        (got,) = receiver.wait_for(1)
    finally:
        dispatcher.stop(grace=1)
        doorbell.set_drain_handler(None)
    body = json.loads(got.body)
    assert body["event"] == "message.received" and body["message_id"] == "wamid.SIGNED"
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "Wahook-Webhook/1.0"
    assert headers["x-webhook-event"] == "message.received"
    assert headers["x-webhook-id"] == body["event_id"] == headers["webhook-id"]
    assert headers["authorization"] == "Bearer tok-123"
    stamp = headers["x-webhook-timestamp"]
    assert abs(int(stamp) - time.time()) < 10
    expected = hmac.new(endpoint["secret"].encode(), stamp.encode() + b"." + got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-webhook-signature"], expected)
    # A library nobody here wrote accepts the Standard Webhooks signature.
    assert Webhook(endpoint["secret"]).verify(got.body, headers)["event_id"] == body["event_id"]
    assert delivery_row(conn)["state"] == "delivered"


def test_standard_signature_fails_for_another_secret(app, post_webhook, receiver, add_endpoint, running_worker):
    add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    (got,) = receiver.wait_for(1)
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        Webhook(endpoints.generate_secret()).verify(got.body, {k.lower(): v for k, v in got.headers.items()})


def test_meta_format_sends_the_original_body_byte_for_byte(post_webhook, receiver, add_endpoint, running_worker, conn):
    add_endpoint(receiver.url, events=MESSAGES, format="meta")
    raw = b'{"object": "whatsapp_business_account",\n "entry": ' + json.dumps(text_message()["entry"]).encode() + b"}"
    assert post_webhook(raw).status_code == 200
    (got,) = receiver.wait_for(1)
    assert got.body == raw
    assert got.headers["X-Webhook-Event"] == "whatsapp.meta"
    assert got.headers["X-Webhook-Id"] == conn.execute("SELECT webhook_id FROM webhooks").fetchone()[0]


def test_no_bearer_header_without_a_token(post_webhook, receiver, add_endpoint, running_worker):
    add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    (got,) = receiver.wait_for(1)
    assert "Authorization" not in got.headers


def test_event_filter_selects_what_an_endpoint_gets(post_webhook, make_receiver, add_endpoint, running_worker, conn):
    everything, statuses_only = make_receiver(), make_receiver()
    add_endpoint(everything.url)
    add_endpoint(statuses_only.url, events="message.status_updated")
    post_webhook(text_message("wamid.ONE"))
    got = everything.wait_for(2)
    assert [json.loads(r.body)["event"] for r in got] == ["contact.created", "message.received"]
    time.sleep(0.3)
    assert statuses_only.requests == []
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 2


def test_huge_event_is_delivered_whole(post_webhook, receiver, add_endpoint, running_worker, conn):
    add_endpoint(receiver.url, events=MESSAGES)
    text = "é" * (1_500_000)  # 3 MB of UTF-8, Meta's limit
    raw = json.dumps(text_message("wamid.HUGE", text=text), ensure_ascii=False).encode()
    assert post_webhook(raw).status_code == 200
    (got,) = receiver.wait_for(1, timeout=20)
    assert json.loads(got.body)["text"] == text
    assert got.body == conn.execute("SELECT body FROM events WHERE name = 'message.received'").fetchone()[0].encode()


# --- failures and retries ---------------------------------------------------------------------------------


def test_failures_retry_on_schedule_then_succeed(
    slow_retries, post_webhook, receiver, add_endpoint, running_worker, conn
):
    receiver.script = [Behaviour(status=500), Behaviour(status=503, body=b"busy")]
    add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    got = receiver.wait_for(3, timeout=15)
    gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
    assert all(gap >= 1.0 for gap in gaps), gaps  # slow_retries = [1, 1]: never sooner
    assert len({r.headers["X-Webhook-Id"] for r in got}) == 1
    wait_until(lambda: delivery_row(conn)["state"] == "delivered", message="delivered")
    rows = attempts_of(conn)
    assert [r["status_code"] for r in rows] == [500, 503, 200]
    assert rows[1]["response_body"] == "busy" and rows[1]["error"] == "HTTP 503"


def test_exhausted_retries_end_failed_and_redelivery_starts_a_new_cycle(
    post_webhook, receiver, add_endpoint, running_worker, conn, runner
):
    receiver.behaviour = Behaviour(status=500, body=b"x" * 5000)
    add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    receiver.wait_for(3, timeout=15)
    wait_until(lambda: delivery_row(conn)["state"] == "failed", message="failed")
    time.sleep(1.5)
    assert len(receiver.requests) == 3  # 1 attempt + 2 retries, then it stops
    assert len(attempts_of(conn)[0]["response_body"]) == 1024
    receiver.behaviour = Behaviour(status=200)
    result = runner.invoke(args=["deliveries", "retry", "--failed"])
    assert json.loads(result.output) == {"requeued": 1}
    receiver.wait_for(4)
    wait_until(lambda: delivery_row(conn)["state"] == "delivered", message="redelivered")


def test_redirect_is_a_failure_and_not_followed(
    slow_retries, post_webhook, make_receiver, add_endpoint, running_worker, conn
):
    target, redirecting = make_receiver(), make_receiver()
    redirecting.behaviour = Behaviour(status=302, headers={"Location": target.url})
    add_endpoint(redirecting.url, events=MESSAGES)
    post_webhook(text_message())
    redirecting.wait_for(1)
    wait_until(lambda: attempts_of(conn), message="an attempt")
    assert attempts_of(conn)[0]["status_code"] == 302
    assert "not followed" in attempts_of(conn)[0]["error"]
    assert delivery_row(conn)["state"] == "retrying"
    time.sleep(0.3)
    assert target.requests == []


def test_410_disables_the_endpoint(post_webhook, receiver, add_endpoint, running_worker, conn):
    receiver.behaviour = Behaviour(status=410)
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message("wamid.1"))
    receiver.wait_for(1)
    wait_until(lambda: delivery_row(conn)["state"] == "failed", message="failed")
    row = conn.execute("SELECT enabled, disabled_reason FROM endpoints WHERE id = ?", (endpoint["id"],)).fetchone()
    assert row["enabled"] == 0 and "410" in row["disabled_reason"]
    post_webhook(text_message("wamid.2"))
    time.sleep(1.5)
    assert len(receiver.requests) == 1  # no more attempts to a gone endpoint


def test_retry_after_pushes_the_retry_later_never_sooner(post_webhook, receiver, add_endpoint, running_worker, conn):
    receiver.script = [Behaviour(status=429, headers={"Retry-After": "3"})]
    add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    first, second = receiver.wait_for(2, timeout=10)
    assert second.at - first.at >= 3.0


def test_retry_after_is_capped_at_an_hour(post_webhook, receiver, add_endpoint, running_worker, conn):
    receiver.behaviour = Behaviour(status=503, headers={"Retry-After": "999999"})
    add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    receiver.wait_for(1)
    wait_until(lambda: delivery_row(conn)["state"] == "retrying", message="retrying")
    wait = delivery_row(conn)["next_attempt_at"] - time.time()
    assert 3500 < wait <= 3600


def test_timeout_is_a_failed_attempt(app, post_webhook, receiver, add_endpoint, running_worker, conn):
    receiver.script = [Behaviour(delay=3)]  # timeout is 2 s in tests
    add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    wait_until(lambda: attempts_of(conn), timeout=10, message="an attempt")
    first = attempts_of(conn)[0]
    assert first["status_code"] is None and "timed out" in first["error"]
    wait_until(lambda: delivery_row(conn)["state"] == "delivered", timeout=10, message="delivered on retry")


def test_receiver_down_is_retried(post_webhook, add_endpoint, running_worker, conn):
    add_endpoint("http://127.0.0.1:9/hook", events=MESSAGES)  # the discard port: nothing listens
    post_webhook(text_message())
    wait_until(lambda: delivery_row(conn)["state"] == "failed", timeout=10, message="failed")
    rows = attempts_of(conn)
    assert len(rows) == 3 and all("refused" in r["error"] for r in rows)


def test_deleted_endpoint_fails_its_waiting_deliveries(app, post_webhook, receiver, add_endpoint, conn, runner):
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    result = runner.invoke(args=["endpoint", "remove", str(endpoint["id"])])
    assert json.loads(result.output) == {"removed": endpoint["id"]}
    row = delivery_row(conn)
    assert row["state"] == "failed" and row["last_error"] == "endpoint deleted"
    dispatcher = worker.Dispatcher(app.config["WAHOOK"])
    assert dispatcher.pump() == 0
    assert receiver.requests == []


def test_private_address_is_refused_at_send_time(tmp_path, app, post_webhook, receiver, add_endpoint, conn):
    add_endpoint(receiver.url, events=MESSAGES)  # saved while private addresses were allowed
    strict = app.config["WAHOOK"].sections | {
        "delivery": {**app.config["WAHOOK"]["delivery"], "allow_private_urls": False}
    }
    from gateway.config import load_config

    config = load_config(tmp_path / "none.toml", strict)
    dispatcher = worker.Dispatcher(config)
    post_webhook(text_message())
    dispatcher.pump()
    wait_until(lambda: attempts_of(conn), message="an attempt")
    dispatcher.stop(grace=1)
    assert "127.0.0.1" in attempts_of(conn)[0]["error"]
    assert delivery_row(conn)["state"] == "failed"  # refused by policy: retrying cannot help
    assert receiver.requests == []


# --- isolation and at-least-once ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_hanging_endpoint_does_not_hold_back_another(app, post_webhook, make_receiver, add_endpoint, conn):
    hanging, healthy = make_receiver(), make_receiver()
    hanging.behaviour = Behaviour(delay=10)
    add_endpoint(hanging.url, events=MESSAGES)
    add_endpoint(healthy.url, events=MESSAGES)
    slow_config = app.config["WAHOOK"].sections | {"delivery": {**app.config["WAHOOK"]["delivery"], "timeout": 15}}
    from gateway.config import load_config

    dispatcher = worker.Dispatcher(load_config(app.config["WAHOOK"].path, slow_config))
    doorbell.set_drain_handler(dispatcher.on_drain_job)
    sweeper = threading.Thread(target=worker.sweep, args=(dispatcher,), daemon=True)
    sweeper.start()
    try:
        for n in range(5):
            posted = time.time()
            assert post_webhook(text_message(f"wamid.ISO{n}")).status_code == 200
            run_rq_burst(app)
            arrived = healthy.wait_for(n + 1, timeout=5)[-1]
            # Held back, it would wait out the 10 s hang; a busy machine may take a second or two.
            assert arrived.at - posted < hanging.behaviour.delay / 2, f"event {n} took {arrived.at - posted:.2f} s"
        assert hanging.started >= 1 and len(hanging.requests) == 0
    finally:
        dispatcher.stop(grace=0.2)
        doorbell.set_drain_handler(None)


def test_two_dispatchers_never_send_the_same_delivery(app, post_webhook, receiver, add_endpoint, conn):
    add_endpoint(receiver.url, events=MESSAGES)
    for n in range(200):
        post_webhook(text_message(f"wamid.TWO{n}"))
    first, second = worker.Dispatcher(app.config["WAHOOK"]), worker.Dispatcher(app.config["WAHOOK"])
    for _ in range(20):
        first.pump()
        second.pump()
        time.sleep(0.02)
    receiver.wait_for(200, timeout=20)
    assert first.wait_idle() and second.wait_idle()
    first.stop(grace=0.5)
    second.stop(grace=0.5)
    ids = [r.headers["X-Webhook-Id"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 200


def test_flushed_redis_loses_nothing(app, post_webhook, receiver, add_endpoint, running_worker, conn):
    doorbell.set_drain_handler(None)  # no RQ job will ever run: only the sweeper can deliver
    add_endpoint(receiver.url, events=MESSAGES)
    for n in range(5):
        post_webhook(text_message(f"wamid.FLUSH{n}"))
    doorbell.redis_connection(app.config["WAHOOK"]).flushall()
    receiver.wait_for(5, timeout=10)
    wait_until(
        lambda: conn.execute("SELECT count(*) FROM deliveries WHERE state = 'delivered'").fetchone()[0] == 5,
        message="all delivered",
    )


def test_redis_stopped_during_intake_then_back(tmp_path, receiver, conn):
    from app import create_app
    from conftest import instance_sections, sign
    from gateway.delivery import embedded_redis

    data = tmp_path / "own-redis"
    url = embedded_redis.ensure_running(data)
    app = create_app({"config_path": str(tmp_path / "none.toml"), **instance_sections(tmp_path, url)})
    with app.app_context():
        endpoints.create(get_db(), app.config["WAHOOK"], receiver.url)
    embedded_redis.stop(data)
    client = app.test_client()
    for n in range(3):
        raw = json.dumps(text_message(f"wamid.DOWN{n}")).encode()
        assert (
            client.post("/api/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw)}).status_code
            == 200
        )
    embedded_redis.ensure_running(data)
    dispatcher = worker.Dispatcher(app.config["WAHOOK"])
    sweeper = threading.Thread(target=worker.sweep, args=(dispatcher,), daemon=True)
    sweeper.start()
    try:
        receiver.wait_for(3, timeout=10)
    finally:
        dispatcher.stop(grace=0.5)
        embedded_redis.stop(data)


@pytest.mark.slow
def test_worker_killed_mid_attempt_loses_nothing(processes, post_webhook, receiver, add_endpoint, conn):
    receiver.script = [Behaviour(delay=1.5)]
    add_endpoint(receiver.url, events=MESSAGES)
    first = processes.start_worker()
    assert post_webhook(text_message("wamid.KILL")).status_code == 200
    wait_until(lambda: receiver.started >= 1, timeout=15, message="the first attempt to begin")
    os.kill(first.pid, signal.SIGKILL)  # mid-attempt: the receiver is still sleeping
    first.wait()
    assert delivery_row(conn)["lease_owner"] is not None  # the dead worker's lease stands
    processes.start_worker()
    # After the lease (timeout 2 s + margin) runs out, another worker sends it again.
    got = receiver.wait_for(2, timeout=send.LEASE_MARGIN + 15)
    assert got[-1].headers["X-Webhook-Id"] == json.loads(got[-1].body)["event_id"]
    wait_until(lambda: delivery_row(conn)["state"] == "delivered", timeout=10, message="delivered")


# --- the CLI ---------------------------------------------------------------------------------------------


# --- found in review --------------------------------------------------------------------------------------


def test_a_batch_that_slows_down_keeps_its_leases_until_recorded(
    app, post_webhook, receiver, add_endpoint, conn, monkeypatch
):
    # Leases a second long, answers 0.6 s slow: the batch outlives a lease several times over.
    monkeypatch.setattr(send, "LEASE_MARGIN", 0.5)
    receiver.behaviour = Behaviour(delay=0.6)
    add_endpoint(receiver.url, events=MESSAGES)
    for n in range(6):
        post_webhook(text_message(f"wamid.SLOW{n}"))
    config = app.config["WAHOOK"]
    owner = "first"
    claimed = leases.claim_ids(
        conn, "deliveries", [r[0] for r in conn.execute("SELECT id FROM deliveries")], owner, 1.0
    )
    assert len(claimed) == 6
    sender = safe_http.Sender(allow_http=True, allow_private=True)
    batch = threading.Thread(
        target=lambda: send.deliver_claimed(
            db.connect(config.database), config, sender, claimed[0]["endpoint_id"], claimed, owner
        )
    )
    batch.start()
    rival = worker.Dispatcher(config)  # another worker, pumping all the while
    while batch.is_alive():
        rival.pump()
        time.sleep(0.05)
    batch.join()
    rival.wait_idle()
    rival.stop(grace=1)
    sender.close()
    ids = [r.headers["X-Webhook-Id"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 6


def test_unreadable_retry_after_is_still_a_recorded_failure(
    slow_retries, post_webhook, receiver, add_endpoint, running_worker, conn
):
    receiver.behaviour = Behaviour(status=503, headers={"Retry-After": "²"})
    add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    wait_until(lambda: attempts_of(conn), message="an attempt")
    assert attempts_of(conn)[0]["status_code"] == 503
    assert delivery_row(conn)["state"] == "retrying"


def test_410_fails_the_rest_of_the_batch_at_once(app, post_webhook, receiver, add_endpoint, conn):
    receiver.behaviour = Behaviour(status=410)
    add_endpoint(receiver.url, events=MESSAGES)
    for n in range(3):
        post_webhook(text_message(f"wamid.GONE{n}"))
    dispatcher = worker.Dispatcher(app.config["WAHOOK"])
    dispatcher.pump()
    wait_until(
        lambda: conn.execute("SELECT count(*) FROM deliveries WHERE state = 'failed'").fetchone()[0] == 3,
        timeout=5,
        message="the whole batch to fail with its endpoint",
    )
    dispatcher.stop(grace=1)
    assert len(receiver.requests) == 1


def test_410_in_the_middle_of_a_claimed_batch_fails_the_rest(app, post_webhook, receiver, add_endpoint, conn):
    receiver.behaviour = Behaviour(status=410)
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    for n in range(3):
        post_webhook(text_message(f"wamid.MID{n}"))
    config = app.config["WAHOOK"]
    claimed = delivery_states.claim_next(conn, endpoint["id"], "w", 30, 32)
    sender = safe_http.Sender(allow_http=True, allow_private=True)
    send.deliver_claimed(conn, config, sender, endpoint["id"], claimed, "w")
    sender.close()
    rows = conn.execute("SELECT state, lease_owner, last_error FROM deliveries").fetchall()
    assert [(r["state"], r["lease_owner"]) for r in rows] == [("failed", None)] * 3
    assert all("410" in r["last_error"] for r in rows)
    assert len(receiver.requests) == 1


def test_the_lane_of_deleted_endpoints_takes_only_their_deliveries(post_webhook, receiver, add_endpoint, conn, runner):
    """A delivery a worker held when its endpoint was deleted stays open with no endpoint. Once
    that lease runs out, the lane for deleted endpoints (endpoint None) claims it, and nothing
    of the endpoints that still exist."""
    kept = add_endpoint(receiver.url, events=MESSAGES)
    gone = add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    held = delivery_states.claim_next(conn, gone["id"], "w", 3.0, 32)
    assert len(held) == 1
    runner.invoke(args=["endpoint", "remove", str(gone["id"])])
    row = conn.execute("SELECT state, endpoint_id FROM deliveries WHERE id = ?", (held[0]["id"],)).fetchone()
    assert (row["state"], row["endpoint_id"]) == ("pending", None)  # left to the worker holding it
    orphans: list = []
    wait_until(
        lambda: orphans.extend(delivery_states.claim_next(conn, None, "w2", 30, 32)) or orphans,
        timeout=15,
        message="the deleted endpoint's lane to claim the delivery once the lease ran out",
    )
    assert [r["id"] for r in orphans] == [held[0]["id"]]
    others = delivery_states.claim_next(conn, kept["id"], "w2", 30, 32)
    assert [r["endpoint_id"] for r in others] == [kept["id"]]


def test_send_test_is_not_taken_by_a_worker_meanwhile(app, receiver, add_endpoint, conn):
    receiver.behaviour = Behaviour(delay=0.3)
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    dispatcher = worker.Dispatcher(app.config["WAHOOK"])
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            dispatcher.pump()

    pumping = threading.Thread(target=pump)
    pumping.start()
    try:
        outcomes = [send.send_test(conn, app.config["WAHOOK"], endpoint["id"]) for _ in range(3)]
    finally:
        stop.set()
        pumping.join()
        dispatcher.stop(grace=1)
    assert all(o.ok for o in outcomes)
    assert len(receiver.requests) == 3


def test_bulk_redelivery_covers_failed_tests_too(app, receiver, add_endpoint, conn, runner):
    """The monitor counts a failed test send as failed, so "all failed" must cover it."""
    receiver.behaviour = Behaviour(status=500)
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    assert not send.send_test(conn, app.config["WAHOOK"], endpoint["id"]).ok
    assert json.loads(runner.invoke(args=["deliveries", "retry"]).output) == {"requeued": 1}
