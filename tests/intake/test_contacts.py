"""Contact events: contact.created / contact.updated drawn in the intake transaction, ahead of
the message that caused them, deduplicated, and kept across restarts. Bodies follow Meta's
messages webhook reference, with the username fields (business-scoped user ids)."""

from __future__ import annotations

import copy
import json

import pytest

from app import create_app
from conftest import APP_SECRET, instance_sections, sign, text_message
from gateway.storage import db

pytestmark = pytest.mark.engines

PHONE_ID = "106540352242922"
USER = "16505551234"
BSUID = "US.13491208655302741918"


def stored(conn) -> list[dict]:
    """Every stored event body, in commit order (the order pull and stream list them)."""
    return [json.loads(row[0]) for row in conn.execute("SELECT body FROM events ORDER BY id")]


def names(conn) -> list[str]:
    return [body["event"] for body in stored(conn)]


def message(wamid: str, name: str | None = "Sheena Nelson", ts: str = "1749416383", **who) -> dict:
    """A text webhook; `who` replaces the sender (from, from_user_id) and contact ids (wa_id, user_id)."""
    body = text_message(wamid)
    value = body["entry"][0]["changes"][0]["value"]
    sent = value["messages"][0]
    sent["timestamp"] = ts
    contact = value["contacts"][0]
    if name is None:
        del contact["profile"]
    else:
        contact["profile"]["name"] = name
    for key in ("from", "from_user_id"):
        if key in who:
            sent.pop(key, None)
            if who[key] is not None:
                sent[key] = who[key]
    for key in ("wa_id", "user_id"):
        if key in who:
            contact.pop(key, None)
            if who[key] is not None:
                contact[key] = who[key]
    return body


def test_first_message_makes_contact_created_ahead_of_it(post_webhook, conn, add_endpoint, receiver):
    add_endpoint(receiver.url)
    assert post_webhook(message("wamid.1")).status_code == 200
    contact, sent = stored(conn)
    assert contact["event"] == "contact.created" and sent["event"] == "message.received"
    expected = {"wa_id": USER, "user_id": None, "name": "Sheena Nelson", "phone_number_id": PHONE_ID}
    assert {k: contact[k] for k in expected} == expected
    assert contact["timestamp"] == sent["timestamp"] == 1749416383
    assert contact["raw"] == {"profile": {"name": "Sheena Nelson"}, "wa_id": USER}
    ids = conn.execute("SELECT event_id, webhook_id FROM events ORDER BY id").fetchall()
    assert [r[0] for r in ids] == [contact["event_id"], sent["event_id"]]
    assert ids[0][1] == ids[1][1]  # the same webhook, the same transaction
    deliveries = [r[0] for r in conn.execute("SELECT event_name FROM deliveries ORDER BY id")]
    assert deliveries == ["contact.created", "message.received"]


def test_the_same_customer_again_makes_no_contact_event(post_webhook, conn):
    post_webhook(message("wamid.1"))
    post_webhook(message("wamid.2"))
    assert names(conn) == ["contact.created", "message.received", "message.received"]


def test_a_new_profile_name_makes_contact_updated_ahead_of_its_message(post_webhook, conn):
    post_webhook(message("wamid.1"))
    post_webhook(message("wamid.2", name="Sheena N. Nelson", ts="1749416400"))
    assert names(conn)[2:] == ["contact.updated", "message.received"]
    updated = stored(conn)[2]
    assert (updated["name"], updated["previous_name"], updated["wa_id"]) == ("Sheena N. Nelson", "Sheena Nelson", USER)


def test_duplicates_make_no_second_contact_event(post_webhook, conn):
    first, renamed = message("wamid.1"), message("wamid.2", name="Sheena N.", ts="1749416400")
    for body in (first, first, renamed, renamed, first):  # Meta's retries, one of them late
        assert post_webhook(body).status_code == 200
    assert names(conn) == ["contact.created", "message.received", "contact.updated", "message.received"]


def test_an_older_message_arriving_late_does_not_rename(post_webhook, conn):
    post_webhook(message("wamid.NEW", name="New Name", ts="1749416400"))
    post_webhook(message("wamid.OLD", name="Old Name", ts="1749416000"))
    assert names(conn) == ["contact.created", "message.received", "message.received"]


def test_a_message_without_a_profile_name_keeps_the_name(post_webhook, conn):
    post_webhook(message("wamid.1"))
    post_webhook(message("wamid.2", name=None, ts="1749416400"))
    assert names(conn) == ["contact.created", "message.received", "message.received"]


