"""outbox.py: which endpoints an event goes to, and events the gateway makes itself."""

from __future__ import annotations

import json

import pytest

from gateway.delivery import endpoints, outbox
from gateway.storage.db import transaction

pytestmark = pytest.mark.engines


@pytest.mark.parametrize(
    ("wanted", "name", "chosen"),
    [
        ([], "message.received", True),
        ([], "campaign.completed", True),
        ([], "delivery.failed", False),  # operational events only where named
        ([], "gateway.silent", False),
        (["delivery.failed"], "delivery.failed", True),
        (["campaign.*"], "campaign.completed", True),
        (["campaign.*"], "campaign.sub.step", True),
        (["campaign.*"], "campaigns.completed", False),
        (["campaign.*"], "campaign", False),
        (["message.received"], "message.echo", False),
    ],
)
def test_selects(wanted, name, chosen):
    assert outbox.selects(wanted, name) is chosen


def make(conn, app, url, events=()):
    return endpoints.create(conn, app.config["WAHOOK"], url, events=list(events))


def deliveries_of(conn, event_id):
    return sorted(
        row[0] for row in conn.execute("SELECT endpoint_id FROM deliveries WHERE message_id = ?", (event_id,))
    )


def test_published_event_is_flat_deduplicated_and_kept_from_the_endpoint_it_is_about(app, conn):
    app.config["WAHOOK"]["delivery"]["allow_http"] = True
    app.config["WAHOOK"]["delivery"]["allow_private_urls"] = True
    about = make(conn, app, "http://127.0.0.1:9/a", ["endpoint.disabled"])
    other = make(conn, app, "http://127.0.0.1:9/b", ["endpoint.disabled"])
    everything = make(conn, app, "http://127.0.0.1:9/c")
    with transaction(conn):
        event_id = outbox.publish(
            conn, "endpoint.disabled", {"endpoint_id": about["id"]}, dedupe_key="x", exclude_endpoint=about["id"]
        )
    assert event_id and event_id.startswith("evt_")
    assert deliveries_of(conn, event_id) == [other["id"]]  # not `about`, not the empty filter
    assert everything["id"] not in deliveries_of(conn, event_id)
    body = json.loads(conn.execute("SELECT body FROM events WHERE event_id = ?", (event_id,)).fetchone()[0])
    assert body["event"] == "endpoint.disabled" and body["endpoint_id"] == about["id"]
    assert isinstance(body["timestamp"], int) and body["received_at"].endswith("Z")
    with transaction(conn):
        assert outbox.publish(conn, "endpoint.disabled", {}, dedupe_key="x") is None
    assert conn.execute("SELECT count(*) FROM events WHERE name = 'endpoint.disabled'").fetchone()[0] == 1
