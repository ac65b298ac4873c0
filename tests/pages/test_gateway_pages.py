"""Pages that say what the gateway does by itself (SPEC 6): the event log lists published,
operational and test events by source; the monitor says failed deliveries will be redelivered
when a failing endpoint answers again and, after, how many were; "Last Meta webhook" counts
Meta's POSTs only; recent attempts are paged and never break a URL inside a token."""

from __future__ import annotations

import json
import re
import time
from html import unescape

import pytest

from app import create_app
from conftest import attempt_due, element, instance_sections, post_form, sign, text_message, wait_until
from gateway.delivery import doorbell, outages
from gateway.ops import silence
from gateway.storage import db
from gateway.storage.db import get_db
from receiver import Behaviour

pytestmark = pytest.mark.engines


@pytest.fixture
def app(tmp_path, redis_url, storage_database):
    """The shared app with a retry schedule over in 0.4 s and silence alarms after an hour."""
    sections = instance_sections(tmp_path, redis_url, storage_database)
    sections["delivery"]["retry_schedule"] = [0.2, 0.2]
    sections["meta"]["silence_hours"] = 1
    application = create_app({"TESTING": True, "config_path": str(tmp_path / "config.toml"), **sections})
    doorbell.redis_connection(application.config["WAHOOK"]).flushall()
    yield application
    db.close_all()


def post(client, body: dict, key: str | None = None):
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, key) if key else sign(raw)}
    return client.post("/api/webhooks/whatsapp", data=raw, headers=headers)


def failed(conn, endpoint_id: int) -> int:
    sql = "SELECT count(*) FROM deliveries WHERE endpoint_id = ? AND state = 'failed'"
    return conn.execute(sql, (endpoint_id,)).fetchone()[0]


def test_the_event_log_lists_published_operational_and_test_events_by_source(
    app, admin, conn, add_endpoint, make_key, receiver
):
    endpoint = add_endpoint(receiver.url)
    published = admin.post(
        "/api/v1/events",
        json={"event": "campaign.completed", "data": {"campaign": "spring"}},
        headers={"Authorization": f"Bearer {make_key('publish')}"},
    )
    assert published.status_code == 202
    assert post_form(admin, f"/settings/endpoints/{endpoint['id']}/test").status_code == 303
    with app.app_context():
        assert silence.check(get_db(), app.config["WAHOOK"], now=time.time() + 7200)  # the gateway's own
    page = admin.get("/events").get_data(as_text=True)
    assert "appear on the monitor only" not in page
    listed = element(page, "own-events")
    assert re.search(r"gateway gateway\.silent no webhook from Meta for 1 h", listed)
    assert re.search(r"test webhook\.test Send test", listed)
    assert re.search(r'API campaign\.completed \{"campaign": "spring"\}', listed)
    # Newest first, and each one opens.
    assert listed.index("gateway.silent") < listed.index("webhook.test") < listed.index("campaign.completed")
    event_id = conn.execute("SELECT event_id FROM events WHERE name = 'gateway.silent'").fetchone()[0]
    detail = admin.get(f"/events/event/{event_id}")
    assert detail.status_code == 200
    assert element(detail.get_data(as_text=True), "event-source") == "gateway made by wahook itself"
    assert admin.get("/events/event/evt_nope").status_code == 404
    # A search by event name finds them too; a search by customer cannot match them.
    assert "campaign.completed" in element(
        admin.get("/events?event=campaign.completed").get_data(as_text=True), "own-events"
    )
    assert 'id="own-events"' not in admin.get("/events?customer=16505551234").get_data(as_text=True)