def test_a_user_id_where_there_was_none_makes_contact_updated(post_webhook, conn):
    post_webhook(message("wamid.1"))
    post_webhook(message("wamid.2", ts="1749416400", from_user_id=BSUID, user_id=BSUID))
    updated = stored(conn)[2]
    assert updated["event"] == "contact.updated"
    assert (updated["wa_id"], updated["user_id"]) == (USER, BSUID)
    assert updated["name"] == updated["previous_name"] == "Sheena Nelson"


def test_a_customer_with_no_phone_is_known_by_user_id(post_webhook, conn):
    hidden = {"from": None, "wa_id": None, "from_user_id": BSUID, "user_id": BSUID}
    post_webhook(message("wamid.1", **hidden))
    post_webhook(message("wamid.2", ts="1749416400", **hidden))
    created = stored(conn)[0]
    assert (created["event"], created["wa_id"], created["user_id"]) == ("contact.created", None, BSUID)
    assert names(conn)[1:] == ["message.received", "message.received"]
    assert stored(conn)[1]["from"] == ""
    # The phone is shared later: the same contact, now with its wa_id, not a new one.
    post_webhook(message("wamid.3", ts="1749416500", from_user_id=BSUID, user_id=BSUID))
    assert names(conn)[3:] == ["contact.updated", "message.received"]
    assert (stored(conn)[3]["wa_id"], stored(conn)[3]["user_id"]) == (USER, BSUID)


def test_contacts_are_kept_per_business_phone_number(post_webhook, conn):
    post_webhook(message("wamid.1"))
    other = message("wamid.2")
    other["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999000111"
    post_webhook(other)
    created = [b for b in stored(conn) if b["event"] == "contact.created"]
    assert [b["phone_number_id"] for b in created] == [PHONE_ID, "999000111"]


def test_no_wa_id_nor_user_id_makes_no_contact_event_and_the_message_goes_out(post_webhook, conn, add_endpoint):
    add_endpoint("http://127.0.0.1:9/hook")
    assert post_webhook(message("wamid.ANON", **{"from": None, "wa_id": None})).status_code == 200
    assert names(conn) == ["message.received"]
    assert [r[0] for r in conn.execute("SELECT event_name FROM deliveries")] == ["message.received"]


def test_user_ids_that_are_not_strings_are_stored_as_text_or_left_out(post_webhook, conn):
    post_webhook(message("wamid.1", **{"from": None, "wa_id": None, "from_user_id": 4242, "user_id": 4242}))
    post_webhook(message("wamid.2", **{"from": None, "wa_id": None, "from_user_id": {"x": 1}, "user_id": ["y"]}))
    assert [(b["event"], b.get("user_id")) for b in stored(conn)] == [
        ("contact.created", "4242"),
        ("message.received", None),
        ("message.received", None),
    ]


def test_a_4096_character_name_is_kept_whole(post_webhook, conn):
    long_name = "N" * 4095 + "\u00e9"
    assert post_webhook(message("wamid.1", name=long_name)).status_code == 200
    contact, sent = stored(conn)
    assert contact["name"] == long_name and sent["contact_name"] == long_name
    renamed = "\U0001f33f" * 4096
    assert post_webhook(message("wamid.2", name=renamed, ts="1749416400")).status_code == 200
    updated = stored(conn)[2]
    assert (updated["name"], updated["previous_name"]) == (renamed, long_name)


def test_contact_events_across_restarts(tmp_path, redis_url, post_webhook, conn, storage_database):
    post_webhook(message("wamid.1"))
    db.close_all()  # the process ends
    sections = instance_sections(tmp_path, redis_url, storage_database)
    again = create_app({"TESTING": True, "config_path": str(tmp_path / "config.toml"), **sections})
    client = again.test_client()

    def post(body: dict) -> int:
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, APP_SECRET)}
        return client.post("/api/webhooks/whatsapp", data=raw, headers=headers).status_code

    assert post(message("wamid.2", ts="1749416400")) == 200
    assert post(message("wamid.3", name="Sheena Renamed", ts="1749416500")) == 200
    assert post(copy.deepcopy(message("wamid.1"))) == 200  # a retry from before the restart
    check = db.connect(storage_database)
    try:
        assert names(check) == [
            "contact.created",
            "message.received",
            "message.received",
            "contact.updated",
            "message.received",
        ]
    finally:
        check.close()
