"""Accounts routing (SPEC 4 and 7): one wahook serving several businesses or numbers. Each
endpoint gets only its own accounts' events (a `meta` endpoint only its own entries), pull,
stream and WebSocket take `accounts=`, the event log searches by account, and the pages and
CLI show each endpoint's accounts."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re

import pytest
import requests

from conftest import element, shown, sign, text_message, wait_until
from gateway.delivery import accounts
from ws_client import WsClient

pytestmark = pytest.mark.engines

SHOP_WABA, SHOP_PHONE = "102290129340398", "106540352242922"  # the sample's business
CLINIC_WABA, CLINIC_PHONE = "200000000000001", "200000000000002"


def two_business_body() -> dict:
    """One Meta body mixing two businesses: the shop's message and the clinic's."""
    body = text_message("wamid.SHOP", text="for the shop")
    clinic = copy.deepcopy(text_message("wamid.CLINIC", text="for the clinic")["entry"][0])
    clinic["id"] = CLINIC_WABA
    value = clinic["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = CLINIC_PHONE
    value["contacts"][0]["wa_id"] = value["messages"][0]["from"] = "447700900123"
    body["entry"].append(clinic)
    return body


def received(receiver) -> list[tuple[str, str]]:
    return sorted((json.loads(r.body)["event"], json.loads(r.body).get("message_id", "")) for r in receiver.requests)


def test_a_mixed_body_reaches_each_endpoint_with_only_its_accounts(
    client, add_endpoint, make_receiver, post_webhook, running_worker, make_key
):
    shop, clinic, everyone, shop_meta, clinic_meta, all_meta = (make_receiver() for _ in range(6))
    add_endpoint(shop.url, accounts=SHOP_WABA)
    add_endpoint(clinic.url, accounts=[CLINIC_PHONE])  # a phone number id works as well
    add_endpoint(everyone.url)
    add_endpoint(shop_meta.url, format="meta", accounts=SHOP_PHONE)
    clinic_meta_row = add_endpoint(clinic_meta.url, format="meta", accounts=CLINIC_WABA)
    add_endpoint(all_meta.url, format="meta")
    raw = json.dumps(two_business_body()).encode()
    assert post_webhook(raw).status_code == 200
    # A published event names no account: every endpoint that selects it gets it.
    client.post("/api/v1/events", json={"event": "campaign.done"}, headers={"Authorization": f"Bearer {make_key()}"})

    everyone.wait_for(5)
    for r in (shop, clinic):
        r.wait_for(3)
    for r in (shop_meta, clinic_meta, all_meta):
        r.wait_for(1)
    assert received(shop) == [("campaign.done", ""), ("contact.created", ""), ("message.received", "wamid.SHOP")]
    assert received(clinic) == [("campaign.done", ""), ("contact.created", ""), ("message.received", "wamid.CLINIC")]
    assert len(everyone.requests) == 5
    assert all_meta.requests[0].body == raw  # byte for byte when nothing has to go

    for receiver, waba, phone, row in (
        (shop_meta, SHOP_WABA, SHOP_PHONE, None),
        (clinic_meta, CLINIC_WABA, CLINIC_PHONE, clinic_meta_row),
    ):
        got = receiver.requests[0]
        body = json.loads(got.body)
        assert [e["id"] for e in body["entry"]] == [waba]
        assert body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] == phone
        if row is not None:  # the trimmed body is what is signed
            stamp = got.headers["X-Webhook-Timestamp"]
            expected = hmac.new(row["secret"].encode(), stamp.encode() + b"." + got.body, hashlib.sha256).hexdigest()
            assert got.headers["X-Webhook-Signature"] == expected
    assert len(shop_meta.requests) == len(clinic_meta.requests) == 1


def test_a_meta_endpoint_gets_nothing_from_a_body_of_other_accounts(add_endpoint, receiver, post_webhook, conn):
    add_endpoint(receiver.url, format="meta", accounts=CLINIC_WABA)
    assert post_webhook(text_message("wamid.ONLYSHOP")).status_code == 200
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0


def test_trim_keeps_a_listed_number_within_another_business_entry():
    body = two_business_body()
    body["entry"][1]["changes"].append(copy.deepcopy(body["entry"][1]["changes"][0]))
    body["entry"][1]["changes"][1]["value"]["metadata"]["phone_number_id"] = "999"
    trimmed = json.loads(accounts.trim_meta(json.dumps(body).encode(), ["999"]))
    assert [e["id"] for e in trimmed["entry"]] == [CLINIC_WABA]
    assert [c["value"]["metadata"]["phone_number_id"] for c in trimmed["entry"][0]["changes"]] == ["999"]
    assert accounts.trim_meta(b"not json", ["1"]) == b"not json"


def test_pull_and_stream_keep_only_the_accounts_asked_for(client, make_key, post_webhook):
    key = make_key()
    post_webhook(two_business_body())
    client.post("/api/v1/events", json={"event": "campaign.done"}, headers={"Authorization": f"Bearer {key}"})

    def pulled(query: str) -> list[str]:
        response = client.get("/api/v1/events?" + query, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.json
        return [e.get("message_id") or e["event"] for e in response.json["events"]]

    assert pulled("") == ["contact.created", "wamid.SHOP", "contact.created", "wamid.CLINIC", "campaign.done"]
    assert pulled("accounts=" + CLINIC_PHONE) == ["contact.created", "wamid.CLINIC", "campaign.done"]
    assert pulled(f"accounts={SHOP_WABA},{CLINIC_WABA}&events=message.received") == ["wamid.SHOP", "wamid.CLINIC"]
    bad = client.get("/api/v1/events?accounts=a%20b", headers={"Authorization": f"Bearer {key}"})
    assert bad.status_code == 422
    token = client.post(
        "/api/v1/stream-tokens", json={"accounts": [SHOP_WABA]}, headers={"Authorization": f"Bearer {key}"}
    ).json["token"]
    assert pulled("token=" + token) == ["contact.created", "wamid.SHOP", "campaign.done"]
    wider = client.get(f"/api/v1/events?accounts={CLINIC_WABA}&token={token}")
    assert wider.status_code == 403


def test_websocket_keeps_only_the_accounts_asked_for(processes):
    base = processes.start_web()
    _, made = processes.cli("apikey", "add", "inbox", "--scopes", "read")
    url = base.replace("http://", "ws://") + f"/api/v1/ws?events=message.received&accounts={CLINIC_PHONE}"
    live = WsClient(url, {"Authorization": f"Bearer {made['key']}"})
    raw = json.dumps(two_business_body()).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
    assert requests.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=10).status_code == 200
    frames = live.frames(1)
    live.listen(0.5)
    assert [f["data"]["message_id"] for f in frames] == ["wamid.CLINIC"] and len(live.texts) == 1
    live.close()


def test_cli_adds_and_lists_accounts(runner):
    result = runner.invoke(
        args=["endpoint", "add", "http://127.0.0.1:9/wa", "--accounts", f"{CLINIC_PHONE}, {CLINIC_WABA}"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accounts"] == sorted([CLINIC_PHONE, CLINIC_WABA])
    listed = json.loads(runner.invoke(args=["endpoint", "list"]).output)
    assert listed[0]["accounts"] == sorted([CLINIC_PHONE, CLINIC_WABA])
    bad = runner.invoke(args=["endpoint", "add", "http://127.0.0.1:9/wa", "--accounts", "not an id"])
    assert bad.exit_code != 0 and "not an account id" in bad.output


def test_settings_and_monitor_show_each_endpoints_accounts(admin, add_endpoint):
    html = admin.get("/settings").text
    form = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    response = admin.post(
        "/settings/endpoints",
        data={"csrf_token": form, "url": "http://127.0.0.1:9/wa", "accounts": f"{CLINIC_WABA},{CLINIC_PHONE}"},
    )
    assert response.status_code == 200 and "Endpoint added" in response.text
    refused = admin.post(
        "/settings/endpoints", data={"csrf_token": form, "url": "http://127.0.0.1:9/x", "accounts": "no way"}
    )
    assert refused.status_code == 400 and "not an account id" in element(refused.text, "accounts-error")
    add_endpoint("http://127.0.0.1:9/all")
    settings = admin.get("/settings").text
    shows = lambda html, eid: element(html, eid).replace(" ,", ",")  # noqa: E731 (tags become spaces)
    assert shows(settings, "endpoint-1-accounts") == f"{CLINIC_WABA}, {CLINIC_PHONE}"
    assert element(settings, "endpoint-2-accounts") == "all accounts"
    edit = admin.get("/settings/endpoints/1").text
    assert f'value="{CLINIC_WABA}, {CLINIC_PHONE}"' in edit
    monitor = admin.get("/monitor").text
    assert shows(monitor, "ep-1-accounts") == f"Accounts: {CLINIC_WABA}, {CLINIC_PHONE}"
    assert element(monitor, "ep-2-accounts") == "Accounts: all"


def test_event_log_searches_by_account(admin, post_webhook, conn):
    post_webhook(text_message("wamid.SHOPONLY"))
    post_webhook(two_business_body())
    wait_until(lambda: conn.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 2)
    assert shown(admin.get("/events?account=" + SHOP_WABA).text) == [2, 1]
    assert shown(admin.get("/events?account=" + CLINIC_PHONE).text) == [2]
    assert shown(admin.get(f"/events?account={CLINIC_PHONE}&customer=16505551234").text) == []
    assert shown(admin.get("/events?account=404").text) == []
