"""The Meta parser: every row of the event table, every message type, batches, duplicates,
and bodies Meta never documented. Bodies follow Meta's webhook reference examples."""

from __future__ import annotations

import calendar
import copy
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.intake import meta_parser, samples
from gateway.intake.event_catalog import EVENT_GROUPS, EVENT_NAMES, event_id_for
from gateway.intake.meta_parser import parse

WABA = "102290129340398"
PHONE_ID = "106540352242922"
DISPLAY = "15550783881"
USER = "16505551234"
RECEIVED = calendar.timegm((2026, 11, 20, 21, 40, 0)) + 0.25
COMMON = ["event", "event_id", "timestamp", "received_at", "waba_id", "phone_number_id", "display_phone_number"]
MESSAGE_KEYS = [
    *COMMON,
    *("message_id", "from", "from_user_id", "from_parent_user_id", "contact_name", "contact_user_id"),
    *("contact_parent_user_id", "type", "content", "text", "media", "location", "interactive"),
    *("reaction", "contacts", "context", "referral", "errors", "original_message_id", "raw"),
]


def webhook(*changes: dict, entry_id: str = WABA, time: int | None = None) -> dict:
    entry = {"id": entry_id, "changes": list(changes)}
    if time is not None:
        entry["time"] = time
    return {"object": "whatsapp_business_account", "entry": [entry]}


def messages(*msgs: dict, contacts: list | None = None, statuses: list | None = None) -> dict:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PHONE_ID},
    }
    value["contacts"] = [{"profile": {"name": "Sheena Nelson"}, "wa_id": USER}] if contacts is None else contacts
    if msgs:
        value["messages"] = list(msgs)
    if statuses:
        value["statuses"] = statuses
    return {"value": value, "field": "messages"}


def msg(
    mtype: str, payload=None, wamid: str = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", **extra
):
    found = {"from": USER, "id": wamid, "timestamp": "1749416383", "type": mtype, **extra}
    if payload is not None:
        found[mtype] = payload
    return found


def only(body: dict) -> meta_parser.Event:
    found = parse(body, RECEIVED)
    assert len(found) == 1, [e.name for e in found]
    return found[0]


def received(message: dict, **kw) -> dict:
    event = only(webhook(messages(message, **kw)))
    assert event.name == "message.received"
    assert list(event.body) == MESSAGE_KEYS  # the same keys, in the same order, for every type
    return event.body


def test_event_names_follow_the_contract_table():
    assert EVENT_NAMES == [
        "message.received",
        "message.status_updated",
        "message.echo",
        "template.status_changed",
        "template.quality_changed",
        "template.category_changed",
        "account.updated",
        "account.quality_event",
    ]
    assert sorted(sum(EVENT_GROUPS.values(), [])) == sorted(EVENT_NAMES)


def test_text_message_carries_the_common_fields_and_raw():
    message = msg("text", {"body": "Does it come in another color?"})
    event = only(webhook(messages(message)))
    body = event.body
    assert body["event"] == "message.received"
    assert body["event_id"] == event_id_for(event.dedupe_key)
    assert body["timestamp"] == 1749416383
    assert body["received_at"] == "2026-11-20T21:40:00Z"
    assert (body["waba_id"], body["phone_number_id"], body["display_phone_number"]) == (WABA, PHONE_ID, DISPLAY)
    assert body["message_id"] == message["id"]
    assert (body["from"], body["contact_name"], body["type"]) == (USER, "Sheena Nelson", "text")
    assert body["content"] == body["text"] == "Does it come in another color?"
    assert body["raw"] is message
    assert list(body)[-1] == "raw"
    json.dumps(body)


MEDIA = {"mime_type": "image/jpeg", "sha256": "a" * 64, "id": "1003383421387256"}


@pytest.mark.parametrize(
    ("mtype", "payload", "content", "media"),
    [
        ("image", {**MEDIA, "caption": "In blue"}, "In blue", {"caption": "In blue", "voice": False}),
        ("video", {**MEDIA, "mime_type": "video/mp4"}, "", {"mime_type": "video/mp4", "filename": None}),
        ("audio", {**MEDIA, "mime_type": "audio/ogg; codecs=opus", "voice": True}, "", {"voice": True}),
        ("audio", {**MEDIA, "mime_type": "audio/mpeg", "voice": False}, "", {"voice": False}),
        ("voice", {**MEDIA, "mime_type": "audio/ogg"}, "", {"voice": True}),
        ("document", {**MEDIA, "filename": "invoice.pdf"}, "invoice.pdf", {"filename": "invoice.pdf"}),
        ("document", {**MEDIA, "filename": "a.pdf", "caption": "Our quote"}, "Our quote", {"filename": "a.pdf"}),
        ("sticker", {**MEDIA, "mime_type": "image/webp", "animated": False}, "", {"caption": None}),
    ],
)
def test_media_messages(mtype, payload, content, media):
    body = received(msg(mtype, payload))
    assert body["type"] == mtype and body["content"] == content
    assert set(body["media"]) == {"id", "mime_type", "sha256", "filename", "caption", "voice"}
    assert body["media"]["id"] == MEDIA["id"] and body["media"]["sha256"] == MEDIA["sha256"]
    assert body["media"].items() >= media.items()
    assert body["text"] is None and body["location"] is None


