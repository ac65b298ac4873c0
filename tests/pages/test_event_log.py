"""The event log: every customer shown by phone, else by user id; every attempt of a delivery
across retry cycles; the search by customer, message id, event name and delivery state (and its
refusals); the one-line summaries; and nothing a customer sent rendered unescaped."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest

from conftest import element, post_form, shown, status_update, text_message, wait_until
from gateway.intake import samples
from gateway.pages import event_log, event_search
from gateway.storage import db
from receiver import Behaviour

pytestmark = pytest.mark.engines

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def page_text(admin, path: str) -> str:
    response = admin.get(path)
    assert response.status_code == 200
    return response.text


def test_a_customer_with_no_phone_is_shown_by_user_id(admin, post_webhook):
    body = samples.sample("username_no_phone")
    del body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]  # no name to show either
    assert post_webhook(body).status_code == 200
    assert post_webhook(samples.sample("status_username")).status_code == 200
    html = unescape(page_text(admin, "/events"))
    assert f"{samples.USERNAME_CUSTOMER_ID}: [text] Hi, it's me on my new username" in html
    assert f"read → {samples.USERNAME_CUSTOMER_ID}" in html
    assert f"(no profile name) ({samples.USERNAME_CUSTOMER_ID})" in html  # its contact.created
    detail = unescape(page_text(admin, "/events/1"))
    assert f"{samples.USERNAME_CUSTOMER_ID}: [text]" in detail


def test_a_phone_is_shown_when_there_is_one(admin, post_webhook):
    assert post_webhook(samples.sample("username")).status_code == 200
    html = unescape(page_text(admin, "/events"))
    assert f"{samples.CUSTOMER_NAME} ({samples.CUSTOMER})" in html


def test_a_stale_status_says_so(admin, post_webhook):
    sent = samples.wamid()
    for state in ("read", "delivered"):
        post_webhook(samples.envelope([samples.statuses_change([samples.status(state, wamid_=sent)])]))
    html = unescape(page_text(admin, "/events"))
    assert f"delivered → {samples.CUSTOMER} (stale: already read)" in html


def test_names_and_user_ids_a_customer_sent_are_escaped(admin, post_webhook):
    body = samples.sample("username_no_phone")
    value = body["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["profile"]["name"] = HOSTILE
    value["contacts"][0]["user_id"] = value["messages"][0]["from_user_id"] = HOSTILE
    value["messages"][0]["text"]["body"] = HOSTILE
    assert post_webhook(body).status_code == 200
    renamed = samples.sample("username_no_phone")
    renamed_value = renamed["entry"][0]["changes"][0]["value"]
    renamed_value["contacts"][0]["user_id"] = renamed_value["messages"][0]["from_user_id"] = HOSTILE
    renamed_value["messages"][0]["timestamp"] = str(int(value["messages"][0]["timestamp"]) + 1)
    assert post_webhook(renamed).status_code == 200  # contact.updated: previous_name is the hostile one
    status = samples.status("read", recipient_user_id=HOSTILE)
    del status["recipient_id"]
    assert post_webhook(samples.envelope([samples.statuses_change([status])])).status_code == 200
    for path in ("/events", "/events/1", "/events/2", "/events/3"):
        html = page_text(admin, path)
        assert "<script>alert" not in html and "<img src=x" not in html, path
        assert "alert(1)" in unescape(html), path  # shown, as text


def test_event_page_shows_every_attempt_across_retry_cycles(
    app, admin, conn, post_webhook, receiver, add_endpoint, running_worker
):
    add_endpoint(receiver.url, events="message.received")
    receiver.behaviour = Behaviour(status=503, body=b"busy")
    post_webhook(text_message("wamid.CYCLES"))
    wait_until(
        lambda: conn.execute("SELECT state FROM deliveries").fetchone()[0] == "failed", timeout=15, message="failed"
    )
    receiver.behaviour = Behaviour(status=200)
    post_form(admin, "/monitor/redeliver/1")
    wait_until(
        lambda: conn.execute("SELECT state FROM deliveries").fetchone()[0] == "delivered", timeout=10, message="sent"
    )
    assert conn.execute("SELECT attempts FROM deliveries").fetchone()[0] == 1  # the current cycle only
    html = admin.get("/events/1").text
    line = element(html, "delivery-1")
    assert "4 attempts, last 200" in line
    history = re.findall(r'<li class="row-(ok|bad)">', html)
    assert history == ["bad", "bad", "bad", "ok"]
    assert "4 attempts, last 200" in element(admin.get("/events").text, "delivery-1")


def seed(conn, post_webhook, add_endpoint, receiver) -> None:
    """Four webhooks: Sheena's text (#1), a status to another customer (#2), Sheena's second
    text (#3) and a template update (#4); #3's delivery failed."""
    add_endpoint(receiver.url)
    post_webhook(text_message("wamid.SHEENA1", text="first"))
    other = status_update("wamid.OTHER")
    other["entry"][0]["changes"][0]["value"]["statuses"][0]["recipient_id"] = "447700900123"
    post_webhook(other)
    post_webhook(text_message("wamid.SHEENA2", text="second"))
    template = samples.sample("template")
    post_webhook(template)
    with db.transaction(conn):
        conn.execute("UPDATE deliveries SET state = 'delivered'")
        conn.execute("UPDATE deliveries SET state = 'failed' WHERE webhook_id = 3")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [4, 3, 2, 1]),
        ("customer=16505551234", [3, 1]),
        ("customer=%2B1+(650)+555-1234", [3, 1]),
        ("customer=447700900123", [2]),
        ("customer=15555555555", []),
        ("message_id=wamid.SHEENA2", [3]),
        ("message_id=wamid.OTHER", [2]),
        ("event=message.received", [3, 1]),
        ("event=template.status_changed", [4]),
        ("state=failed", [3]),
        ("state=delivered", [4, 2, 1]),
        ("customer=16505551234&state=delivered", [1]),
        ("customer=16505551234&event=message.status_updated", []),
        ("event=message.received&state=failed", [3]),
        ("event=message.status_updated&state=failed", []),
        ("event=message.received&state=delivered", [1]),
    ],
)
def test_search(app, admin, conn, post_webhook, add_endpoint, receiver, query, expected):
    seed(conn, post_webhook, add_endpoint, receiver)
    response = admin.get("/events?" + query)
    assert response.status_code == 200
    assert shown(response.text) == expected
    if query and not expected:
        assert "No webhook matches this search." in response.text


