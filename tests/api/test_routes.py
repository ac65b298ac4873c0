"""The publish, pull and stream API (SPEC 7): what a client sends and gets back, bad input
of every kind, delivery of published events, commit order, and streams beside intake."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import threading
import time

import psutil
import pytest
import requests

from conftest import APP_SECRET, sign, text_message, wait_until
from gateway.api import stream

pytestmark = pytest.mark.engines

MIB = 1024 * 1024


def auth(key: str, **more) -> dict:
    return {"Authorization": f"Bearer {key}", **more}


@pytest.fixture
def key(make_key):
    return make_key("publish,read")


def publish(client, key, event="campaign.completed", data=None, **headers):
    body = {"event": event, "data": {"sent": 120, "failed": 3} if data is None else data}
    return client.post("/api/v1/events", json=body, headers=auth(key, **headers))


# --- publish ------------------------------------------------------------------------------------


def test_publish_is_delivered_signed_to_endpoints_that_select_it(
    client, key, add_endpoint, running_worker, make_receiver
):
    by_prefix, by_name, everything, other = (make_receiver() for _ in range(4))
    add_endpoint(by_prefix.url, events="campaign.*")
    add_endpoint(by_name.url, events="campaign.completed")
    add_endpoint(everything.url)
    add_endpoint(other.url, events="message.received,flow.*")

    response = publish(client, key)
    assert response.status_code == 202 and response.is_json
    event_id = response.json["event_id"]
    for receiver in (by_prefix, by_name, everything):
        wait_until(lambda r=receiver: r.requests, message="delivery of the published event")
        got = receiver.requests[0]
        body = json.loads(got.body)
        assert body["event"] == "campaign.completed" and body["event_id"] == event_id
        assert body["source"] == "api" and body["sent"] == 120 and body["failed"] == 3
        assert isinstance(body["timestamp"], int) and body["received_at"].endswith("Z")
        assert got.headers["X-Webhook-Event"] == "campaign.completed"
        assert got.headers["X-Webhook-Id"] == event_id and got.headers["X-Webhook-Signature"]
    time.sleep(0.3)
    assert other.requests == []


def test_a_failed_delivery_of_a_published_event_is_redelivered_with_the_rest(
    client, key, add_endpoint, receiver, runner, conn, running_worker
):
    add_endpoint(receiver.url, events="campaign.*")
    receiver.behaviour.status = 500
    event_id = publish(client, key).json["event_id"]
    wait_until(
        lambda: conn.execute("SELECT state FROM deliveries").fetchone()[0] == "failed",
        timeout=30,
        message="the delivery to fail",
    )
    receiver.behaviour.status = 200
    result = runner.invoke(args=["deliveries", "retry"])
    assert json.loads(result.output) == {"requeued": 1}
    wait_until(
        lambda: (
            receiver.requests[-1].headers["X-Webhook-Id"] == event_id
            and conn.execute("SELECT state FROM deliveries").fetchone()[0] == "delivered"
        ),
        timeout=30,
        message="the redelivery",
    )


def test_idempotency_key_repeats_the_first_answer_and_publishes_nothing_new(client, key, conn, make_key):
    first = publish(client, key, **{"Idempotency-Key": "campaign-42-done"})
    again = publish(client, key, data={"sent": 1}, **{"Idempotency-Key": "campaign-42-done"})
    assert first.status_code == again.status_code == 202
    assert again.json == first.json
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    # Another key, or another client's same key, is another event.
    assert publish(client, key, **{"Idempotency-Key": "campaign-43-done"}).json != first.json
    assert publish(client, make_key("publish"), **{"Idempotency-Key": "campaign-42-done"}).json != first.json
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 3
    # After 24 hours the key is free again.
    conn.execute("UPDATE idempotency_keys SET created_at = created_at - 86401")
    later = publish(client, key, **{"Idempotency-Key": "campaign-42-done"})
    assert later.status_code == 202 and later.json != first.json


def test_publishing_twice_without_a_key_makes_two_events(client, key):
    assert publish(client, key).json != publish(client, key).json


def test_data_may_be_left_out(client, key):
    response = client.post("/api/v1/events", json={"event": "flow.session_started"}, headers=auth(key))
    assert response.status_code == 202


BAD_PUBLISHES = [
    (b"{not json", 400),
    (b"\xff\xfe", 400),
    (b"", 400),
    (b"[]", 400),
    (b'"campaign.completed"', 400),
    (b'{"event": NaN}', 400),
    (b'{"data": {}}', 422),
    (b'{"event": 12}', 422),
    (b'{"event": null}', 422),
    (b'{"event": ["campaign.completed"]}', 422),
    (b'{"event": "campaign.completed", "data": []}', 422),
    (b'{"event": "campaign.completed", "data": "x"}', 422),
    (b'{"event": "campaign.completed", "data": {"event": "message.received"}}', 422),
    (b'{"event": "campaign.completed", "data": {"event_id": "evt_forged"}}', 422),
    (b'{"event": "campaign.completed", "data": {"source": "meta"}}', 422),
    (b'{"event": "campaign.completed", "extra": 1}', 422),
    (b'{"event": "campaign"}', 422),
    (b'{"event": "Campaign.Completed"}', 422),
    (b'{"event": "campaign..completed"}', 422),
    (b'{"event": "campaign.completed\\n"}', 422),
    (b'{"event": "1campaign.completed"}', 422),
    (('{"event": "campaign.' + "x" * 200 + '"}').encode(), 422),
    (b"[" * 100000, 400),
]


@pytest.mark.parametrize(("raw", "status"), BAD_PUBLISHES)
def test_bad_publish_bodies_get_a_json_error_and_publish_nothing(client, key, conn, raw, status):
    response = client.post("/api/v1/events", data=raw, headers=auth(key, **{"Content-Type": "application/json"}))
    assert response.status_code == status and response.is_json and response.json["error"]
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


RESERVED = ["message", "template", "account", "whatsapp", "contact", "endpoint", "delivery", "gateway", "webhook"]


@pytest.mark.parametrize("prefix", RESERVED)
def test_reserved_names_are_refused(client, key, conn, prefix):
    response = publish(client, key, event=f"{prefix}.received")
    assert response.status_code == 422 and prefix in response.json["error"]
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_template_submitted_is_the_one_reserved_prefix_name_a_client_may_publish(client, key):
    assert publish(client, key, event="template.submitted").status_code == 202
    assert publish(client, key, event="template.status_changed").status_code == 422
    assert publish(client, key, event="template.submitted_x").status_code == 422


def test_a_body_over_1_mib_gets_413_and_one_of_1_mib_is_accepted(client, key, conn):
    head = b'{"event": "campaign.completed", "data": {"blob": "'
    tail = b'"}}'
    exact = head + b"x" * (MIB - len(head) - len(tail)) + tail
    assert len(exact) == MIB
    assert client.post("/api/v1/events", data=exact, headers=auth(key)).status_code == 202
    over = exact[:-3] + b'x"}}'
    response = client.post("/api/v1/events", data=over, headers=auth(key))
    assert len(over) == MIB + 1 and response.status_code == 413 and response.is_json
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


@pytest.mark.parametrize("value", ["has space", "", "x" * 256, "tab\there", "é"])
def test_a_malformed_idempotency_key_is_refused(client, key, conn, value):
    response = client.post(
        "/api/v1/events",
        data=json.dumps({"event": "campaign.completed"}),
        headers=auth(key, **{"Idempotency-Key": value.encode().decode("latin-1")}),
    )
    assert response.status_code == 400 and response.is_json
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_unknown_paths_and_methods_under_the_api_answer_json(client, key):
    for method, path, status in [
        ("get", "/api/v1/nothing", 404),
        ("delete", "/api/v1/events", 405),
        ("put", "/api/v1/stream", 405),
        ("post", "/api/v1/stream", 405),
    ]:
        response = getattr(client, method)(path, headers=auth(key))
        assert response.status_code == status and response.is_json, (method, path)
        if status == 405:
            assert response.headers["Allow"] == ("GET" if path.endswith("stream") else "GET, POST")


# --- pull ---------------------------------------------------------------------------------------


def pull(client, key, **params):
    return client.get("/api/v1/events", query_string=params, headers=auth(key))


def test_pull_pages_through_events_in_commit_order(client, key, post_webhook):
    published = [publish(client, key, data={"n": n}).json["event_id"] for n in range(5)]
    post_webhook(text_message())
    published += [publish(client, key, event="flow.session_completed").json["event_id"]]

    page = pull(client, key, limit=2).json
    assert [e["event_id"] for e in page["events"]] == published[:2] and page["next"] == published[1]
    page = pull(client, key, after=page["next"], limit=100).json
    # The message (and the contact event it may make), between the publishes, in commit order.
    names = [e["event"] for e in page["events"] if not e["event"].startswith("contact.")]
    assert names == ["campaign.completed"] * 3 + ["message.received", "flow.session_completed"]
    assert page["events"][-1]["event_id"] == published[-1] == page["next"]
    assert pull(client, key, after=page["next"]).json == {"events": [], "next": None}


def test_api_answers_are_not_cached(client, key):
    publish(client, key)
    assert pull(client, key).headers["Cache-Control"] == "no-store"
    assert publish(client, key).headers["Cache-Control"] == "no-store"
    response = client.get("/api/v1/stream", headers=auth(key))
    assert response.headers["Cache-Control"] == "no-cache"
    response.close()


def test_pull_filters_by_names_and_prefixes(client, key, post_webhook):
    publish(client, key, event="campaign.started")
    publish(client, key, event="flow.session_started")
    publish(client, key, event="campaigns.other")
    post_webhook(text_message())
    names = lambda **p: [e["event"] for e in pull(client, key, **p).json["events"]]  # noqa: E731
    assert names(events="campaign.*") == ["campaign.started"]
    assert names(events="flow.*,message.received") == ["flow.session_started", "message.received"]
    assert names(events="message.*") == ["message.received"]


def test_pull_returns_bodies_exactly_as_delivered(client, key, conn):
    publish(client, key, data={"text": "olá 👋", "nested": {"a": [1, 2]}})
    stored = conn.execute("SELECT body FROM events").fetchone()[0]
    raw = pull(client, key).data.decode()
    assert stored in raw


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"limit": "0"}, 422),
        ({"limit": "10000"}, 422),
        ({"limit": "-1"}, 422),
        ({"limit": "ten"}, 400),
        ({"limit": "1.5"}, 400),
        ({"limit": ""}, 400),
        ({"limit": "9" * 50}, 400),
        ({"after": "evt_doesnotexist"}, 422),
        ({"after": ""}, 400),
        ({"after": "x" * 5000}, 400),
        ({"events": "Not A Name"}, 422),
        ({"events": "campaign.*,<script>"}, 422),
    ],
)
def test_bad_pull_parameters_get_a_json_error(client, key, params, status):
    publish(client, key)
    response = pull(client, key, **params)
    assert response.status_code == status and response.is_json and response.json["error"]


def test_limit_bounds_are_inclusive(client, key):
    publish(client, key)
    assert pull(client, key, limit=1).status_code == 200
    assert pull(client, key, limit=1000).status_code == 200


def test_operational_and_test_events_are_left_out_unless_named(client, key, app, conn, add_endpoint, receiver):
    from gateway.delivery import outbox, send
    from gateway.storage.db import transaction

    endpoint = add_endpoint(receiver.url)
    with app.app_context():
        send.send_test(conn, app.config["WAHOOK"], endpoint["id"])
    with transaction(conn):
        outbox.publish(conn, "gateway.silent", {"since": 1, "hours": 2}, dedupe_key="silent-1")
    publish(client, key)
    assert [e["event"] for e in pull(client, key).json["events"]] == ["campaign.completed"]
    assert [e["event"] for e in pull(client, key, events="gateway.silent").json["events"]] == ["gateway.silent"]


# --- never a 500, never a key in the logs -------------------------------------------------------


def test_no_client_input_gets_a_500_and_keys_are_never_logged(client, key, make_key, runner, caplog):
    caplog.set_level(logging.DEBUG)
    revoked = make_key("read")
    runner.invoke(args=["apikey", "revoke", "2"])
    tries = [
        ("post", "/api/v1/events", {"data": b"\x00" * 10}),
        ("post", "/api/v1/events", {"json": {"event": "campaign.x", "data": {"k": "\ud800"}}}),
        ("get", "/api/v1/events?after=%00", {}),
        ("get", "/api/v1/events?limit=%ff", {}),
        ("get", "/api/v1/stream?events=%00", {}),
        ("get", "/api/v1/stream", {"headers": {"Last-Event-ID": "evt_gone"}}),
    ]
    for method, path, kwargs in tries:
        for k in (key, revoked, key + "x"):
            headers = {**kwargs.pop("headers", {}), **auth(k)}
            response = getattr(client, method)(path, headers=headers, **kwargs)
            assert response.status_code < 500 and response.is_json, (path, response.status_code)
    assert key not in caplog.text and revoked not in caplog.text
    assert key[17:] not in caplog.text


# --- stream (in process) ------------------------------------------------------------------------


@pytest.fixture
def quick_stream(monkeypatch):
    monkeypatch.setattr(stream, "HEARTBEAT_SECONDS", 0.3)
    monkeypatch.setattr(stream, "POLL_SECONDS", 0.02)


def sse_messages(chunk: bytes) -> list[dict]:
    out = []
    for block in chunk.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            out.append(fields)
    return out


def test_stream_sends_new_events_and_comments_while_quiet(client, key, quick_stream):
    old = publish(client, key, event="campaign.started").json["event_id"]
    response = client.get("/api/v1/stream", headers=auth(key))
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    chunks = response.iter_encoded()
    assert b": connected" in next(chunks)
    new = publish(client, key).json["event_id"]
    got = sse_messages(next(chunks))
    assert [m["id"] for m in got] == [new], "only events after the stream opened"
    assert got[0]["event"] == "campaign.completed" and json.loads(got[0]["data"])["event_id"] == new
    started = time.monotonic()
    assert next(chunks).startswith(b": keep-alive")
    assert time.monotonic() - started < 2
    response.close()
    assert old != new


def test_stream_resumes_after_last_event_id_and_filters(client, key, quick_stream):
    ids = [publish(client, key, event=name).json["event_id"] for name in ("campaign.a", "flow.b", "campaign.c")]
    response = client.get("/api/v1/stream?events=campaign.*", headers=auth(key, **{"Last-Event-ID": ids[0]}))
    chunks = response.iter_encoded()
    next(chunks)
    assert [m["id"] for m in sse_messages(next(chunks))] == [ids[2]]
    response.close()
    # The same from the query, for clients that cannot set the header.
    response = client.get(f"/api/v1/stream?last_event_id={ids[0]}", headers=auth(key))
    chunks = response.iter_encoded()
    next(chunks)
    assert [m["id"] for m in sse_messages(next(chunks))] == [ids[1], ids[2]]
    response.close()


def test_stream_with_an_unknown_last_event_id_is_refused(client, key):
    response = client.get("/api/v1/stream", headers=auth(key, **{"Last-Event-ID": "evt_never"}))
    assert response.status_code == 422 and response.is_json


def test_streams_beyond_the_slots_get_503_and_a_closed_stream_frees_its_slot(client, key, monkeypatch):
    monkeypatch.setattr(stream, "_slots", threading.BoundedSemaphore(1))
    first = client.get("/api/v1/stream", headers=auth(key))
    assert first.status_code == 200
    refused = client.get("/api/v1/stream", headers=auth(key))
    assert refused.status_code == 503 and refused.is_json and refused.headers["Retry-After"]
    first.close()
    again = client.get("/api/v1/stream", headers=auth(key))
    assert again.status_code == 200
    again.close()


# --- real processes -----------------------------------------------------------------------------


def web_pids(processes) -> list[int]:
    master = processes.children[0].pid
    return [master] + [child.pid for child in psutil.Process(master).children()]


def test_a_publish_is_committed_before_its_202(processes, make_key, add_endpoint, receiver):
    key = make_key("publish")
    add_endpoint(receiver.url, events="campaign.*")
    base = processes.start_web()
    response = requests.post(
        base + "/api/v1/events", json={"event": "campaign.completed", "data": {}}, headers=auth(key), timeout=10
    )
    assert response.status_code == 202
    for pid in web_pids(processes):
        os.kill(pid, signal.SIGKILL)
    processes.start_worker()
    wait_until(lambda: receiver.requests, timeout=30, message="the event published before the kill")
    assert receiver.requests[0].headers["X-Webhook-Id"] == response.json()["event_id"]


def test_a_chunked_body_over_1_mib_gets_413_over_gunicorn(processes, make_key, conn):
    key = make_key("publish")
    base = processes.start_web()
    body = b'{"event": "campaign.completed", "data": {"blob": "' + b"x" * MIB + b'"}}'
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))  # a generator: sent chunked
    response = requests.post(base + "/api/v1/events", data=chunks, headers=auth(key), timeout=30)
    assert response.status_code == 413 and response.json()["error"]
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


@pytest.mark.slow
def test_publishing_10000_events_delivers_each_once(processes, make_key, add_endpoint, receiver, conn):
    key = make_key("publish")
    add_endpoint(receiver.url, events="campaign.*")
    base = processes.start_web()
    processes.start_worker()
    published: set[str] = set()
    answers: list[int] = []
    headers = auth(key, **{"Content-Type": "application/json"})
    port = int(base.rsplit(":", 1)[1])

    def publisher(first: int) -> None:  # eight clients at once, as a campaign tool with a pool would
        # A bare keep-alive connection: the client's own work is a tenth of what requests costs
        # for each of 10,000 POSTs, CPU the server side and the worker need more on a small machine.
        bodies = [json.dumps({"event": "campaign.tick", "data": {"n": n}}) for n in range(first, 10_000, 8)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for body in bodies:
                connection.request("POST", "/api/v1/events", body, headers)
                response = connection.getresponse()
                answer = response.read()
                answers.append(response.status)
                if response.status == 202:
                    published.add(json.loads(answer)["event_id"])
        finally:
            connection.close()

    threads = [threading.Thread(target=publisher, args=(first,)) for first in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [202] * 10_000
    assert len(published) == 10_000
    receiver.wait_for(10_000, timeout=300)
    time.sleep(1)  # a duplicate would show now
    got = [r.headers["X-Webhook-Id"] for r in receiver.requests]
    assert len(got) == 10_000 and set(got) == published
    log = "".join(p.read_text(errors="replace") for p in processes.tmp_path.glob("*.log"))
    assert key not in log


def test_pull_never_skips_an_event_while_two_processes_publish(processes, make_key):
    key = make_key()
    base = processes.start_web(workers=2)
    stop = threading.Event()
    published: list[str] = []
    pulled: list[str] = []

    def publisher(n: int) -> None:
        session = requests.Session()
        for i in range(150):
            got = session.post(
                base + "/api/v1/events", json={"event": f"load.p{n}", "data": {"i": i}}, headers=auth(key), timeout=30
            )
            assert got.status_code == 202
            published.append(got.json()["event_id"])

    def puller() -> None:
        session = requests.Session()
        after = None
        while True:
            done = stop.is_set()
            params = {"limit": 37, **({"after": after} if after else {})}
            page = session.get(base + "/api/v1/events", params=params, headers=auth(key), timeout=30).json()
            pulled.extend(e["event_id"] for e in page["events"])
            after = page["next"] or after
            if done and not page["events"]:
                return

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    reader = threading.Thread(target=puller)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join(timeout=60)
    assert len(pulled) == len(set(pulled)) == 600
    assert set(pulled) == set(published)


def read_sse(response, wanted: int, seconds: float = 20) -> list[dict]:
    """Read SSE messages from a requests stream until `wanted` arrived."""
    got: list[dict] = []
    fields: dict = {}
    deadline = time.monotonic() + seconds
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in fields:
                got.append(fields)
            fields = {}
            if len(got) >= wanted or time.monotonic() > deadline:
                return got
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return got


def test_streams_over_gunicorn_resume_and_end_when_the_server_stops(processes, make_key):
    key = make_key()
    base = processes.start_web()
    post = lambda name: requests.post(  # noqa: E731
        base + "/api/v1/events", json={"event": name}, headers=auth(key), timeout=10
    ).json()["event_id"]
    with requests.get(base + "/api/v1/stream", headers=auth(key), stream=True, timeout=30) as live:
        first = post("campaign.one")
        assert [m["id"] for m in read_sse(live, 1)] == [first]
    second, third = post("campaign.two"), post("campaign.three")
    with requests.get(
        base + "/api/v1/stream", headers=auth(key, **{"Last-Event-ID": first}), stream=True, timeout=30
    ) as resumed:
        assert [m["id"] for m in read_sse(resumed, 2)] == [second, third]
    # An open stream does not hold up a shutdown for the graceful timeout.
    live = requests.get(base + "/api/v1/stream", headers=auth(key), stream=True, timeout=30)
    started = time.monotonic()
    processes.children[0].send_signal(signal.SIGTERM)
    processes.children[0].wait(timeout=15)
    assert time.monotonic() - started < 9  # a stream holding the shutdown costs the graceful timeout, 10 s
    live.close()


def test_intake_answers_while_50_streams_are_open(processes, make_key):
    # Two readers: one key may hold at most half of a web process's stream slots.
    keys = [make_key("read"), make_key("read")]
    base = processes.start_web()
    streams = [
        requests.get(base + "/api/v1/stream", headers=auth(keys[n % 2]), stream=True, timeout=30) for n in range(50)
    ]
    try:
        assert all(s.status_code == 200 for s in streams)
        session = requests.Session()
        started = time.monotonic()
        for n in range(50):
            raw = json.dumps(text_message(wamid=f"wamid.streams{n}")).encode()
            got = session.post(
                base + "/api/webhooks/whatsapp",
                data=raw,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, APP_SECRET)},
                timeout=5,
            )
            assert got.status_code == 200
        assert time.monotonic() - started < 20
    finally:
        for s in streams:
            s.close()