def test_location_with_and_without_a_name():
    pin = {"latitude": 37.483872, "longitude": -122.148358, "name": "Lucky Shrub", "address": "1 Hacker Way"}
    body = received(msg("location", pin))
    assert body["content"] == "Lucky Shrub" and body["location"] == pin
    body = received(msg("location", {"latitude": 37.48, "longitude": -122.14}))
    assert body["content"] == "37.48,-122.14"
    assert body["location"] == {"latitude": 37.48, "longitude": -122.14, "name": None, "address": None}


def test_shared_contacts():
    cards = [
        {"name": {"formatted_name": "Ana Lima", "first_name": "Ana"}, "phones": [{"phone": "+5511912345678"}]},
        {"name": {"formatted_name": "Bo Chen"}, "emails": [{"email": "bo@example.com"}]},
    ]
    body = received(msg("contacts", contacts=cards))
    assert body["content"] == "Ana Lima, Bo Chen" and body["contacts"] == cards


@pytest.mark.parametrize(
    ("kind", "reply", "expected"),
    [
        ("button_reply", {"id": "yes", "title": "Yes"}, {"id": "yes", "title": "Yes", "description": None}),
        ("list_reply", {"id": "s3", "title": "Tue 10:00", "description": "Pickup"}, {"title": "Tue 10:00"}),
        (
            "nfm_reply",
            {"name": "flow", "body": "Sent", "response_json": '{"size": "M"}'},
            {"title": "Sent", "id": None},
        ),
        ("nfm_reply", {"name": "address_message", "response_json": "{}"}, {"title": "address_message"}),
    ],
)
def test_interactive_replies(kind, reply, expected):
    context = {"from": DISPLAY, "id": "wamid.ORIGINAL"}
    context_out = {"message_id": "wamid.ORIGINAL", "from": DISPLAY}
    message = msg("interactive", {"type": kind, kind: reply}, context=context)
    body = received(message)
    assert body["interactive"]["type"] == kind and body["interactive"].items() >= expected.items()
    assert body["content"] == expected["title"]
    assert body["context"] == {**dict.fromkeys(("forwarded", "frequently_forwarded"), False), **context_out}
    if kind == "nfm_reply":
        assert body["raw"]["interactive"]["nfm_reply"]["response_json"] == reply["response_json"]


def test_reaction_and_removed_reaction():
    body = received(msg("reaction", {"message_id": "wamid.MINE", "emoji": "\U0001f44d"}))
    assert body["reaction"] == {"message_id": "wamid.MINE", "emoji": "\U0001f44d"} and body["content"] == "\U0001f44d"
    body = received(msg("reaction", {"message_id": "wamid.MINE"}))
    assert body["reaction"] == {"message_id": "wamid.MINE", "emoji": None} and body["content"] == ""


@pytest.mark.parametrize(
    ("mtype", "payload", "extra", "content"),
    [
        ("button", {"payload": "STOP", "text": "Stop promotions"}, {}, "Stop promotions"),
        (
            "system",
            {"body": "User A changed from 1 to 2", "wa_id": "2", "type": "user_changed_number"},
            {},
            "User A changed from 1 to 2",
        ),
        ("request_welcome", None, {}, ""),
        ("poll_vote", {"title": "Best day?", "option": "Tue"}, {}, "Best day?"),  # a type from the future
        ("revoke", {"original_message_id": "wamid.OLD"}, {}, ""),
    ],
)
def test_other_message_types_keep_their_type(mtype, payload, extra, content):
    body = received(msg(mtype, payload, **extra))
    assert body["type"] == mtype and body["content"] == content
    assert body["raw"]["type"] == mtype


def test_order_summary():
    items = [
        {"product_retailer_id": "mug", "quantity": 2, "item_price": 12.5, "currency": "USD"},
        {"product_retailer_id": "tee", "quantity": 1, "item_price": 20, "currency": "USD"},
    ]
    body = received(msg("order", {"catalog_id": "1948", "text": "Gift wrap", "product_items": items}))
    assert body["content"] == "Order of 3 items (45.00 USD): Gift wrap"