def test_the_monitor_says_recovery_will_redeliver_and_then_how_many_it_did(app, admin, conn, add_endpoint, receiver):
    receiver.behaviour = Behaviour(status=502, body=b"redeploying")
    endpoint = add_endpoint(receiver.url, events="message.received")
    for n in range(3):
        assert post(admin, text_message(f"wamid.DOWN{n}")).status_code == 200
    for _ in range(3):
        wait_until(lambda: attempt_due(app, conn, endpoint["id"]), timeout=5, message="a due attempt")
    assert failed(conn, endpoint["id"]) == 3

    page = admin.get("/monitor").get_data(as_text=True)
    assert "redelivers its failed deliveries by itself, oldest first" in element(page, "overall")
    assert "no need to redeliver them by hand" in element(page, "overall")
    assert element(page, "auto-recovery-notice").startswith("3 of these will be redelivered by themselves")
    assert "its 3 failed deliveries will be redelivered by themselves when it answers again" in element(
        page, f"ep-{endpoint['id']}-recovery"
    )
    assert 'class="primary">Redeliver all failed' not in page  # not the invited action any more
    assert "error-text" in re.search(rf'id="ep-{endpoint["id"]}-error".*?</dd>', page, re.S).group(0)

    # Back: the next probe (made due now, as 10 s later) finds it answering and recovery starts.
    receiver.behaviour = Behaviour(status=200)
    with db.transaction(conn):
        conn.execute("UPDATE endpoints SET next_probe_at = ? WHERE id = ?", (time.time() - 1, endpoint["id"]))
    outages.sweep(conn, app.config["WAHOOK"])
    assert attempt_due(app, conn, endpoint["id"])
    page = admin.get("/monitor").get_data(as_text=True)
    said = element(page, f"ep-{endpoint['id']}-recovered")
    assert "2 failed deliveries from the outage redelivered by themselves, oldest first" in said
    assert re.match(r"Answered again (just now|\d+ s ago) ", said), said
    assert 'id="auto-recovery-notice"' not in page
    # Its old error is history now, not an alarm.
    old = re.search(rf'id="ep-{endpoint["id"]}-error".*?</dd>', page, re.S).group(0)
    assert "error-text" not in old and "old-error" in old and "before it answered again" in old


def test_last_meta_webhook_counts_metas_posts_not_simulates(app, admin):
    assert post(admin, text_message("wamid.SIM1"), key=app.config["WAHOOK_SIMULATE_KEY"]).status_code == 200
    page = admin.get("/monitor").get_data(as_text=True)
    assert element(page, "last-webhook") == "never"
    said = element(page, "last-simulated")
    assert re.fullmatch(r"simulate: (just now|\d+ s ago) , not counted", said), said
    assert "wahook_last_meta_webhook_timestamp_seconds" not in admin.get("/metrics").get_data(as_text=True)
    assert "test: simulate" in element(admin.get("/events").get_data(as_text=True), "webhook-1")
    assert element(admin.get("/events/1").get_data(as_text=True), "webhook-source").startswith(
        "test: posted by simulate"
    )
    assert post(admin, text_message("wamid.META1")).status_code == 200
    assert re.fullmatch(r"just now|\d+ s ago", element(admin.get("/monitor").get_data(as_text=True), "last-webhook"))
    assert "wahook_last_meta_webhook_timestamp_seconds" in admin.get("/metrics").get_data(as_text=True)


def test_recent_attempts_are_paged_and_urls_break_only_between_tokens(app, admin, conn, add_endpoint, receiver):
    token = "tok_" + "A1b2C3d4" * 6
    endpoint = add_endpoint(f"{receiver.url}?token={token}&v=2", events="message.received")
    for n in range(30):
        assert post(admin, text_message(f"wamid.PAGE{n}")).status_code == 200
    wait_until(lambda: not attempt_due(app, conn, endpoint["id"]) and len(receiver.requests) == 30, timeout=20)
    first = admin.get("/monitor").get_data(as_text=True)
    rows = re.findall(r'<tr class="row-(?:ok|bad)">.*?</tr>', element_html(first, "attempts"), re.S)
    assert len(rows) == 25
    cell = re.search(r'<td data-label="Endpoint" class="url"[^>]*>(.*?)</td>', rows[0], re.S).group(1)
    assert token in cell  # whole: a line may break after / ? & = only
    pieces = unescape(cell).strip().split("<wbr>")
    assert "".join(pieces).endswith(f"?token={token}&v=2")
    assert all(piece[-1] in "/?&=#" for piece in pieces[:-2])  # the last two: "2", then nothing
    older = re.search(r'href="(/monitor\?before=\d+#attempts)"', first).group(1)
    second = admin.get(older).get_data(as_text=True)
    assert len(re.findall(r'<tr class="row-(?:ok|bad)">', element_html(second, "attempts"))) == 5


def element_html(html: str, element_id: str) -> str:
    match = re.search(rf'<section[^>]*\bid="{element_id}"[^>]*>(.*?)</section>', html, re.S)
    assert match, f"no section #{element_id}"
    return match.group(1)
