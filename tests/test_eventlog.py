"""The event log pages: every customer shown by phone, else by user id, and nothing a customer
sent (names, user ids, words) rendered unescaped."""

from __future__ import annotations

from html import unescape

import pytest

import samples
from test_admin import login

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture
def admin(client):
    assert login(client).status_code == 303
    return client


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