def test_unsupported_message_carries_its_errors():
    error = {"code": 131051, "title": "Message type unknown", "message": "Message type unknown"}
    body = received(msg("unsupported", None, errors=[{**error, "error_data": {"details": "Not supported."}}]))
    assert body["type"] == "unsupported"
    assert body["errors"] == [{**error, "details": "Not supported."}]


def test_edit_reads_the_new_version():
    new = {"type": "image", "image": {**MEDIA, "caption": "Blue\nnot green"}}
    body = received(msg("edit", {"original_message_id": "wamid.OLD", "message": new}))
    assert body["type"] == "edit" and body["original_message_id"] == "wamid.OLD"
    assert body["content"] == "Blue not green" and body["media"]["caption"] == "Blue\nnot green"


def test_referral_and_forwarded_context():
    referral = {"source_url": "https://fb.me/x", "source_type": "ad", "source_id": "1202", "ctwa_clid": "Afc"}
    context = {"forwarded": True, "frequently_forwarded": True}
    body = received(msg("text", {"body": "Info?"}, referral=referral, context=context))
    assert body["referral"] == referral
    assert body["context"] == {"message_id": None, "from": None, "forwarded": True, "frequently_forwarded": True}


def test_text_content_is_the_whole_body_never_cut():
    whole = "line one\nline two\t" + "x" * (4096 - 18)
    assert len(whole) == 4096  # the longest text WhatsApp allows
    body = received(msg("text", {"body": whole}))
    assert body["content"] == whole and body["text"] == whole


def test_other_summaries_are_one_short_line():
    body = received(msg("image", {**MEDIA, "caption": "line one\nline two\t" + "x" * 1000}))
    assert "\n" not in body["content"] and len(body["content"]) <= 256
    assert body["content"].startswith("line one line two x")


def test_contact_name_is_matched_by_wa_id():
    contacts = [
        {"profile": {"name": "Tom Okafor"}, "wa_id": "447700900123"},
        {"profile": {"name": "Sheena Nelson"}, "wa_id": USER},
    ]
    first = msg("text", {"body": "a"}, wamid="wamid.A")
    second = msg("text", {"body": "b"}, wamid="wamid.B", **{"from": "447700900123"})
    stranger = msg("text", {"body": "c"}, wamid="wamid.C", **{"from": "4915112345678"})
    found = parse(webhook(messages(first, second, stranger, contacts=contacts)), RECEIVED)
    assert [e.body["contact_name"] for e in found] == ["Sheena Nelson", "Tom Okafor", ""]


def status(state: str, wamid: str = "wamid.OUT1", **extra) -> dict:
    return {"id": wamid, "status": state, "timestamp": "1750263773", "recipient_id": USER, **extra}


def test_status_updates():
    conversation = {"id": "6ceb9d92", "expiration_timestamp": "1750350173", "origin": {"type": "service"}}
    pricing = {"billable": True, "pricing_model": "PMP", "category": "service", "type": "regular"}
    event = only(webhook(messages(statuses=[status("delivered", conversation=conversation, pricing=pricing)])))
    assert event.name == "message.status_updated" and event.dedupe_key == "status:wamid.OUT1:delivered"
    body = event.body
    assert list(body) == COMMON + [
        *("message_id", "status", "recipient", "recipient_user_id", "recipient_parent_user_id", "errors"),
        *("conversation", "pricing", "stale", "current_status", "raw"),
    ]
    assert (body["message_id"], body["status"], body["recipient"]) == ("wamid.OUT1", "delivered", USER)
    assert body["timestamp"] == 1750263773
    assert body["conversation"] == conversation and body["pricing"] == pricing and body["errors"] == []
    played = only(webhook(messages(statuses=[status("played")]))).body
    assert played["status"] == "played" and played["conversation"] is None and played["pricing"] is None


def test_failed_status_errors():
    error = {"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable"}
    details = "Receiver is incapable of receiving this message"
    raw_error = {**error, "error_data": {"details": details}, "href": "https://developers.facebook.com/docs/"}
    body = only(webhook(messages(statuses=[status("failed", errors=[raw_error])]))).body
    assert body["errors"] == [{**error, "details": details}]


