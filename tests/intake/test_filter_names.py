"""Event filters name what wahook makes: `webhook.test` (Send test) may be named by a pull, a
stream, `listen` and an endpoint, as the README says test sends arrive when named."""

from __future__ import annotations

import pytest

from conftest import cli_json
from gateway.delivery import send
from gateway.storage.db import get_db


@pytest.fixture
def test_sent(app, add_endpoint, receiver):
    """A `webhook.test` sent to a receiving endpoint; its event_id."""
    endpoint = add_endpoint(receiver.url)
    with app.app_context():
        assert send.send_test(get_db(), app.config["WAHOOK"], endpoint["id"]).ok
    return receiver.requests[-1].headers["X-Webhook-Id"]


def test_a_pull_naming_webhook_test_gets_the_test_sends(client, make_key, test_sent):
    auth = {"Authorization": f"Bearer {make_key('read')}"}
    named = client.get("/api/v1/events?events=webhook.test", headers=auth)
    assert named.status_code == 200, named.get_json()
    assert [e["event_id"] for e in named.get_json()["events"]] == [test_sent]
    # Without naming them, test sends stay out, as the README says.
    assert client.get("/api/v1/events", headers=auth).get_json()["events"] == []


def test_an_endpoint_may_name_webhook_test(runner, receiver):
    code, added = cli_json(runner, "endpoint", "add", receiver.url, "--events", "webhook.test,message.received")
    assert code == 0, added
    assert added["events"] == ["message.received", "webhook.test"]
