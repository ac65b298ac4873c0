"""The admin pages through Flask's test client: login and its rate limit, sessions, CSRF,
security headers, escaping of what customers sent, the settings flows, the monitor's
numbers against real deliveries, redelivery, and the event log."""

from __future__ import annotations

import json
import re
import time
from html import unescape

import pytest
import requests

from conftest import (
    ADMIN_PASSWORD,
    csrf_from,
    element,
    login,
    make_app,
    post_form,
    status_update,
    text_message,
    token,
    wait_until,
)
from gateway.delivery import endpoints
from gateway.pages import monitor
from gateway.storage import db
from gateway.storage.db import get_db
from receiver import Behaviour

pytestmark = pytest.mark.engines

HOSTILE_TEXT = "<script>alert(1)</script><img src=x onerror=alert(2)>"
HOSTILE_NAME = '<b onmouseover="alert(3)">Eve</b>'


# --- helpers ------------------------------------------------------------------------------------


def snapshot(conn) -> dict:
    return {t: sorted((tuple(r) for r in conn.execute(f"SELECT * FROM {t}")), key=repr) for t in db.tables(conn)}  # noqa: S608


# --- login, sessions, logout --------------------------------------------------------------------


def test_login_page_is_a_single_password_form(client):
    html = client.get("/login").text
    assert re.findall(r"<input[^>]*name=\"(\w+)\"", html) == ["csrf_token", "password"]
    assert 'type="password"' in html


def test_right_password_logs_in_with_a_safe_cookie(client):
    response = login(client)
    assert response.status_code == 303 and response.location == "/monitor"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/monitor").status_code == 200


def test_cookie_is_secure_over_https(client):
    response = login(client, base_url="https://localhost")
    assert "; Secure" in response.headers["Set-Cookie"]


def test_wrong_password_is_refused_and_counted(client, conn):
    response = login(client, "not-it")
    assert response.status_code == 401 and "Wrong password" in response.text
    assert client.get("/monitor").status_code == 302
    assert conn.execute("SELECT remote_addr FROM login_failures").fetchall()[0][0] == "127.0.0.1"


def test_sixth_try_in_a_minute_is_blocked_even_with_the_right_password(client, conn):
    for _ in range(5):
        assert login(client, "wrong").status_code == 401
    blocked = login(client, "wrong")
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) <= 60
    assert "Too many failed logins" in blocked.text
    assert login(client).status_code == 429  # the right password, during the block
    assert client.get("/monitor").status_code == 302
    # Another address is not blocked.
    assert login(client, environ_base={"REMOTE_ADDR": "198.51.100.20"}).status_code == 303
    # A minute after the failures, the block is over.
    conn.execute("UPDATE login_failures SET at = at - 61")
    other = client.application.test_client()
    assert login(other).status_code == 303
    assert conn.execute("SELECT count(*) FROM login_failures").fetchone()[0] == 0  # cleared by the success


def test_forwarded_for_counts_only_behind_a_local_proxy(client, conn):
    login(client, "wrong", headers={"X-Forwarded-For": "203.0.113.9"})
    login(client, "wrong", headers={"X-Forwarded-For": "203.0.113.9"}, environ_base={"REMOTE_ADDR": "192.0.2.4"})
    addresses = [r[0] for r in conn.execute("SELECT remote_addr FROM login_failures ORDER BY id")]
    assert addresses == ["203.0.113.9", "192.0.2.4"]


def test_empty_password_makes_login_impossible(tmp_path, redis_url):
    app = make_app(tmp_path, redis_url, admin={"password": ""})
    client = app.test_client()
    page = client.get("/login")
    assert "No admin password is set" in page.text and "make run" in page.text and "[admin]" in page.text
    response = client.post("/login", data={"password": "", "csrf_token": csrf_from(page.text)})
    assert response.status_code == 403
    assert client.get("/monitor").status_code == 302
    db.close_all()


def test_logout_ends_the_session(admin):
    assert admin.get("/logout").status_code == 405  # only a POST with a token logs out
    assert admin.get("/monitor").status_code == 200
    response = post_form(admin, "/logout")
    assert response.status_code == 303 and response.location == "/login"
    assert admin.get("/monitor").status_code == 302


def test_changing_the_password_ends_every_session(app, admin):
    app.config["WAHOOK"]["admin"]["password"] = "a-new-password"
    assert admin.get("/monitor").status_code == 302


def copied_session(client, app):
    """A second browser holding a copy of `client`'s session cookie, as someone who copied it would."""
    thief = app.test_client()
    thief.set_cookie("wahook_session", client.get_cookie("wahook_session").value)
    return thief


def test_logout_ends_the_session_on_the_server_so_a_copied_cookie_stops_working(app, admin):
    thief = copied_session(admin, app)
    assert thief.get("/monitor").status_code == 200  # the copy works while the session is open
    post_form(admin, "/logout")
    assert thief.get("/monitor").status_code == 302
    assert thief.post("/settings/endpoints", data={"csrf_token": "x"}).status_code in (302, 303, 403)