def test_echo():
    echo = {"from": DISPLAY, "to": USER, "id": "wamid.SAME", "timestamp": "1739321024", "type": "text"}
    echo["text"] = {"body": "Here's the info you requested!"}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PHONE_ID},
    }
    event = only(webhook({"value": {**value, "message_echoes": [echo]}, "field": "smb_message_echoes"}))
    assert event.name == "message.echo" and event.body["raw"] is echo
    assert list(event.body) == COMMON + ["message_id", "from", "to", "to_user_id", "type", "content", "raw"]
    assert (event.body["message_id"], event.body["to"], event.body["type"]) == ("wamid.SAME", USER, "text")
    assert event.body["content"] == "Here's the info you requested!" and event.body["timestamp"] == 1739321024
    incoming = only(webhook(messages(msg("text", {"body": "x"}, wamid="wamid.SAME"))))
    assert incoming.dedupe_key != event.dedupe_key


def template_change(field: str, **value) -> dict:
    base = {"message_template_id": 1689556908129832, "message_template_name": "order_confirmation"}
    return {"value": {**base, "message_template_language": "en-US", **value}, "field": field}


def test_template_status():
    change = template_change(
        "message_template_status_update", event="APPROVED", reason="NONE", message_template_category="UTILITY"
    )
    event = only(webhook(change, time=1751247548))
    assert event.name == "template.status_changed"
    body = event.body
    assert body["timestamp"] == 1751247548 and body["raw"] is change["value"]
    assert body["template_id"] == "1689556908129832"  # a string, like every other id
    assert (body["template_name"], body["language"]) == ("order_confirmation", "en-US")
    assert (body["status"], body["reason"], body["category"]) == ("approved", "NONE", "UTILITY")
    deletion = only(
        webhook(template_change("message_template_status_update", event="PENDING_DELETION", reason=None), time=1)
    )
    assert deletion.body["status"] == "pending_deletion" and deletion.body["reason"] is None


@pytest.mark.parametrize("field", ["message_template_quality_update", "message_template_status_update"])
def test_template_quality(field):
    # Meta's own reference example sends quality updates under the status field name.
    change = template_change(field, previous_quality_score="GREEN", new_quality_score="YELLOW")
    body = only(webhook(change, time=1674864290)).body
    assert body["event"] == "template.quality_changed"
    assert (body["previous_quality"], body["quality"], body["template_id"]) == ("GREEN", "YELLOW", "1689556908129832")


def test_template_category_done_and_announced():
    change = template_change("template_category_update", previous_category="UTILITY", new_category="MARKETING")
    done = only(webhook(change, time=5))
    assert done.name == "template.category_changed"
    assert (done.body["previous_category"], done.body["category"]) == ("UTILITY", "MARKETING")
    assert done.body["correct_category"] is None
    soon = template_change(
        "template_category_update",
        new_category="UTILITY",
        correct_category="MARKETING",
        category_update_timestamp=1746169200,
    )
    body = only(webhook(soon, time=1746082800)).body
    assert (body["previous_category"], body["category"], body["correct_category"]) == (None, "UTILITY", "MARKETING")
    assert body["category_update_timestamp"] == 1746169200


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        (
            "account_update",
            {"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"}},
            "ACCOUNT_VIOLATION",
        ),
        ("account_update", {"event": "PARTNER_ADDED", "waba_info": {"waba_id": "980198427658004"}}, "PARTNER_ADDED"),
        ("account_review_update", {"decision": "APPROVED"}, "APPROVED"),
        (
            "business_capability_update",
            {"max_daily_conversations_per_business": "TIER_2K", "max_phone_numbers_per_waba": 25},
            None,
        ),
        (
            "phone_number_name_update",
            {"display_phone_number": DISPLAY, "decision": "REJECTED", "rejection_reason": "NAME_FORMAT_UNACCEPTABLE"},
            "REJECTED",
        ),
    ],
)
def test_account_updated(field, value, kind):
    event = only(webhook({"value": value, "field": field}, time=1739321024))
    assert event.name == "account.updated"
    assert (event.body["type"], event.body["field"], event.body["timestamp"]) == (kind, field, 1739321024)
    assert list(event.body) == COMMON + ["type", "field", "raw"] and event.body["raw"] is value


def test_phone_number_quality_and_alerts():
    value = {"display_phone_number": DISPLAY, "event": "DOWNGRADE", "current_limit": "TIER_1K"}
    body = only(webhook({"value": value, "field": "phone_number_quality_update"}, time=9)).body
    assert body["event"] == "account.quality_event"
    assert (body["type"], body["user_phone"], body["display_phone_number"]) == ("DOWNGRADE", None, DISPLAY)
    alert = {"alert_severity": "CRITICAL", "alert_status": "ACTIVE", "alert_type": "OBA_REJECTED"}
    value = {"entity_type": "PHONE_NUMBER", "entity_id": PHONE_ID, "alert_info": alert}
    body = only(webhook({"field": "account_alerts", "value": value}, time=9)).body
    assert (body["type"], body["field"], body["phone_number_id"]) == ("OBA_REJECTED", "account_alerts", PHONE_ID)


