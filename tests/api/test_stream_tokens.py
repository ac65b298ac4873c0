"""Browsers on the API (SPEC 7): stream tokens, CORS for api.allowed_origins, the 403 for
other origins, the WebSocket over real gunicorn, per-key caps, and tokens kept out of logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from app import create_app
from conftest import ROOT, Processes, instance_sections, sign, text_message, wait_until
from gateway.api import stream, stream_tokens, ws_hub
from gateway.storage import db
from ws_client import Refused, WsClient

pytestmark = pytest.mark.engines

ORIGIN = "http://127.0.0.1:9"  # a listed page origin
OTHER = "http://127.0.0.1:10"  # an unlisted one


def sections_with_origins(tmp_path, redis_url, storage_database) -> dict:
    sections = instance_sections(tmp_path, redis_url, storage_database)
    sections["api"] = {"allowed_origins": [ORIGIN]}
    return sections


@pytest.fixture
def app(tmp_path, redis_url, storage_database):
    sections = sections_with_origins(tmp_path, redis_url, storage_database)
    application = create_app({"TESTING": True, "config_path": str(tmp_path / "config.toml"), **sections})
    yield application
    db.close_all()


@pytest.fixture
def web(tmp_path, redis_url, storage_database):
    """Real gunicorn with an allowed origin and the access log on; (base URL, Processes)."""
    started = Processes(tmp_path, sections_with_origins(tmp_path, redis_url, storage_database))
    started.env["WAHOOK_ACCESS_LOG"] = "1"
    yield started.start_web(), started
    started.stop_all(quick=True)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def mint(client, key: str, **body) -> dict:
    response = client.post("/api/v1/stream-tokens", json=body, headers=bearer(key))
    assert response.status_code == 200, response.json
    return response.json


def publish(client, key: str, name: str, **data) -> str:
    response = client.post("/api/v1/events", json={"event": name, "data": data}, headers=bearer(key))
    assert response.status_code == 202
    return response.json["event_id"]


def pulled(client, query: str, **headers) -> list[str]:
    response = client.get("/api/v1/events?" + query, headers=headers)
    assert response.status_code == 200, response.json
    return [e["event"] for e in response.json["events"]]


# --- tokens ---------------------------------------------------------------------------------------


def test_a_token_reads_within_its_filters_and_expires(client, make_key):
    key = make_key("publish,read")
    got = mint(client, key, ttl_seconds=900, events=["campaign.*"])
    assert got["token"].startswith("wst_") and got["expires_at"] - time.time() == pytest.approx(900, abs=5)
    publish(client, key, "campaign.sent")
    publish(client, key, "flow.done")
    assert pulled(client, "token=" + got["token"]) == ["campaign.sent"]
    # Narrower than the token is fine; wider is refused.
    assert pulled(client, "events=campaign.sent&token=" + got["token"]) == ["campaign.sent"]
    wider = client.get("/api/v1/events?events=flow.done&token=" + got["token"])
    assert wider.status_code == 403 and "campaign.*" in wider.json["error"]


def test_expired_tampered_and_revoked_tokens_get_401(client, make_key, runner):
    key = make_key("read")
    token = mint(client, key)["token"]
    payload, signature = token.split(".")
    with client.application.app_context():
        keys = db.get_db().execute("SELECT id FROM api_keys").fetchall()
    expired = stream_tokens.encode(
        client.application.config["SECRET_KEY"], stream_tokens.Grant(keys[0][0], int(time.time()) - 1, (), ())
    )
    forged = stream_tokens.encode("another-secret", stream_tokens.Grant(keys[0][0], int(time.time()) + 99, (), ()))
    flipped = payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    for bad in (expired, forged, flipped, "wst_x", "wak_not_a_token", "x" * 10000):
        response = client.get("/api/v1/events?token=" + bad)
        assert response.status_code == 401 and response.is_json, bad[:20]
    assert client.get("/api/v1/events?token=" + token).status_code == 200
    runner.invoke(args=["apikey", "revoke", str(keys[0][0])])
    revoked = client.get("/api/v1/events?token=" + token)
    assert revoked.status_code == 401 and "revoked" in revoked.json["error"]


def test_a_token_never_publishes(client, make_key):
    key = make_key("publish,read")
    token = mint(client, key)["token"]
    as_header = client.post("/api/v1/events", json={"event": "campaign.x"}, headers=bearer(token))
    in_url = client.post("/api/v1/events?token=" + token, json={"event": "campaign.x"})
    assert as_header.status_code == 401 and in_url.status_code == 401
    assert pulled(client, "", **bearer(key)) == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"ttl_seconds": 0}, 422),
        ({"ttl_seconds": 86401}, 422),
        ({"ttl_seconds": "900"}, 422),
        ({"ttl_seconds": True}, 422),
        ({"events": "campaign.*"}, 422),
        ({"events": ["no such event"]}, 422),
        ({"accounts": ["a b"]}, 422),
        ({"accounts": [None]}, 422),
        ({"events": [1]}, 422),
        ({"scopes": ["publish"]}, 422),
        ([1, 2], 400),
    ],
)
def test_a_token_request_that_cannot_be_granted_is_refused_clearly(client, make_key, body, status):
    response = client.post("/api/v1/stream-tokens", json=body, headers=bearer(make_key("read")))
    assert response.status_code == status and response.json["error"]


def test_only_a_read_key_mints_tokens(client, make_key):
    assert client.post("/api/v1/stream-tokens", json={}).status_code == 401
    assert client.post("/api/v1/stream-tokens", json={}, headers=bearer(make_key("publish"))).status_code == 403
    assert client.post("/api/v1/stream-tokens", data=b"\xff", headers=bearer(make_key("read"))).status_code == 400
    assert mint(client, make_key("read"), ttl_seconds=86400)["expires_at"] > time.time() + 86000


# --- CORS -----------------------------------------------------------------------------------------


def test_a_listed_origin_gets_cors_and_another_gets_403(client, make_key):
    key = make_key("read")
    token = mint(client, key)["token"]
    asked = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x"}
    preflight = client.options("/api/v1/stream", headers=asked)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Last-Event-ID" in preflight.headers["Access-Control-Allow-Headers"]
    other = client.options("/api/v1/stream", headers={**asked, "Origin": OTHER})
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers

    listed = client.get("/api/v1/events?token=" + token, headers={"Origin": ORIGIN})
    assert listed.status_code == 200 and listed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in listed.headers["Vary"]
    foreign = client.get("/api/v1/events?token=" + token, headers={"Origin": OTHER})
    assert foreign.status_code == 403 and "allowed_origins" in foreign.json["error"]
    assert "Access-Control-Allow-Origin" not in foreign.headers
    minted_from_page = client.post("/api/v1/stream-tokens", json={}, headers={**bearer(key), "Origin": OTHER})
    assert minted_from_page.status_code == 403
    # Programs send no Origin: a key or token works as before.
    assert client.get("/api/v1/events?token=" + token).status_code == 200


# --- streams: one key cannot take every slot ---------------------------------------------------------


def test_one_key_holds_at_most_half_the_stream_slots(client, make_key, monkeypatch):
    monkeypatch.setattr(stream, "_slots", threading.BoundedSemaphore(4))
    monkeypatch.setattr(stream, "_per_key_cap", 2)
    greedy, other = make_key("read"), make_key("read")
    opened = [client.get("/api/v1/stream", headers=bearer(greedy)) for _ in range(2)]
    assert [s.status_code for s in opened] == [200, 200]
    third = client.get("/api/v1/stream", headers=bearer(greedy))
    assert third.status_code == 503 and "this API key" in third.json["error"] and third.headers["Retry-After"]
    token = mint(client, greedy)["token"]
    assert client.get("/api/v1/stream?token=" + token).status_code == 503  # its tokens count as the key
    theirs = client.get("/api/v1/stream", headers=bearer(other))
    assert theirs.status_code == 200
    for s in [*opened, theirs]:
        s.close()
    again = client.get("/api/v1/stream?token=" + token)
    assert again.status_code == 200
    again.close()


# --- over real gunicorn ---------------------------------------------------------------------------


def web_key(processes, scopes: str = "publish,read") -> str:
    code, made = processes.cli("apikey", "add", "page backend", "--scopes", scopes)
    assert code == 0
    return made["key"]


def token_for(base: str, key: str, **body) -> str:
    response = requests.post(base + "/api/v1/stream-tokens", json=body, headers=bearer(key), timeout=10)
    assert response.status_code == 200
    return response.json()["token"]


def post_event(base: str, key: str, name: str) -> str:
    response = requests.post(base + "/api/v1/events", json={"event": name}, headers=bearer(key), timeout=10)
    assert response.status_code == 202
    return response.json()["event_id"]


def ws_url(base: str, query: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/ws?" + query


def test_websocket_sends_each_event_as_a_frame_and_resumes_after(web):
    base, processes = web
    key = web_key(processes)
    token = token_for(base, key, events=["campaign.*"])
    live = WsClient(ws_url(base, "token=" + token), {"Origin": ORIGIN})
    first = post_event(base, key, "campaign.one")
    post_event(base, key, "flow.skipped")
    second = post_event(base, key, "campaign.two")
    frames = live.frames(2)
    assert [(f["id"], f["event"]) for f in frames] == [(first, "campaign.one"), (second, "campaign.two")]
    assert frames[0]["data"]["event_id"] == first and frames[0]["data"]["source"] == "api"
    live.close()

    third = post_event(base, key, "campaign.three")
    resumed = WsClient(ws_url(base, f"after={first}&token={token}"), {"Origin": ORIGIN})
    assert [f["id"] for f in resumed.frames(2)] == [second, third]
    resumed.listen(0.5)
    assert len(resumed.texts) == 2  # nothing repeated
    resumed.close()
    # A key in the header works too (programs); a plain GET is told what the address is for.
    by_key = WsClient(ws_url(base, ""), {"Authorization": f"Bearer {key}"})
    by_key.close()
    assert requests.get(base + "/api/v1/ws", headers=bearer(key), timeout=10).status_code == 426


def test_websocket_refuses_foreign_origins_bad_tokens_and_unknown_cursors(web):
    base, processes = web
    key = web_key(processes)
    token = token_for(base, key)
    for query, headers, status in [
        ("token=" + token, {"Origin": OTHER}, 403),
        ("token=" + token[:-2], {"Origin": ORIGIN}, 401),
        ("", {}, 401),
        ("after=evt_nope&token=" + token, {"Origin": ORIGIN}, 422),
        ("events=nonsense&token=" + token, {"Origin": ORIGIN}, 422),
    ]:
        with pytest.raises(Refused) as refused:
            WsClient(ws_url(base, query), headers)
        assert refused.value.status == status and json.loads(refused.value.body)["error"]


@pytest.mark.engines("sqlite")  # nothing here depends on the engine
def test_websocket_pings_and_says_going_away_when_the_server_stops(web):
    base, processes = web
    token = token_for(base, web_key(processes))
    live = WsClient(ws_url(base, "token=" + token), {"Origin": ORIGIN}, timeout=30)
    live.pump(lambda: live.pings >= 1, timeout=16)  # the contract: a ping at least every 15 s
    processes.children[0].send_signal(signal.SIGTERM)
    live.pump(lambda: live.close_code is not None, timeout=15)
    assert live.close_code == 1001


@pytest.mark.engines("sqlite")  # nothing here depends on the engine
def test_access_log_masks_tokens(web):
    base, processes = web
    key = web_key(processes)
    token = token_for(base, key)
    assert requests.get(base + "/api/v1/events?limit=5&token=" + token, timeout=10).status_code == 200
    read_logs = lambda: "".join(p.read_text(errors="replace") for p in processes.tmp_path.glob("gunicorn-*.log"))  # noqa: E731
    wait_until(lambda: "/api/v1/events?limit=5&token=[masked]" in read_logs(), message="the access log line")
    logs = read_logs()
    assert "GET /api/v1/events?limit=5&token=[masked] HTTP/1.1" in logs
    assert token not in logs and token.split(".")[1] not in logs and key not in logs


@pytest.mark.engines("sqlite")  # nothing here depends on the engine
def test_one_key_holds_at_most_its_share_of_a_process_websockets(app, monkeypatch):
    monkeypatch.setattr(ws_hub, "MAX_SOCKETS", 3)
    monkeypatch.setattr(ws_hub, "PER_KEY", 2)
    hub = ws_hub.Hub(app.config["WAHOOK"].database, lambda: True)
    try:
        assert hub.reserve(1) is None and hub.reserve(1) is None
        assert "this API key already holds 2" in hub.reserve(1)
        assert hub.reserve(2) is None
        assert "3 WebSockets open" in hub.reserve(3)
        hub.release(1)
        assert hub.reserve(1) is None
    finally:
        ws_hub.stop_hub(hub)


@pytest.mark.engines("sqlite")  # nothing here depends on the engine
def test_the_docs_node_backend_mints_a_working_token(web):
    """docs/browser.md's Node lines, run by node against a real wahook (Express stubbed)."""
    base, processes = web
    key = web_key(processes, "read")
    found = re.search(r"```js\n(.*?)```", (ROOT / "docs" / "browser.md").read_text(encoding="utf-8"), re.S)
    script = (
        f"const WAHOOK = {json.dumps(base)};\n"
        "let route; const app = { get: (path, handler) => { route = handler; } };\n"
        + found.group(1)
        + "route({}, { json: (body) => console.log(JSON.stringify(body)) });\n"
    )
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to check the docs' Node example: apt-get install nodejs", pytrace=False)
    result = subprocess.run(
        [node, "-e", script], env={**os.environ, "WAHOOK_READ_KEY": key}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["token"]
    assert requests.get(base + "/api/v1/events?token=" + token, timeout=10).status_code == 200


@pytest.mark.engines("sqlite")  # nothing here depends on the engine
def test_open_websockets_take_no_request_thread(tmp_path, redis_url):
    """With 4 threads per web process, 60 open sockets would starve everything else if each
    held a thread; intake and the API still answer, and every socket still gets events."""
    processes = Processes(tmp_path, instance_sections(tmp_path, redis_url))
    processes.env["WAHOOK_WEB_THREADS"] = "4"
    try:
        base = processes.start_web()
        key = web_key(processes)
        sockets = [WsClient(ws_url(base, "events=campaign.*"), bearer(key)) for _ in range(60)]
        raw = json.dumps(text_message("wamid.THREADS")).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
        assert requests.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=10).status_code == 200
        event_id = post_event(base, key, "campaign.everyone")
        for live in sockets:
            assert [f["id"] for f in live.frames(1)] == [event_id]
            live.close()
    finally:
        processes.stop_all()