def test_a_password_change_ends_every_session_for_good(app, admin):
    """Put back later, the old password does not bring back a session opened with it."""
    thief = copied_session(admin, app)
    app.config["WAHOOK"]["admin"]["password"] = "a-new-password"
    assert login(app.test_client(), "a-new-password").status_code == 303
    app.config["WAHOOK"]["admin"]["password"] = ADMIN_PASSWORD
    assert thief.get("/monitor").status_code == 302
    assert admin.get("/monitor").status_code == 302


def test_a_session_unused_for_its_lifetime_is_over_and_use_keeps_one_open(app, admin, conn):
    conn.execute("UPDATE admin_sessions SET seen_at = seen_at - 600")
    assert admin.get("/monitor").status_code == 200
    assert conn.execute("SELECT max(seen_at) FROM admin_sessions").fetchone()[0] > time.time() - 60  # renewed
    conn.execute("UPDATE admin_sessions SET seen_at = seen_at - 13 * 3600")
    assert admin.get("/monitor").status_code == 302


def test_other_sessions_survive_a_logout(app, admin):
    other = app.test_client()
    assert login(other).status_code == 303
    post_form(admin, "/logout")
    assert other.get("/monitor").status_code == 200


def test_login_only_returns_to_local_pages(client):
    page = client.get("/login?next=//evil.example/x")
    response = client.post(
        "/login", data={"password": ADMIN_PASSWORD, "csrf_token": csrf_from(page.text), "next": "//evil.example/x"}
    )
    assert response.location == "/monitor"
    client.post("/logout", data={"csrf_token": token(client)})
    page = client.get("/events?before=3")
    assert page.status_code == 302 and page.location == "/login?next=/events?before%3D3"
    form = client.get(page.location).text
    assert 'name="next" value="/events?before=3"' in form
    response = client.post(
        "/login", data={"password": ADMIN_PASSWORD, "csrf_token": csrf_from(form), "next": "/events?before=3"}
    )
    assert response.location == "/events?before=3"


# --- every page needs a session; every form needs a token ---------------------------------------

# Every admin URL, with ids filled in. The tests below fail when a route is added and not listed.
GET_PAGES = [
    "/",
    "/monitor",
    "/settings",
    "/settings/endpoints/1",
    "/settings/endpoints/1/delete",
    "/settings/endpoints/1/secret",
    "/events",
    "/events/1",
    "/events/1/raw",
    "/events/event/evt_1",
]
POST_FORMS = [
    "/logout",
    "/settings/endpoints",
    "/settings/endpoints/1",
    "/settings/endpoints/1/enable",
    "/settings/endpoints/1/disable",
    "/settings/endpoints/1/delete",
    "/settings/endpoints/1/secret",
    "/settings/endpoints/1/test",
    "/monitor/redeliver/1",
    "/monitor/redeliver-failed",
    "/monitor/dismiss/2",
    "/monitor/dismiss-orphaned",
    "/settings/media/check-token",
    "/settings/apikeys",
    "/settings/apikeys/1/revoke",
]
# The API's own routes answer to API keys, not sessions (tests/api/test_routes.py).
PUBLIC_RULES = {
    "/login",
    "/healthz",
    "/api/webhooks/whatsapp",
    "/static/<path:filename>",
    "/api/v1/events",
    "/api/v1/stream",
    "/metrics",
}
PUBLIC_RULES |= {"/api/v1/ws", "/api/v1/stream-tokens"}  # keys and stream tokens (test_stream_tokens)
PUBLIC_RULES |= {"/media/<token>", "/media/", "/media/<path:rest>"}  # signed media links (test_media_route)


def rule_pattern(rule: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"<[^>]+>", r"[^/]+", rule) + "$")


def test_the_lists_cover_every_route(app):
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC_RULES:
            continue
        if "GET" in rule.methods:
            assert any(rule_pattern(rule.rule).match(p) for p in GET_PAGES), f"GET {rule.rule} is not tested"
        if "POST" in rule.methods:
            assert any(rule_pattern(rule.rule).match(p) for p in POST_FORMS), f"POST {rule.rule} is not tested"


@pytest.mark.parametrize("path", [*GET_PAGES, "/no-such-page"])
def test_every_admin_page_redirects_to_login_without_a_session(client, path):
    response = client.get(path)
    assert response.status_code == 302 and response.location.startswith("/login?next=")