def test_user_preferences_each_become_an_event():
    pref = {"category": "marketing_messages", "detail": "User requested to stop marketing messages"}
    prefs = [
        {**pref, "wa_id": USER, "value": "stop", "timestamp": 1731705721},
        {**pref, "wa_id": "447700900123", "value": "resume", "timestamp": 1731705722},
    ]
    change = messages(contacts=[{"wa_id": USER}])
    change.update(field="user_preferences")
    change["value"]["user_preferences"] = prefs
    found = parse(webhook(change), RECEIVED)
    assert [(e.name, e.body["type"], e.body["user_phone"]) for e in found] == [
        ("account.quality_event", "marketing_opt_out", USER),
        ("account.quality_event", "marketing_opt_in", "447700900123"),
    ]
    assert [e.body["timestamp"] for e in found] == [1731705721, 1731705722]
    assert found[0].dedupe_key != found[1].dedupe_key and found[0].body["display_phone_number"] == DISPLAY


def test_unknown_field_is_forwarded_whole():
    value = {"messaging_product": "whatsapp", "calls": [{"id": "wacid.1", "event": "connect"}]}
    event = only(webhook({"field": "calls", "value": value}, time=3))
    assert event.name == "whatsapp.calls"
    assert list(event.body) == COMMON + ["field", "raw"]
    assert event.body["field"] == "calls" and event.body["raw"] is value
    odd = only(webhook({"field": "Weird Field\r\nX-Injected: 1", "value": {}}, time=3))
    assert odd.name == "whatsapp.weird_field__x-injected__1" and odd.body["field"] == "Weird Field\r\nX-Injected: 1"
    assert only(webhook({"value": {}}, time=3)).name == "whatsapp.unknown"


def test_a_known_field_with_nothing_recognisable_is_still_forwarded():
    errors = [{"code": 131000, "title": "Something went wrong", "message": "Something went wrong"}]
    change = messages(contacts=[])
    change["value"]["errors"] = errors
    event = only(webhook(change, time=4))
    assert event.name == "whatsapp.messages" and event.body["raw"]["errors"] == errors


def test_batches_yield_every_update():
    first = messages(
        msg("text", {"body": "one"}, wamid="wamid.M1"),
        msg("image", MEDIA, wamid="wamid.M2"),
        statuses=[status("sent", "wamid.S1"), status("delivered", "wamid.S1"), status("read", "wamid.S2")],
    )
    second = messages(msg("reaction", {"message_id": "wamid.S1", "emoji": "x"}, wamid="wamid.M3"))
    template = template_change("message_template_status_update", event="REJECTED", reason="INVALID_FORMAT")
    body = webhook(first, second, time=10)
    body["entry"].append({"id": "2949482758682047", "time": 11, "changes": [template, {"field": "calls", "value": {}}]})
    found = parse(body, RECEIVED)
    assert [e.name for e in found] == ["message.received"] * 2 + ["message.status_updated"] * 3 + [
        "message.received",
        "template.status_changed",
        "whatsapp.calls",
    ]
    ids = ["wamid.M1", "wamid.M2", "wamid.S1", "wamid.S1", "wamid.S2", "wamid.M3"]
    assert [e.body["message_id"] for e in found[:6]] == ids
    assert found[6].body["waba_id"] == "2949482758682047"
    assert len({e.dedupe_key for e in found}) == len({e.body["event_id"] for e in found}) == 8


def keys(body: dict) -> list[str]:
    return [e.dedupe_key for e in parse(body, RECEIVED)]


def test_duplicates_share_keys():
    body = samples.sample("batch")
    assert keys(body) == keys(copy.deepcopy(body))
    later = parse(body, RECEIVED + 99)
    assert [e.body["event_id"] for e in parse(body, RECEIVED)] == [e.body["event_id"] for e in later]
    assert keys(webhook(messages(msg("text", {"body": "a"}))))[0] == "message:" + msg("text")["id"]
    # A status is keyed by (id, status): the same id with another status is news.
    assert keys(webhook(messages(statuses=[status("sent"), status("sent"), status("read")]))) == [
        "status:wamid.OUT1:sent",
        "status:wamid.OUT1:sent",
        "status:wamid.OUT1:read",
    ]