def test_search_by_business_scoped_user_id(app, admin, post_webhook):
    # A message from a customer known only by their user id, as Meta sends for usernames.
    post_webhook(samples.username_message(with_phone=False))
    user_id = samples.USERNAME_CUSTOMER_ID
    assert shown(admin.get(f"/events?customer={user_id}").text) == [1]
    assert shown(admin.get(f"/events?customer={user_id[:7]}").text) == []


def test_search_keeps_its_filters_across_pages(app, admin, conn, post_webhook):
    for n in range(25):
        post_webhook(text_message(f"wamid.P{n}"))
    post_webhook(status_update("wamid.P0"))
    html = admin.get("/events?event=message.received").text
    assert len(shown(html)) == event_log.PAGE_SIZE and 26 not in shown(html)
    older = re.search(r'href="(/events\?[^"]+)">Older', html).group(1).replace("&amp;", "&")
    assert "event=message.received" in older
    assert shown(admin.get(older).text) == [5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("state=lost", "A delivery state is one of pending, retrying, delivered, failed."),
        ("customer=" + "1" * 201, "The customer to search for is too long"),
        ("message_id=wamid%00x", "The message id to search for is too long or holds control characters."),
    ],
)
def test_search_refuses_bad_input_clearly(app, admin, conn, post_webhook, query, words):
    post_webhook(text_message())
    response = admin.get("/events?" + query)
    assert response.status_code == 400
    assert words in element(response.text, "search-error")
    assert shown(response.text) == []


def test_hostile_search_text_is_escaped_and_matches_nothing(app, admin, conn, post_webhook):
    post_webhook(text_message())
    response = admin.get("/events?customer=%27%20OR%201%3D1--&event=%3Cscript%3E")
    assert response.status_code == 200 and shown(response.text) == []
    assert "<script>" not in response.text and "&lt;script&gt;" in response.text


@pytest.mark.engines("sqlite")  # SQLite's EXPLAIN QUERY PLAN
def test_searches_use_their_indexes(app, conn):
    """Each search walks an index in webhook order; none reads every event or delivery, none sorts."""
    for chosen in (
        {},
        {"customer": "16505551234"},
        {"message_id": "wamid.X"},
        {"event": "message.received"},
        {"state": "failed"},
        {"customer": "US.1", "state": "failed"},
        {"event": "message.received", "state": "failed"},
    ):
        for sql, params in event_search.queries(chosen, before=1000):
            plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, (*params, 21)))
            assert re.search(r"USING (COVERING )?INDEX|USING INTEGER PRIMARY KEY", plan), (chosen, plan)
            assert "TEMP B-TREE" not in plan, (chosen, plan)
            assert not re.search(r"SCAN (e|events|deliveries|webhooks)\b(?! USING)", plan), (chosen, plan)


def test_template_summary_leaves_out_a_missing_language():
    fields = {"template_name": "order_confirmation", "status": "APPROVED"}
    assert event_log.summary("template.status_changed", fields) == "order_confirmation: APPROVED"
    fields["language"] = "en_US"
    assert event_log.summary("template.status_changed", fields) == "order_confirmation (en_US): APPROVED"


@pytest.mark.parametrize("before", ["99999999999999999999999", "-5", "0", "x"])
def test_an_odd_page_cursor_is_no_error(app, admin, conn, post_webhook, before):
    post_webhook(text_message())
    for path in (f"/events?before={before}", f"/events?before={before}&event=message.received"):
        response = admin.get(path)
        assert response.status_code == 200, path
    assert admin.get(f"/monitor?before={before}").status_code == 200


# PostgreSQL stores and delivers such an event too, but cannot read its JSON for the summary
# and the search columns (they are empty there): SQLite's JSON functions accept the surrogate.
@pytest.mark.engines("sqlite")
def test_a_lone_surrogate_a_customer_sent_leaves_every_page_working(admin, post_webhook):
    # JSON allows "\udfff"; a cut emoji arrives that way, in a name, a number or a text.
    raw = json.dumps(text_message("wamid.SURROGATE", text="hi X")).encode()
    raw = raw.replace(b'"16505551234"', b'"\\udfff"').replace(b"hi X", b"hi \\ud83d")
    assert post_webhook(raw).status_code == 200
    for path in ("/events", "/events/1", "/events?customer=16505551234", "/events/1/raw"):
        response = admin.get(path)
        assert response.status_code == 200, path
    assert "hi \\ud83d" in unescape(admin.get("/events").text)