def test_public_pages_need_no_session(client):
    assert client.get("/login").status_code == 200
    assert client.get("/healthz").status_code in (200, 503)
    assert client.get("/api/webhooks/whatsapp").status_code == 400  # the intake's own answer
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/media/x.y").status_code == 403  # the link's own answer: it is its own proof


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    ("path", "allow"),
    [("/api/webhooks/whatsapp", "GET, POST"), ("/healthz", "GET"), ("/metrics", "GET"), ("/login", "GET, POST")],
)
def test_public_routes_answer_other_methods_with_405_and_allow(client, conn, path, allow, method):
    response = client.open(path, method=method, data=b"{}")
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert conn.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 0


@pytest.mark.parametrize("path", POST_FORMS)
def test_every_form_refuses_a_post_without_a_valid_token(app, admin, conn, receiver, post_webhook, path, add_endpoint):
    add_endpoint(receiver.url)
    add_endpoint(receiver.url)
    post_webhook(text_message())
    # So the redeliver forms would act on delivery 1 and the dismiss forms on delivery 2.
    conn.execute("UPDATE deliveries SET state = 'failed'")
    conn.execute("UPDATE deliveries SET endpoint_id = NULL WHERE id = 2")
    before = snapshot(conn)
    good = token(admin)
    assert admin.post(path, data={"url": receiver.url}).status_code == 403
    bad = admin.post(path, data={"csrf_token": good[:-2] + "xx", "url": receiver.url})
    assert bad.status_code == 403 and "nothing was changed" in bad.text
    assert snapshot(conn) == before
    assert admin.get("/monitor").status_code == 200  # still logged in
    assert receiver.requests == []


def test_login_form_refuses_a_post_without_a_token(client, conn):
    client.get("/login")
    assert client.post("/login", data={"password": ADMIN_PASSWORD}).status_code == 403
    assert conn.execute("SELECT count(*) FROM login_failures").fetchone()[0] == 0
    assert client.get("/monitor").status_code == 302


def test_a_token_from_another_session_is_refused(app, admin):
    stranger = app.test_client()
    login(stranger)
    response = admin.post("/settings/endpoints/1/disable", data={"csrf_token": token(stranger)})
    assert response.status_code == 403


# --- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/login", "/monitor", "/settings", "/events", "/healthz", "/static/style.css", "/x"])
def test_security_headers_on_every_response(admin, path):
    headers = admin.get(path).headers
    csp = headers["Content-Security-Policy"]
    for part in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"):
        assert part in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_security_headers_on_the_intake_too(client):
    assert client.get("/api/webhooks/whatsapp").headers["X-Frame-Options"] == "DENY"


def test_security_headers_on_signed_intake_posts(client, post_webhook):
    for response in (post_webhook(text_message()), post_webhook(text_message(), secret="wrong")):
        assert response.status_code in (200, 401)
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Cache-Control" not in response.headers


def test_a_header_set_by_the_view_is_kept(app, client):
    @app.get("/own-headers")
    def own_headers():
        return "x", 200, {"X-Frame-Options": "SAMEORIGIN", "Content-Type": "text/plain"}

    login(client)
    headers = client.get("/own-headers").headers
    assert headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"


def test_intake_and_health_neither_read_nor_renew_the_session(admin, post_webhook):
    # A logged-in browser's cookie is renewed by admin pages, never by Meta's or a health check's path.
    assert "wahook_session=" in admin.get("/monitor").headers.get("Set-Cookie", "")
    for response in (admin.get("/healthz"), admin.get("/api/webhooks/whatsapp"), post_webhook(text_message())):
        assert "Set-Cookie" not in response.headers
        assert "Cookie" not in response.headers.get("Vary", "")
    assert admin.get("/monitor").status_code == 200  # still logged in


def test_pages_have_no_inline_script_or_style(admin, app, receiver, post_webhook, add_endpoint):
    add_endpoint(receiver.url)
    post_webhook(text_message())
    for path in ("/login", "/monitor", "/settings", "/events", "/events/1", "/settings/endpoints/1"):
        html = admin.get(path).text
        assert "style=" not in html and "<style" not in html
        assert re.search(r"<[^>]*\son[a-z]+\s*=", html) is None  # no event handler attributes
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []


# --- escaping -----------------------------------------------------------------------------------


def hostile_message() -> dict:
    body = text_message("wamid.HOSTILE", text=HOSTILE_TEXT)
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = HOSTILE_NAME
    return body


def test_what_customers_sent_is_escaped_everywhere(
    app, admin, post_webhook, receiver, running_worker, conn, add_endpoint
):
    receiver.behaviour = Behaviour(status=500, body=HOSTILE_TEXT.encode())  # a receiver echoing it back
    add_endpoint(receiver.url)
    assert post_webhook(hostile_message()).status_code == 200
    wait_until(lambda: conn.execute("SELECT count(*) FROM attempts").fetchone()[0], message="an attempt")
    pages = {path: admin.get(path).text for path in ("/events", "/events/1", "/monitor")}
    for path, html in pages.items():
        assert "<script>alert" not in html and "<img src=x" not in html, path
        assert "<b onmouseover" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html, path
    for path in ("/events", "/events/1"):
        assert "&lt;b onmouseover=&#34;alert(3)&#34;&gt;Eve&lt;/b&gt;" in pages[path]
    assert "alert(1)" in unescape(pages["/events/1"])  # shown, as text