def test_other_updates_are_keyed_by_content_and_entry_time():
    change = template_change("message_template_status_update", event="APPROVED")
    base = keys(webhook(change, time=100))
    assert base == keys(webhook(copy.deepcopy(change), time=100))
    assert base != keys(webhook(change, time=101))
    assert base != keys(webhook(template_change("message_template_status_update", event="PAUSED"), time=100))
    assert base != keys(webhook(change, time=100, entry_id="other-waba"))
    reordered = {"field": change["field"], "value": dict(reversed(list(change["value"].items())))}
    assert base == keys(webhook(reordered, time=100))


def test_messages_without_an_id_fall_back_to_content():
    first, second = msg("text", {"body": "a"}), msg("text", {"body": "b"})
    del first["id"], second["id"]
    body = webhook(messages(first, second), time=7)
    found = keys(body)
    assert len(set(found)) == 2 and all(k.startswith("change:") for k in found)
    assert found == keys(copy.deepcopy(body))


def test_keys_are_stable_across_processes():
    body = samples.sample("batch")
    body["entry"][0]["changes"].append({"field": "calls", "value": {"b": 1, "a": [2, 3]}})
    code = (
        "import json, sys; from gateway.intake import meta_parser; "
        "print(json.dumps([e.dedupe_key for e in meta_parser.parse(json.load(sys.stdin), 0)]))"
    )
    here = os.path.dirname(os.path.dirname(os.path.dirname(meta_parser.__file__)))  # the checkout
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(body), capture_output=True, text=True, env=env, cwd=here
        )
        assert json.loads(run.stdout) == keys(body), run.stderr


def test_timestamp_falls_back_to_entry_time_then_receipt():
    message = msg("text", {"body": "a"}, timestamp="soon")
    assert only(webhook(messages(message), time=1700000000)).body["timestamp"] == 1700000000
    assert only(webhook(messages(message))).body["timestamp"] == int(RECEIVED)
    assert only(webhook(messages(msg("text", timestamp=1700000001)))).body["timestamp"] == 1700000001


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"object": "page", "entry": [{"id": "1", "changes": [messages(msg("text", {"body": "hi"}))]}]},
        {"object": "instagram", "entry": []},
        {"object": "whatsapp_business_account"},
        {"object": "whatsapp_business_account", "entry": None},
        {"object": "whatsapp_business_account", "entry": {"id": "1"}},
        {"object": "whatsapp_business_account", "entry": ["x", 3, None, {"id": 1}]},
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": {"field": "messages"}}]},
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": ["x", None, 5]}]},
    ],
)
def test_bodies_without_readable_changes_make_no_events(body):
    assert parse(body, RECEIVED) == []


def test_wrong_types_stay_in_raw():
    odd = [
        messages({"id": 5, "from": ["x"], "type": {"a": 1}, "timestamp": True}, "not a message", contacts="nobody"),
        messages(statuses=["x", {"id": None, "status": 4, "errors": "none", "conversation": [1]}]),
        {"field": "messages", "value": {"messages": {"id": "wamid.X"}}},
        {"field": "message_template_status_update", "value": "APPROVED"},
        {"field": "account_alerts", "value": {"alert_info": ["x"]}},
        {"field": 42, "value": None},
    ]
    found = parse(webhook(*odd, time=1), RECEIVED)
    assert [e.name for e in found] == [
        "message.received",
        "message.status_updated",
        "whatsapp.messages",
        "template.status_changed",
        "account.quality_event",
        "whatsapp.unknown",
    ]
    message = found[0].body
    assert message["message_id"] == "5" and message["type"] == message["from"] == message["content"] == ""
    assert message["timestamp"] == 1 and message["event_id"] == event_id_for(found[0].dedupe_key)
    assert found[1].body["errors"] == [] and found[1].body["conversation"] is None and found[1].body["status"] == "4"
    assert found[3].body["raw"] == "APPROVED" and found[3].body["status"] is None
    for event in found:
        json.dumps(event.body)


def test_a_parser_bug_forwards_the_change_whole(monkeypatch):
    def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(meta_parser, "message_fields", broken)
    change = messages(msg("text", {"body": "a"}), statuses=[status("sent")])
    found = parse(
        webhook(change, template_change("message_template_status_update", event="APPROVED"), time=2), RECEIVED
    )
    assert [e.name for e in found] == ["whatsapp.messages", "template.status_changed"]
    assert found[0].body["raw"] is change["value"]


