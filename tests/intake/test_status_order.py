"""Statuses out of order: `stale` and `current_status` settled in the intake transaction, race-safe
across two real gunicorn workers, and forgotten with the events after the retention period."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

import worker
from conftest import sign
from gateway.intake import samples
from gateway.storage import db

URL = "/api/webhooks/whatsapp"


def status_body(wamid: str, state: str) -> dict:
    """One status webhook as Meta sends it (samples follow Meta's reference)."""
    return samples.envelope([samples.statuses_change([samples.status(state, wamid_=wamid)])])


def settled(conn, wamid: str | None = None) -> list[tuple[str, bool, str]]:
    """(status, stale, current_status) of the stored status events, in commit order."""
    rows = conn.execute("SELECT body FROM events WHERE name = 'message.status_updated' ORDER BY id")
    found = [json.loads(r[0]) for r in rows]
    return [(b["status"], b["stale"], b["current_status"]) for b in found if wamid in (None, b["message_id"])]


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        (["sent", "delivered", "read"], [(s, False, s) for s in ("sent", "delivered", "read")]),
        (["read", "delivered"], [("read", False, "read"), ("delivered", True, "read")]),
        (
            ["delivered", "sent", "read"],
            [("delivered", False, "delivered"), ("sent", True, "delivered"), ("read", False, "read")],
        ),
        (["read", "played"], [("read", False, "read"), ("played", True, "read")]),  # played ranks with read
        (["played", "read"], [("played", False, "played"), ("read", True, "played")]),
        (
            ["read", "failed", "delivered"],
            [("read", False, "read"), ("failed", False, "failed"), ("delivered", True, "failed")],
        ),
        (["delivered", "deleted"], [("delivered", False, "delivered"), ("deleted", False, "delivered")]),  # no rank
        (["deleted", "sent"], [("deleted", False, "deleted"), ("sent", False, "sent")]),
    ],
)
def test_stale_and_current_status(post_webhook, conn, arrivals, expected):
    for state in arrivals:
        assert post_webhook(status_body("wamid.OUT", state)).status_code == 200
    assert settled(conn) == expected


def test_marks_are_per_message(post_webhook, conn):
    post_webhook(status_body("wamid.A", "read"))
    post_webhook(status_body("wamid.B", "delivered"))
    assert settled(conn, "wamid.B") == [("delivered", False, "delivered")]


def test_a_batch_in_one_body_is_settled_in_its_order(post_webhook, conn):
    statuses = [samples.status(s, wamid_="wamid.BATCH") for s in ("read", "sent", "delivered")]
    post_webhook(samples.envelope([samples.statuses_change(statuses)]))
    assert settled(conn) == [("read", False, "read"), ("sent", True, "read"), ("delivered", True, "read")]


def test_a_duplicate_status_makes_no_event_and_leaves_the_first_as_it_was(post_webhook, conn):
    read = status_body("wamid.DUP", "read")
    post_webhook(read)
    post_webhook(status_body("wamid.DUP", "delivered"))
    post_webhook(read)
    assert settled(conn) == [("read", False, "read"), ("delivered", True, "read")]


def test_a_stale_status_reaches_the_receiver_marked(post_webhook, add_endpoint, receiver, running_worker):
    add_endpoint(receiver.url)
    post_webhook(status_body("wamid.RCV", "read"))
    post_webhook(status_body("wamid.RCV", "delivered"))
    got = [json.loads(r.body) for r in receiver.wait_for(2)]
    assert sorted((b["status"], b["stale"], b["current_status"]) for b in got) == [
        ("delivered", True, "read"),
        ("read", False, "read"),
    ]


def test_what_is_known_is_forgotten_with_the_events_after_retention(post_webhook, conn):
    post_webhook(status_body("wamid.OLD", "read"))
    post_webhook(status_body("wamid.NEW", "read"))
    with db.transaction(conn):  # the first webhook is from 40 days ago
        conn.execute("UPDATE webhooks SET received_at = ? WHERE id = 1", (time.time() - 40 * 86400,))
    worker.prune(conn, retention_days=30)
    assert settled(conn) == [("read", False, "read")]
    post_webhook(status_body("wamid.OLD", "delivered"))
    post_webhook(status_body("wamid.NEW", "delivered"))
    assert settled(conn, "wamid.OLD") == [("delivered", False, "delivered")]  # nothing known any more
    assert settled(conn, "wamid.NEW")[-1] == ("delivered", True, "read")


@pytest.mark.engines
def test_read_and_delivered_at_once_in_two_web_processes(processes, storage_database):
    """Two gunicorn workers take `read` and `delivered` for one message at the same moment:
    whichever commits first, exactly one `read` and it is not stale, and `delivered` is stale
    exactly when it was committed after `read`."""
    base = processes.start_web(workers=2)
    messages = [f"wamid.RACE{n}" for n in range(40)]
    pairs = {
        state: [json.dumps(status_body(wamid, state)).encode() for wamid in messages] for state in ("read", "delivered")
    }
    answers: list[int] = []

    def post_all(state: str, barrier: threading.Barrier) -> None:
        session = requests.Session()
        for raw in pairs[state]:
            barrier.wait()
            response = session.post(base + URL, data=raw, headers={"X-Hub-Signature-256": sign(raw)}, timeout=10)
            answers.append(response.status_code)

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=post_all, args=(state, barrier)) for state in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 80
    conn = db.connect(storage_database)
    try:
        later_delivered = 0
        for wamid in messages:
            found = settled(conn, wamid)
            assert sorted(s for s, _, _ in found) == ["delivered", "read"]
            assert [(s, stale, cur) for s, stale, cur in found if s == "read"] == [("read", False, "read")]
            if found[0][0] == "read":  # read committed first: delivered came behind it
                assert found[1] == ("delivered", True, "read")
                later_delivered += 1
            else:
                assert found[0] == ("delivered", False, "delivered")
        # Both orders happened, so the two processes really raced.
        assert 0 < later_delivered < len(messages), later_delivered
    finally:
        conn.close()