# --- settings -----------------------------------------------------------------------------------


def test_settings_shows_callback_url_and_verify_token(admin):
    html = admin.get("/settings").text
    assert 'value="http://localhost/api/webhooks/whatsapp"' in html
    assert 'value="test-verify-token"' in html
    assert html.count('class="copy"') == 2
    assert "Meta only calls" in html  # plain http here
    assert "No app secret" not in html and "No verify token" not in html


def test_public_url_setting_is_used_for_the_callback(admin, monkeypatch):
    monkeypatch.setenv("WAHOOK_PUBLIC_URL", "https://hooks.example.org/")
    html = admin.get("/settings").text
    assert 'value="https://hooks.example.org/api/webhooks/whatsapp"' in html and "Meta only calls" not in html


def test_settings_warns_when_meta_secrets_are_missing(tmp_path, redis_url):
    client = make_app(tmp_path, redis_url, meta={"app_secret": "", "verify_token": ""}).test_client()
    login(client)
    html = client.get("/settings").text
    assert "No app secret is set" in html and "No verify token is set" in html
    db.close_all()


def test_add_shows_the_secret_once_then_masked(admin, conn, receiver):
    response = post_form(
        admin,
        "/settings/endpoints",
        {"url": receiver.url, "events": ["message.received", "template.status_changed"], "format": "meta"},
    )
    assert response.status_code == 200
    row = conn.execute("SELECT * FROM endpoints").fetchone()
    assert row["secret"] in response.text and "not shown again" in response.text
    assert endpoints.as_dict(row)["events"] == ["message.received", "template.status_changed"]
    assert row["format"] == "meta"
    settings_page = admin.get("/settings").text
    assert row["secret"] not in settings_page and endpoints.mask(row["secret"]) in settings_page


def test_add_with_other_events_bearer_token_and_own_secret(admin, conn, receiver):
    secret = endpoints.generate_secret()
    post_form(
        admin,
        "/settings/endpoints",
        {"url": receiver.url, "other_events": "whatsapp.calls", "bearer_token": "tok-1", "secret": secret},
    )
    row = conn.execute("SELECT * FROM endpoints").fetchone()
    assert row["events"] == '["whatsapp.calls"]' and row["bearer_token"] == "tok-1" and row["secret"] == secret
    assert "tok-1" not in admin.get("/settings").text


def test_event_checkboxes_are_grouped_by_kind(admin):
    html = admin.get("/settings").text
    for kind in ("Message", "Template", "Account", "Contact", "Operational"):
        assert f'<p class="group-name">{kind}</p>' in html
    assert html.count('type="checkbox" name="events"') == 14


def test_edit_changes_url_events_format_and_token(app, admin, conn, make_receiver, add_endpoint):
    first, second = make_receiver(), make_receiver()
    endpoint = add_endpoint(first.url, bearer_token="old-token")
    form = admin.get(f"/settings/endpoints/{endpoint['id']}").text
    assert f'value="{first.url}"' in form and "old-token" not in form
    response = post_form(
        admin,
        f"/settings/endpoints/{endpoint['id']}",
        {"url": second.url, "events": ["message.status_updated"], "format": "meta", "bearer_token": ""},
    )
    assert response.status_code == 303
    row = endpoints.get(conn, endpoint["id"])
    assert (row["url"], row["events"], row["format"]) == (second.url, '["message.status_updated"]', "meta")
    assert row["bearer_token"] == "old-token"  # an empty box keeps it
    post_form(admin, f"/settings/endpoints/{endpoint['id']}", {"url": second.url, "bearer_token": "new-token"})
    assert endpoints.get(conn, endpoint["id"])["bearer_token"] == "new-token"
    assert endpoints.get(conn, endpoint["id"])["events"] == "[]"  # nothing ticked: every event
    post_form(admin, f"/settings/endpoints/{endpoint['id']}", {"url": second.url, "remove_bearer_token": "1"})
    assert endpoints.get(conn, endpoint["id"])["bearer_token"] == ""


def test_disable_and_enable(app, admin, conn, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url)
    post_form(admin, f"/settings/endpoints/{endpoint['id']}/disable")
    row = endpoints.get(conn, endpoint["id"])
    assert row["enabled"] == 0 and row["disabled_reason"].startswith("by the admin")
    html = admin.get("/settings").text
    assert "Disabled by the admin" in html and ">Enable</button>" in html
    assert "disabled:" in admin.get("/monitor").text
    post_form(admin, f"/settings/endpoints/{endpoint['id']}/enable")
    row = endpoints.get(conn, endpoint["id"])
    assert row["enabled"] == 1 and row["disabled_reason"] == ""


