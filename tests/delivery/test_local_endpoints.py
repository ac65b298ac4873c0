"""Local endpoints (SPEC 4 `local`): a receiver on the same machine or network, reachable over
http:// and loopback or private addresses with the global delivery rules left strict, never
link-local, multicast or reserved ones; set by CLI or on the settings page, no restart."""

from __future__ import annotations

import json

import pytest

from conftest import (
    cli_json,
    element,
    login,
    make_app,
    post_form,
    sign,
    text_message,
    wait_until,
    worker_in_process,
)
from gateway.delivery import doorbell
from gateway.net.safe_http import DeliveryError, Sender, check_url
from gateway.storage import db
from receiver import Receiver

STRICT = {"allow_http": False, "allow_private_urls": False}

# Every spelling of the cloud metadata address and its kin: never reachable, local or not.
NEVER_LOCAL = [
    ("169.254.169.254", "link-local"),
    ("2852039166", "link-local"),  # 169.254.169.254 as one number
    ("0xa9.0xfe.0xa9.0xfe", "link-local"),
    ("[::ffff:169.254.169.254]", "link-local"),
    ("[64:ff9b::a9fe:a9fe]", "link-local"),
    ("[2002:a9fe:a9fe::]", "link-local"),
    ("[fe80::1]", "link-local"),
    ("224.0.0.1", "multicast"),
    ("[ff02::1]", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 (an address refused, not one bound)
    ("192.0.2.1", "documentation"),
]
LOCAL_HOSTS = ["127.0.0.1", "localhost", "10.1.2.3", "172.16.0.9", "192.168.1.20", "100.64.0.7", "[::1]", "[fd00::5]"]


@pytest.fixture
def strict_app(tmp_path, redis_url):
    """An install with the default delivery rules: https:// and public addresses only."""
    application = make_app(tmp_path, redis_url, delivery=STRICT)
    doorbell.redis_connection(application.config["WAHOOK"]).flushall()
    yield application
    db.close_all()


@pytest.mark.parametrize("host", LOCAL_HOSTS)
def test_a_local_endpoint_may_use_http_and_loopback_or_private_addresses(host):
    url = f"http://{host}:9000/hook"
    refused = check_url(url, allow_http=False, allow_private=False)
    assert refused is not None and "mark the endpoint local" in refused
    assert check_url(url, allow_http=False, allow_private=False, local=True) is None


@pytest.mark.parametrize(("host", "kind"), NEVER_LOCAL)
def test_a_local_endpoint_never_reaches_link_local_multicast_or_reserved_addresses(host, kind):
    problem = check_url(f"http://{host}/latest/meta-data/", allow_http=False, allow_private=False, local=True)
    assert problem is not None and kind in problem
    assert "a local endpoint may use loopback and private addresses only" in problem
    assert "mark the endpoint local" not in problem


@pytest.fixture
def server():
    started = Receiver()
    yield started
    started.close()


def test_the_sender_lets_a_local_endpoint_through_and_keeps_its_connections_apart(server):
    strict = Sender(allow_http=False, allow_private=False)
    http_only = Sender(allow_http=True, allow_private=False)
    try:
        answer = strict.post(server.url, b"{}", {"Content-Type": "application/json"}, 5, local=True)
        assert answer.status_code == 200 and len(server.requests) == 1
        with pytest.raises(DeliveryError) as caught:
            strict.post(server.url, b"{}", {}, 5)
        assert caught.value.rule == "allow_http" and "mark the endpoint local" in caught.value.message
        with pytest.raises(DeliveryError) as caught:
            strict.post("http://169.254.169.254/latest/meta-data/", b"{}", {}, 5, local=True)
        assert caught.value.permanent and "link-local" in caught.value.message
        # A connection a local endpoint opened (and kept alive) is not lent to one that is not local.
        assert http_only.post(server.url, b"{}", {}, 5, local=True).status_code == 200
        with pytest.raises(DeliveryError) as caught:
            http_only.post(server.url, b"{}", {}, 5)
        assert caught.value.rule == "allow_private_urls" and caught.value.message.startswith("blocked: ")
        assert len(server.requests) == 2
    finally:
        strict.close()
        http_only.close()


def test_cli_adds_a_local_endpoint_that_gets_events_with_strict_global_rules(strict_app, server):
    runner = strict_app.test_cli_runner()
    code, refused = cli_json(runner, "endpoint", "add", server.url)
    assert code == 1 and refused["field"] == "url" and "--local" not in refused["error"]
    assert "mark the endpoint local" in refused["error"]
    code, added = cli_json(runner, "endpoint", "add", server.url, "--local")
    assert code == 0 and added["local"] is True and added["url"] == server.url
    code, listed = cli_json(runner, "endpoint", "list")
    assert [e["local"] for e in listed] == [True]
    code, metadata = cli_json(runner, "endpoint", "add", "http://169.254.169.254/latest/meta-data/", "--local")
    assert code == 1 and "link-local" in metadata["error"]

    client = strict_app.test_client()
    with worker_in_process(strict_app):
        body = json.dumps(text_message()).encode()
        headers = {"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"}
        answer = client.post("/api/webhooks/whatsapp", data=body, headers=headers)
        assert answer.status_code == 200
        wait_until(lambda: len(server.requests) >= 2, message="the contact and message events to arrive")
    assert {r.headers["X-Webhook-Event"] for r in server.requests} == {"contact.created", "message.received"}
    conn = db.connection(strict_app.config["WAHOOK"].database)
    assert conn.execute("SELECT count(*) FROM deliveries WHERE state = 'delivered'").fetchone()[0] == 2


def test_settings_page_sets_local_shows_it_and_refuses_to_unset_it_for_a_loopback_url(strict_app, server):
    client = strict_app.test_client()
    assert login(client).status_code == 303
    refused = post_form(client, "/settings/endpoints", {"url": server.url})
    assert refused.status_code == 400 and "mark the endpoint local" in refused.get_data(as_text=True)
    added = post_form(client, "/settings/endpoints", {"url": server.url, "local": "1"})
    assert added.status_code == 200, added.get_data(as_text=True)
    page = client.get("/settings").get_data(as_text=True)
    assert element(page, "endpoint-1-local") == "local"
    form = client.get("/settings/endpoints/1").get_data(as_text=True)
    assert 'id="local" name="local" value="1" checked' in form
    # Unticking it would leave an http:// loopback URL the rules refuse: said, and not saved.
    unticked = post_form(client, "/settings/endpoints/1", {"url": server.url, "format": "events"})
    assert unticked.status_code == 400 and "mark the endpoint local" in unticked.get_data(as_text=True)
    assert 'id="endpoint-1-local"' in client.get("/settings").get_data(as_text=True)
    test = post_form(client, "/settings/endpoints/1/test", follow_redirects=True)
    assert "Test delivered" in test.get_data(as_text=True)
    assert server.requests[-1].headers["X-Webhook-Event"] == "webhook.test"
