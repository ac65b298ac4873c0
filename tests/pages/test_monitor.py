"""The Webhook Health Monitor's numbers against what is stored: redelivering every failed
delivery it counts, deliveries of deleted endpoints counted apart and dismissed, a banner
that never calls a failure count healthy, the failed list paged, and the per-endpoint
health the settings page shares."""

from __future__ import annotations

import json
import re
import time

import pytest

from conftest import element, post_form, text_message, wait_until
from gateway.pages import monitor
from gateway.storage import db
from receiver import Behaviour

pytestmark = pytest.mark.engines

# Meta messages only: a customer's first message also makes a contact.created.
MESSAGES = "message.received"


def states(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())


def test_redeliver_all_covers_a_failed_test_send(app, admin, conn, receiver, add_endpoint, running_worker):
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    receiver.behaviour = Behaviour(status=503, body=b"not yet")
    post_form(admin, f"/settings/endpoints/{endpoint['id']}/test")
    html = admin.get("/monitor").text
    assert element(html, "failed-total") == "1"
    assert "webhook.test" in element(html, "failed")

    receiver.behaviour = Behaviour(status=200)
    response = post_form(admin, "/monitor/redeliver-failed", follow_redirects=True)
    assert "1 failed delivery queued again." in response.text
    wait_until(lambda: states(conn) == {"delivered": 1}, timeout=10, message="the test redelivered")
    assert [json.loads(r.body)["event"] for r in receiver.requests] == ["webhook.test", "webhook.test"]
    html = admin.get("/monitor").text
    assert element(html, "failed-total") == "0" and element(html, "overall") == "All deliveries are healthy."


def test_banner_is_never_healthy_beside_a_failure_count(app, admin, conn, post_webhook, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    now = time.time()
    # The delivery failed every retry, and the endpoint answered 200 since (to another delivery).
    with db.transaction(conn):
        conn.execute("UPDATE deliveries SET state = 'failed', attempts = 3, last_error = 'HTTP 500'")
        conn.execute(
            "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, status_code, ok)"
            " VALUES (1, ?, ?, 4, 200, 1)",
            (endpoint["id"], now),
        )
        conn.execute("INSERT INTO workers VALUES ('w', 1, 'h', ?, ?)", (now, now))
    html = admin.get("/monitor").text
    assert element(html, f"ep-{endpoint['id']}-status").startswith("healthy")
    assert element(html, "failed-total") == "1"
    assert element(html, "overall").startswith("1 failed delivery waits for a redelivery:")


def fail_everything(conn) -> None:
    conn.execute("UPDATE deliveries SET state = 'failed', attempts = 3, last_error = 'HTTP 500'")


def test_deleted_endpoints_failures_are_counted_apart_and_dismissed(
    app, admin, conn, post_webhook, make_receiver, add_endpoint
):
    kept, gone = add_endpoint(make_receiver().url, events=MESSAGES), add_endpoint(make_receiver().url, events=MESSAGES)
    post_webhook(text_message("wamid.ONE"))
    post_webhook(text_message("wamid.TWO"))
    fail_everything(conn)
    post_form(admin, f"/settings/endpoints/{gone['id']}/delete")
    html = admin.get("/monitor").text
    assert element(html, "failed-total") == "2"
    assert element(html, "orphaned-total") == "2"
    orphaned = element(html, "orphaned")
    assert "Dismiss all" in orphaned and orphaned.count("endpoint deleted") == 2

    # Redeliver all covers every failed delivery on the Failed card; the others stay apart.
    response = post_form(admin, "/monitor/redeliver-failed", follow_redirects=True)
    assert "2 failed deliveries queued again." in response.text
    assert states(conn) == {"pending": 2, "failed": 2}

    orphan_ids = [r[0] for r in conn.execute("SELECT id FROM deliveries WHERE endpoint_id IS NULL ORDER BY id")]
    response = post_form(admin, f"/monitor/dismiss/{orphan_ids[0]}", follow_redirects=True)
    assert f"Delivery #{orphan_ids[0]} dismissed" in response.text
    assert element(response.text, "orphaned-total") == "1"
    # Only a failed delivery of a deleted endpoint can be dismissed.
    kept_id = conn.execute("SELECT id FROM deliveries WHERE endpoint_id = ?", (kept["id"],)).fetchone()[0]
    for delivery_id in (kept_id, orphan_ids[0], 999):
        response = post_form(admin, f"/monitor/dismiss/{delivery_id}", follow_redirects=True)
        assert "was not dismissed" in response.text
    response = post_form(admin, "/monitor/dismiss-orphaned", follow_redirects=True)
    assert "1 failed delivery of deleted endpoints dismissed" in response.text
    assert 'id="orphaned"' not in response.text
    # The history stays: the event log still shows both deliveries and their state.
    assert conn.execute("SELECT count(*) FROM deliveries WHERE dismissed_at IS NOT NULL").fetchone()[0] == 2
    events = admin.get("/events").text
    assert events.count("endpoint deleted, dismissed") == 2


def test_disabled_endpoints_failures_are_counted_and_explained(app, admin, conn, post_webhook, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    fail_everything(conn)
    post_form(admin, f"/settings/endpoints/{endpoint['id']}/disable")
    html = admin.get("/monitor").text
    assert element(html, "failed-total") == "1" and "1 for a disabled endpoint" in html
    response = post_form(admin, "/monitor/redeliver-failed", follow_redirects=True)
    assert "1 more waits for a disabled endpoint: enable it on the settings page" in response.text
    post_form(admin, f"/settings/endpoints/{endpoint['id']}/enable")
    response = post_form(admin, "/monitor/redeliver-failed", follow_redirects=True)
    assert "1 failed delivery queued again." in response.text


def test_failed_deliveries_are_paged(app, admin, conn, post_webhook, receiver, add_endpoint):
    add_endpoint(receiver.url, events=MESSAGES)
    for n in range(13):
        post_webhook(text_message(f"wamid.F{n}"))
    fail_everything(conn)
    html = admin.get("/monitor").text
    assert element(html, "failed-total") == "13"
    assert len(re.findall(r'<tr id="delivery-\d+"', html)) == monitor.FAILED_SHOWN == 10
    assert element(html, "failed-page") == "1 of 2 pages"
    second = admin.get("/monitor?failed_page=2").text
    assert len(re.findall(r'<tr id="delivery-\d+"', second)) == 3
    for odd in ("0", "-4", "99", "x"):
        assert admin.get(f"/monitor?failed_page={odd}").status_code == 200


def test_endpoint_health_is_shared_with_the_settings_page(app, admin, conn, post_webhook, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    started = time.time() - 180
    with db.transaction(conn):
        fail_everything(conn)
        conn.executemany(
            "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, status_code, ok, error)"
            " VALUES (1, ?, ?, 5, 502, 0, 'HTTP 502')",
            [(endpoint["id"], started + n) for n in range(3)],
        )
    (health,) = monitor.endpoint_health(conn)
    assert health.state == "failing" and health.failing_since == started and health.failed == 1
    html = admin.get("/settings").text
    ep = endpoint["id"]
    assert element(html, f"endpoint-{ep}-health").startswith("failing since")
    assert "(3 failed attempts in a row)" in element(html, f"endpoint-{ep}-health")
    assert element(html, f"endpoint-{ep}-last") == "2 min ago · 502"
    assert element(html, f"endpoint-{ep}-failed") == "1 waiting for a redelivery"
    monitor_html = admin.get("/monitor").text
    assert element(monitor_html, f"ep-{ep}-streak") == "3 failed attempts in a row"