def test_delete_asks_first(app, admin, conn, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url)
    confirm = admin.get(f"/settings/endpoints/{endpoint['id']}/delete")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    assert endpoints.get(conn, endpoint["id"]) is not None  # looking is not deleting
    response = post_form(admin, f"/settings/endpoints/{endpoint['id']}/delete")
    assert response.status_code == 303 and endpoints.get(conn, endpoint["id"]) is None
    assert "deleted" in admin.get("/settings").text
    assert admin.get(f"/settings/endpoints/{endpoint['id']}/delete").status_code == 404


def test_new_secret_is_shown_once(app, admin, conn, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url)
    page = admin.get(f"/settings/endpoints/{endpoint['id']}/secret").text
    assert "keep signing" in page and 'name="keep_old_hours"' in page and 'value="24"' in page
    assert endpoints.get(conn, endpoint["id"])["secret"] == endpoint["secret"]
    response = post_form(admin, f"/settings/endpoints/{endpoint['id']}/secret", {"keep_old_hours": "0"})
    row = endpoints.get(conn, endpoint["id"])
    assert row["secret"] != endpoint["secret"] and row["secret"] in response.text
    assert endpoints.signing_secrets(row, time.time()) == [row["secret"]]
    assert "no longer signs" in response.text
    assert row["secret"] not in admin.get("/settings").text


def test_new_secret_with_an_overlap_keeps_the_old_one_signing(admin, conn, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url)
    response = post_form(admin, f"/settings/endpoints/{endpoint['id']}/secret", {"keep_old_hours": "1.5"})
    assert response.status_code == 200
    row = endpoints.get(conn, endpoint["id"])
    assert endpoints.signing_secrets(row, time.time()) == [row["secret"], endpoint["secret"]]
    assert abs(row["previous_secret_until"] - (time.time() + 5400)) < 60
    assert "keeps signing alongside the new one until" in element(response.text, "old-secret-until")
    # The old secret is never shown again, in full or otherwise beyond its mask.
    assert endpoint["secret"] not in response.text


@pytest.mark.parametrize("hours", ["-1", "721", "nan", "a day", ""])
def test_new_secret_refuses_a_bad_overlap_and_changes_nothing(admin, conn, receiver, add_endpoint, hours):
    endpoint = add_endpoint(receiver.url)
    response = post_form(admin, f"/settings/endpoints/{endpoint['id']}/secret", {"keep_old_hours": hours})
    assert response.status_code == 400 and "keep-old-hours must be" in response.text
    assert endpoints.get(conn, endpoint["id"])["secret"] == endpoint["secret"]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com/hook", "https"),
        ("https://127.0.0.1/hook", "127.0.0.1"),
        ("https://10.1.2.3/hook", "10.1.2.3"),
        ("", "required"),
    ],
)
def test_url_errors_are_shown_next_to_the_field(tmp_path, redis_url, url, words):
    app = make_app(tmp_path, redis_url, delivery={"allow_http": False, "allow_private_urls": False})
    client = app.test_client()
    login(client)
    response = post_form(client, "/settings/endpoints", {"url": url})
    assert response.status_code == 400
    message = element(response.text, "url-error")
    assert words in message and " " in message  # words, not a code
    assert 'aria-describedby="url-error"' in response.text
    assert f'value="{url}"' in response.text  # what was typed stays
    with app.app_context():
        assert endpoints.list_all(get_db()) == []
    db.close_all()


def test_other_field_errors_are_shown_next_to_their_fields(app, admin, receiver, conn, add_endpoint):
    for data, field in (
        ({"bearer_token": "a b"}, "bearer_token"),
        ({"secret": "plain"}, "secret"),
        ({"other_events": "message.recieved"}, "events"),
    ):
        response = post_form(admin, "/settings/endpoints", {"url": receiver.url, **data})
        assert response.status_code == 400 and element(response.text, f"{field}-error")
    endpoint = add_endpoint(receiver.url)
    response = post_form(admin, f"/settings/endpoints/{endpoint['id']}", {"url": "ftp://x"})
    assert response.status_code == 400 and element(response.text, "url-error")
    assert endpoints.get(conn, endpoint["id"])["url"] == receiver.url


def test_send_test_shows_the_outcome(app, admin, receiver, add_endpoint):
    receiver.behaviour = Behaviour(status=200, body=b"thanks, got it")
    endpoint = add_endpoint(receiver.url)
    response = post_form(admin, f"/settings/endpoints/{endpoint['id']}/test", follow_redirects=True)
    outcome = element(response.text, "test-outcome")
    assert "Test delivered" in outcome and "HTTP 200" in outcome and "thanks, got it" in response.text
    (got,) = receiver.requests
    assert got.headers["X-Webhook-Event"] == "webhook.test"
    assert "test-outcome" not in admin.get("/settings").text  # shown once