@pytest.mark.engines("sqlite")  # nothing here depends on the engine
def test_revoking_the_key_ends_open_sockets_and_streams_of_its_tokens(web):
    base, processes = web
    key = web_key(processes)
    token = token_for(base, key)
    live = WsClient(ws_url(base, "token=" + token), {"Origin": ORIGIN}, timeout=30)
    sse = requests.get(base + "/api/v1/stream?token=" + token, stream=True, timeout=30)
    assert sse.status_code == 200
    code, _ = processes.cli("apikey", "revoke", "1")
    assert code == 0
    live.pump(lambda: live.close_code is not None, timeout=25)
    assert live.close_code == 1008
    started = time.monotonic()
    for _ in sse.iter_lines():  # the stream ends by itself
        assert time.monotonic() - started < 25, "the stream went on after its key was revoked"
    assert requests.get(base + "/api/v1/stream?token=" + token, timeout=10).status_code == 401


@pytest.mark.engines("sqlite")  # nothing here depends on the engine
def test_an_open_socket_closes_when_its_token_expires(web):
    base, processes = web
    token = token_for(base, web_key(processes), ttl_seconds=2)
    live = WsClient(ws_url(base, "token=" + token), {"Origin": ORIGIN}, timeout=30)
    live.pump(lambda: live.close_code is not None, timeout=25)
    assert live.close_code == 1008
    with pytest.raises(Refused) as refused:
        WsClient(ws_url(base, "token=" + token), {"Origin": ORIGIN})
    assert refused.value.status == 401