EXPECTED_KIND_EVENTS = {
    **{kind: "message.received" for kind in samples.KINDS},
    "status": "message.status_updated",
    "status_failed": "message.status_updated",
    "status_username": "message.status_updated",
    "echo": "message.echo",
    "template": "template.status_changed",
    "template_quality": "template.quality_changed",
    "template_category": "template.category_changed",
    "account_update": "account.updated",
    "account_review": "account.updated",
    "business_capability": "account.updated",
    "phone_number_name": "account.updated",
    "phone_number_quality": "account.quality_event",
    "account_alerts": "account.quality_event",
    "user_preferences": "account.quality_event",
    "calls": "whatsapp.calls",
}


@pytest.mark.parametrize("kind", samples.KINDS)
def test_every_sample_kind_parses(kind):
    first, again = parse(samples.sample(kind), RECEIVED), parse(samples.sample(kind), RECEIVED)
    assert first and first[0].name == EXPECTED_KIND_EVENTS[kind]
    assert not {e.dedupe_key for e in first} & {e.dedupe_key for e in again}  # each call is news
    for event in first:
        json.dumps(event.body)


def test_samples_cover_every_event_and_message_type():
    names = {e.name for kind in samples.KINDS for e in parse(samples.sample(kind), RECEIVED)}
    assert set(EVENT_NAMES) <= names
    types = {
        e.body["raw"].get("type") for e in parse(samples.sample("batch"), RECEIVED) if e.name == "message.received"
    }
    assert types == {"text", "image", "reaction"}
    statuses = [e.body["status"] for e in parse(samples.sample("status"), RECEIVED)]
    assert statuses == ["sent", "delivered", "read"]
    assert only(samples.sample("status_failed")).body["errors"][0]["code"] == 131049
    assert len(parse(samples.status_sample(250), RECEIVED)) == 250
    with pytest.raises(KeyError, match="known kinds: text, image"):
        samples.sample("carrier_pigeon")


# -- property tests: no JSON object makes parse raise, and every event body is JSON


def words(value) -> set[str]:
    """The keys and short strings of a body, so generated bodies speak Meta's vocabulary."""
    if isinstance(value, dict):
        return set(value) | {w for child in value.values() for w in words(child)}
    if isinstance(value, list):
        return {w for child in value for w in words(child)}
    # Only word-like strings: ids and times differ per sample, and examples should replay.
    return {value} if isinstance(value, str) and value.replace("_", "").isalpha() else set()


VOCABULARY = sorted({w for kind in samples.KINDS for w in words(samples.sample(kind))})
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(VOCABULARY)
    | st.sampled_from(["1749416383", "stop", "PHONE_NUMBER", "marketing_messages"])
)
keys_ = st.sampled_from(VOCABULARY) | st.text(max_size=6)
json_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys_, inner, max_size=6), max_leaves=40
)
change_st = st.fixed_dictionaries(
    {"field": st.sampled_from(VOCABULARY) | json_values, "value": st.dictionaries(keys_, json_values, max_size=6)}
)
entry_st = st.fixed_dictionaries(
    {"id": json_values, "changes": st.lists(change_st | json_values, max_size=3)}, optional={"time": json_values}
)
body_st = st.fixed_dictionaries(
    {"object": st.just("whatsapp_business_account"), "entry": st.lists(entry_st, max_size=3) | json_values}
)


def check(body: dict) -> None:
    for event in parse(body, RECEIVED):
        assert event.body["event"] == event.name and event.body["event_id"] == event_id_for(event.dedupe_key)
        assert isinstance(event.body["timestamp"], int) and list(event.body)[-1] == "raw"
        json.dumps(event.body)


@pytest.mark.slow
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5) | body_st)
def test_parse_never_raises(body):
    check(body)


def paths(value, prefix=()):
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from paths(child, (*prefix, key))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(samples.KINDS), st.data())
def test_parse_survives_any_part_of_a_real_body_going_wrong(kind, data):
    body = samples.sample(kind)
    path = data.draw(st.sampled_from(list(paths(body))[1:]))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    check(body)


# --- usernames: business-scoped user ids (Meta's contacts/messages/statuses reference shapes) ---

BSUID = "US.13491208655302741918"
PARENT_BSUID = "US.ENT.11815799212886844830"


def username_contact(**extra) -> dict:
    return {"profile": {"name": "Sheena Nelson", "username": "sheena.grows"}, "user_id": BSUID, **extra}