def test_send_test_shows_a_failure(app, admin, receiver, add_endpoint):
    receiver.behaviour = Behaviour(status=500, body=b"<h1>broken</h1>")
    failing = add_endpoint(receiver.url)
    html = post_form(admin, f"/settings/endpoints/{failing['id']}/test", follow_redirects=True).text
    assert "Test failed" in element(html, "test-outcome") and "HTTP 500" in html
    assert "&lt;h1&gt;broken&lt;/h1&gt;" in html
    down = add_endpoint("http://127.0.0.1:9/hook")
    html = post_form(admin, f"/settings/endpoints/{down['id']}/test", follow_redirects=True).text
    assert "no answer" in element(html, "test-outcome") and "refused" in html


def test_unknown_endpoint_is_404(admin):
    assert admin.get("/settings/endpoints/99").status_code == 404
    assert post_form(admin, "/settings/endpoints/99/test").status_code == 404
    assert post_form(admin, "/settings/endpoints/99/disable").status_code == 404


# --- monitor ------------------------------------------------------------------------------------


def states(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())


def test_monitor_numbers_for_real_deliveries_and_redelivery(
    app,
    admin,
    conn,
    post_webhook,
    make_receiver,
    running_worker,
    add_endpoint,
):
    good, bad = make_receiver(), make_receiver()
    bad.behaviour = Behaviour(status=500, body=b"down for maintenance")
    healthy = add_endpoint(good.url, events="message.received")  # one delivery per message
    failing = add_endpoint(bad.url, events="message.received")
    post_webhook(text_message("wamid.A"))
    post_webhook(text_message("wamid.B"))
    wait_until(lambda: states(conn) == {"delivered": 2, "failed": 2}, timeout=20, message="2 delivered, 2 failed")

    html = admin.get("/monitor").text
    h, f = healthy["id"], failing["id"]
    assert element(html, f"ep-{h}-status").startswith("healthy")
    assert element(html, f"ep-{h}-hour") == "100 % ok · 0 % failed (2 of 2 attempts ok)"
    assert element(html, f"ep-{h}-day") == "100 % ok · 0 % failed (2 of 2 attempts ok)"
    assert element(html, f"ep-{h}-streak") == "0 failed attempts in a row"
    assert element(html, f"ep-{f}-status").startswith("failing since")
    assert element(html, f"ep-{f}-hour") == "0 % ok · 100 % failed (0 of 6 attempts ok)"  # 2 × (1 + 2 retries)
    assert element(html, f"ep-{f}-open") == "0 pending · 0 retrying · 2 failed"
    assert element(html, f"ep-{f}-streak") == "6 failed attempts in a row"
    assert element(html, f"ep-{f}-error").startswith("HTTP 500")
    assert element(html, "chart-delivered") == "2" and element(html, "chart-failed") == "6"
    assert element(html, "failed-total") == "2"
    assert element(html, "overall").startswith("1 endpoint is failing")
    assert "down for maintenance" in html  # the start of the receiver's answer
    assert element(html, "last-webhook") == "just now" or "s ago" in element(html, "last-webhook")

    failed_ids = [r[0] for r in conn.execute("SELECT id FROM deliveries WHERE state = 'failed' ORDER BY id")]
    bad.behaviour = Behaviour(status=200)
    response = post_form(admin, f"/monitor/redeliver/{failed_ids[0]}", follow_redirects=True)
    assert "queued again" in response.text
    # The 2xx ends the endpoint's outage: the other failed delivery follows by itself.
    wait_until(lambda: states(conn) == {"delivered": 4}, timeout=10, message="one redelivered, one recovered")
    html = admin.get("/monitor").text
    assert element(html, "failed-total") == "0"
    assert element(html, f"ep-{f}-status").startswith(("healthy", "recovering"))
    assert element(html, f"ep-{f}-streak") == "0 failed attempts in a row"
    assert element(html, f"ep-{f}-hour") == "25 % ok · 75 % failed (2 of 8 attempts ok)"
    # A delivery that is not failed is left alone, and the page says so.
    response = post_form(admin, f"/monitor/redeliver/{failed_ids[0]}", follow_redirects=True)
    assert "was not redelivered" in response.text
    response = post_form(admin, "/monitor/redeliver-failed", follow_redirects=True)
    assert "There was no failed delivery to redeliver." in response.text
    wait_until(
        lambda: element(admin.get("/monitor").text, f"ep-{f}-status").startswith("healthy"),
        message="healthy once the recovery is over",
    )
    assert element(admin.get("/monitor").text, "overall") == "All deliveries are healthy."
    assert len(bad.requests) == 8


def test_monitor_shows_each_endpoint_failing_recovering_or_healthy(admin, conn, add_endpoint, receiver):
    ids = [add_endpoint(receiver.url)["id"] for _ in range(3)]
    now = time.time()
    conn.execute("UPDATE endpoints SET failing_since = ?, next_probe_at = ? WHERE id = ?", (now - 600, now, ids[0]))
    conn.execute("UPDATE endpoints SET recovering_until = ? WHERE id = ?", (now + 60, ids[1]))
    html = admin.get("/monitor").text
    assert element(html, f"ep-{ids[0]}-status").startswith("failing since")
    assert element(html, f"ep-{ids[1]}-status").startswith("recovering: answering again")
    assert 'class="card health health-recovering"' in html
    assert element(html, f"ep-{ids[2]}-status").startswith("no deliveries yet")
    assert element(html, "overall").startswith("1 endpoint is failing")


def test_rates_chart_and_streak_for_known_attempt_times(app, conn, post_webhook, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url)
    post_webhook(text_message())
    delivery_id = conn.execute("SELECT id FROM deliveries").fetchone()[0]
    now = time.time()
    minute = int(now // 60) * 60  # times below are placed inside known minutes
    known = [  # (time, ok), oldest first as a worker would record them
        (minute - 2 * 86400, 1),  # older than a day: counted nowhere
        (minute - 3 * 3600, 0),
        (minute - 3 * 3600 + 60, 0),
        (minute - 50 * 60 + 10, 1),
        (minute - 50 * 60 + 20, 1),
        (minute - 20 * 60 + 1, 1),
        (minute - 20 * 60 + 2, 0),
        (minute - 10 * 60 + 5, 1),
        (minute - 5 * 60 + 5, 0),  # the failure streak starts here
        (minute + (now - minute) / 2, 0),
    ]
    with db.transaction(conn):
        conn.executemany(
            "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, status_code, ok, error)"
            " VALUES (?, ?, ?, 5, ?, ?, ?)",
            [(delivery_id, endpoint["id"], at, 200 if ok else 502, ok, "" if ok else "HTTP 502") for at, ok in known],
        )
    (health,) = monitor.endpoint_health(conn, now)
    assert (health.hour_ok, health.hour_total) == (4, 7)
    assert (health.day_ok, health.day_total) == (4, 9)
    assert health.streak == 2 and health.failing_since == minute - 5 * 60 + 5
    assert health.state == "failing" and health.last_error["status_code"] == 502
    chart = monitor.chart(conn, now)
    assert (chart.delivered, chart.failed) == (4, 3) and chart.top == 2 and len(chart.buckets) == 60
    assert {b["minute"]: (b["ok"], b["failed"]) for b in chart.buckets if b["ok"] or b["failed"]} == {
        minute - 50 * 60: (2, 0),
        minute - 20 * 60: (1, 1),
        minute - 10 * 60: (1, 0),
        minute - 5 * 60: (0, 1),
        minute: (0, 1),
    }
    two = next(b for b in chart.buckets if b["minute"] == minute - 50 * 60)
    assert two["ok_h"] == chart.height and two["ok_y"] == 0  # the top of the scale
    client = app.test_client()
    login(client)
    html = client.get("/monitor").text
    assert element(html, f"ep-{endpoint['id']}-hour") == "57 % ok · 43 % failed (4 of 7 attempts ok)"
    assert element(html, f"ep-{endpoint['id']}-day") == "44 % ok · 56 % failed (4 of 9 attempts ok)"
    assert html.count('<rect class="ok"') == 3 and html.count('<rect class="bad"') == 3
    assert "<title>" in html and ": 2 delivered, 0 failed</title>" in html


# --- event log ----------------------------------------------------------------------------------


def test_event_log_lists_webhooks_newest_first_with_their_deliveries(
    app, admin, conn, post_webhook, make_receiver, add_endpoint
):
    events_receiver, meta_receiver = make_receiver(), make_receiver()
    add_endpoint(events_receiver.url, events="message.received")
    add_endpoint(meta_receiver.url, format="meta")
    post_webhook(text_message("wamid.FIRST", text="first message"))
    post_webhook(status_update("wamid.FIRST"))
    post_webhook({"object": "page", "entry": []})
    conn.execute("UPDATE deliveries SET state = 'failed', last_error = 'HTTP 502' WHERE id = 1")
    html = admin.get("/events").text
    ids = re.findall(r'id="webhook-(\d+)"', html)
    assert ids == ["3", "2", "1"]
    first = html[html.index('id="webhook-1"') :]
    assert "message.received" in first and "Sheena Nelson: [text] first message" in first
    assert "failed" in first and "HTTP 502" in first and ">Redeliver</button>" in first
    assert "Original body (meta format)" in first
    second = html[html.index('id="webhook-2"') : html.index('id="webhook-1"')]
    assert "message.status_updated" in second and "read → 16505551234" in second
    assert "Sent only inside the original body" in second
    third = html[html.index('id="webhook-3"') : html.index('id="webhook-2"')]
    assert "not a WhatsApp Business Account body" in third


def test_event_detail_shows_raw_body_and_events_as_formatted_json(app, admin, conn, post_webhook):
    raw = (
        b'{"object":"whatsapp_business_account","entry":'
        + json.dumps(text_message("wamid.DETAIL")["entry"]).encode()
        + b"}"
    )
    post_webhook(raw)
    public_id = conn.execute("SELECT webhook_id FROM webhooks").fetchone()[0]
    html = admin.get("/events/1").text

    def timeless(page: str) -> str:  # "(just now)" becomes "(1 s ago)" when a second passes between the two
        return re.sub(r'<span class="ago">[^<]*</span>', "", page)

    assert timeless(admin.get(f"/events/{public_id}").text) == timeless(html)
    assert "&#34;object&#34;: &#34;whatsapp_business_account&#34;,\n  &#34;entry&#34;: [" in html  # indented
    assert (
        "&#34;event&#34;: &#34;message.received&#34;" in html and "&#34;message_id&#34;: &#34;wamid.DETAIL&#34;" in html
    )
    assert "Not sent: no endpoint selected it" in html
    download = admin.get("/events/1/raw")
    assert download.data == raw and download.headers["Content-Disposition"].startswith("attachment")
    assert admin.get("/events/99").status_code == 404 and admin.get("/events/whk_nope").status_code == 404
    assert admin.get("/events/99999999999999999999999").status_code == 404


def test_redeliver_from_the_event_detail_returns_there(app, admin, conn, post_webhook, receiver, add_endpoint):
    add_endpoint(receiver.url, events="message.received")
    post_webhook(text_message())
    conn.execute("UPDATE deliveries SET state = 'failed'")
    response = post_form(admin, "/monitor/redeliver/1", {"next": "/events/1"})
    assert response.status_code == 303 and response.location == "/events/1"
    assert conn.execute("SELECT state FROM deliveries").fetchone()[0] == "pending"
    conn.execute("UPDATE deliveries SET state = 'failed'")
    response = post_form(admin, "/monitor/redeliver/1", {"next": "https://evil.example/"})
    assert response.location == "/monitor"


def test_test_events_break_nothing(app, admin, receiver, add_endpoint):
    endpoint = add_endpoint(receiver.url)
    post_form(admin, f"/settings/endpoints/{endpoint['id']}/test")
    events = admin.get("/events")
    assert events.status_code == 200
    assert re.search(r"test webhook\.test Send test", element(events.text, "own-events"))
    html = admin.get("/monitor").text
    assert "webhook.test" in html and element(html, f"ep-{endpoint['id']}-status").startswith("healthy")
    post_form(admin, "/monitor/redeliver-failed")
    assert admin.get("/monitor").status_code == 200


def test_event_log_and_attempts_are_paged(app, admin, conn, post_webhook, receiver, add_endpoint):
    add_endpoint(receiver.url)
    for n in range(23):
        post_webhook(text_message(f"wamid.PAGE{n}"))
    with db.transaction(conn):
        conn.executemany(
            "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, status_code, ok)"
            " VALUES (?, 1, ?, 3, 200, 1)",
            [(n % 23 + 1, time.time() - 100 + n) for n in range(30)],
        )
    page = admin.get("/events").text
    assert len(re.findall(r'id="webhook-\d+"', page)) == 20
    older = re.search(r'href="(/events\?before=\d+)"', page).group(1)
    rest = admin.get(older).text
    assert re.findall(r'id="webhook-(\d+)"', rest) == ["3", "2", "1"] and "Older" not in rest
    html = admin.get("/monitor").text
    assert html.count('<tr class="row-ok">') == 25
    older = unescape(re.search(r'href="(/monitor\?before=\d+#attempts)"', html).group(1))
    assert admin.get(older).text.count('<tr class="row-ok">') == 5


# --- behind a proxy -----------------------------------------------------------------------------


def test_gunicorn_takes_https_from_a_local_proxy_only(processes):
    """No ProxyFix: gunicorn itself trusts X-Forwarded-Proto from loopback (forwarded_allow_ips),
    which is what marks the cookie Secure behind a local nginx, Caddy or tunnel."""
    base = processes.start_web(workers=1)
    plain = requests.get(base + "/login", timeout=5)
    proxied = requests.get(base + "/login", headers={"X-Forwarded-Proto": "https"}, timeout=5)
    assert "HttpOnly" in plain.headers["Set-Cookie"] and "Secure" not in plain.headers["Set-Cookie"]
    assert "; Secure" in proxied.headers["Set-Cookie"] and "SameSite=Lax" in proxied.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "path", ["/settings/endpoints/99999999999999999999999", "/events/99999999999999999999999", "/settings/endpoints/0"]
)
def test_an_id_too_large_for_the_database_is_not_found(admin, path):
    assert admin.get(path).status_code == 404