def test_a_username_message_copies_every_user_id():
    contact = username_contact(wa_id=USER, parent_user_id=PARENT_BSUID)
    message = msg("text", {"body": "hi"}, from_user_id=BSUID, from_parent_user_id=PARENT_BSUID)
    event = only(webhook(messages(message, contacts=[contact])))
    body = event.body
    assert (body["from"], body["from_user_id"], body["from_parent_user_id"]) == (USER, BSUID, PARENT_BSUID)
    assert (body["contact_user_id"], body["contact_parent_user_id"]) == (BSUID, PARENT_BSUID)
    assert body["contact_name"] == "Sheena Nelson"
    assert event.contact == meta_parser.Sighting(USER, BSUID, "Sheena Nelson", contact)


def test_a_message_with_no_phone_number_is_complete():
    message = msg("text", {"body": "no phone here"}, from_user_id=BSUID)
    del message["from"]
    event = only(webhook(messages(message, contacts=[username_contact()])))
    body = event.body
    assert list(body) == MESSAGE_KEYS
    assert (body["from"], body["from_user_id"], body["contact_name"]) == ("", BSUID, "Sheena Nelson")
    assert (body["content"], body["message_id"]) == ("no phone here", message["id"])
    assert event.dedupe_key == f"message:{message['id']}"  # keyed by its id as usual
    assert event.contact == meta_parser.Sighting(None, BSUID, "Sheena Nelson", username_contact())


def test_a_status_to_a_hidden_phone_carries_the_recipient_user_ids():
    state = status("read", recipient_user_id=BSUID, recipient_parent_user_id=PARENT_BSUID)
    del state["recipient_id"]
    body = only(webhook(messages(contacts=[], statuses=[state]))).body
    assert (body["recipient"], body["recipient_user_id"], body["recipient_parent_user_id"]) == ("", BSUID, PARENT_BSUID)
    assert (body["stale"], body["current_status"]) == (False, "read")  # settled at intake


def test_an_echo_to_a_username_carries_to_user_id():
    echo = {"from": DISPLAY, "to_user_id": BSUID, "id": "wamid.E", "timestamp": "1739321024", "type": "text"}
    echo["text"] = {"body": "Thanks!"}
    metadata = {"display_phone_number": DISPLAY, "phone_number_id": PHONE_ID}
    value = {"messaging_product": "whatsapp", "metadata": metadata}
    body = only(webhook({"value": {**value, "message_echoes": [echo]}, "field": "smb_message_echoes"})).body
    assert (body["to"], body["to_user_id"], body["content"]) == ("", BSUID, "Thanks!")


@pytest.mark.parametrize(
    ("sent", "copied"),
    [(12345, "12345"), ({"id": BSUID}, None), ([BSUID], None), (True, None), (None, None), (1.5, None)],
)
def test_user_ids_that_are_not_strings(sent, copied):
    message = msg("text", {"body": "x"}, from_user_id=sent, from_parent_user_id=sent)
    contact = {"profile": {"name": "Odd"}, "wa_id": USER, "user_id": sent, "parent_user_id": sent}
    event = only(webhook(messages(message, contacts=[contact])))
    body = event.body
    assert body["from_user_id"] == body["from_parent_user_id"] == body["contact_user_id"] == copied
    assert event.contact.wa_id == USER and event.contact.user_id == copied
    json.dumps(body)


def test_a_customer_with_neither_phone_nor_user_id_names_no_contact():
    message = msg("text", {"body": "who am I"})
    del message["from"]
    event = only(webhook(messages(message, contacts=[{"profile": {"name": "Nobody"}}])))
    assert event.name == "message.received" and event.body["content"] == "who am I"
    assert event.contact is None and event.body["contact_name"] == ""


def test_sender_is_matched_by_user_id_when_there_is_no_phone():
    contacts = [username_contact(wa_id=USER), {"profile": {"name": "Tom"}, "user_id": "GB.777"}]
    message = msg("text", {"body": "x"}, from_user_id="GB.777")
    del message["from"]
    body = only(webhook(messages(message, contacts=contacts))).body
    assert (body["contact_name"], body["contact_user_id"]) == ("Tom", "GB.777")


@pytest.mark.parametrize("kind", ["username", "username_no_phone", "status_username"])
def test_username_samples_carry_user_ids(kind):
    (event,) = parse(samples.sample(kind), RECEIVED)
    body = event.body
    if event.name == "message.received":
        assert body["from_user_id"] == samples.USERNAME_CUSTOMER_ID
        assert body["from_parent_user_id"] == samples.USERNAME_PARENT_ID
        assert body["from"] == ("" if kind == "username_no_phone" else samples.CUSTOMER)
        assert body["contact_name"] == samples.CUSTOMER_NAME
    else:
        assert (body["recipient"], body["recipient_user_id"]) == ("", samples.USERNAME_CUSTOMER_ID)
