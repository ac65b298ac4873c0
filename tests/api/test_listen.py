"""`listen`, run as a developer runs it: a real process reading the local database or a real
gunicorn's stream, printing JSON lines and forwarding signed POSTs to a real receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.engines

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


class Listener:
    """`flask --app app listen ARGS` in its own process; its stdout and stderr lines as they come."""

    def __init__(self, env: dict, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "listen", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for pipe, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True).start()

    @staticmethod
    def _read(pipe, lines: list[str]) -> None:
        for line in pipe:
            lines.append(line.rstrip("\n"))

    def wait_err(self, text: str, timeout: float = 20) -> str:
        return wait_until(
            lambda: next((line for line in self.err if text in line), None), timeout, message=f"stderr {text!r}"
        )

    def events(self, count: int, timeout: float = 20) -> list[dict]:
        wait_until(lambda: len(self.out) >= count, timeout, message=f"{count} events printed")
        return [json.loads(line) for line in self.out]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def listener(processes):
    started: list[Listener] = []

    def start(*args: str) -> Listener:
        started.append(Listener(processes.env, *args))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def publish(client, key: str, event: str = "campaign.completed", **data) -> str:
    response = client.post(
        "/api/v1/events", json={"event": event, "data": data}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 202
    return response.json["event_id"]


def verify(secret: str, headers: dict, body: bytes) -> None:
    """Check both signatures as a receiver would, without wahook's code."""
    stamp = headers["X-Webhook-Timestamp"]
    plain = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(plain, headers["X-Webhook-Signature"])
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    standard = "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
    assert standard in headers["webhook-signature"].split(" ")


def test_listen_prints_each_new_event_as_one_json_line(client, make_key, listener):
    key = make_key()
    publish(client, key, event="campaign.started")  # before listen: not printed
    listen = listener("--count", "2")
    listen.wait_err("listening")
    ids = [publish(client, key, n=n) for n in range(2)]
    events = listen.events(2)
    assert [e["event_id"] for e in events] == ids and events[0]["n"] == 0
    assert listen.process.wait(timeout=10) == 0


def test_listen_forwards_signed_like_a_delivery(client, make_key, listener, receiver):
    key = make_key()
    listen = listener("--forward-to", receiver.url, "--secret", SECRET, "--count", "1")
    listen.wait_err("forwarding")
    event_id = publish(client, key, sent=5)
    wait_until(lambda: receiver.requests, message="the forwarded event")
    got = receiver.requests[0]
    assert got.body.decode() == json.dumps(listen.events(1)[0], ensure_ascii=False, separators=(",", ":"))
    assert json.loads(got.body) == listen.events(1)[0]
    assert got.headers["X-Webhook-Id"] == event_id and got.headers["X-Webhook-Event"] == "campaign.completed"
    assert got.headers["User-Agent"] == "Wahook-Webhook/1.0"
    verify(SECRET, got.headers, got.body)


def test_listen_makes_and_prints_a_secret_when_none_is_given(client, make_key, listener, receiver):
    key = make_key()
    listen = listener("--forward-to", receiver.url, "--count", "1")
    secret = re.search(r"(whsec_\S+)", listen.wait_err("signed with secret")).group(1)
    publish(client, key)
    wait_until(lambda: receiver.requests, message="the forwarded event")
    verify(secret, receiver.requests[0].headers, receiver.requests[0].body)


def test_listen_keeps_going_when_the_forward_target_is_down(client, make_key, listener):
    key = make_key()
    listen = listener("--forward-to", f"http://127.0.0.1:{free_port()}/", "--count", "2")
    listen.wait_err("forwarding")
    publish(client, key)
    publish(client, key)
    listen.wait_err("gave up", timeout=30)
    assert len(listen.events(2, timeout=30)) == 2


def test_listen_filters_by_names_and_prefixes(client, make_key, listener):
    key = make_key()
    listen = listener("--events", "campaign.*", "--count", "1")
    listen.wait_err("listening")
    publish(client, key, event="flow.session_started")
    wanted = publish(client, key, event="campaign.completed")
    assert [e["event_id"] for e in listen.events(1)] == [wanted]
    assert listen.process.wait(timeout=10) == 0


def test_listen_after_replays_from_an_event_id(client, make_key, listener):
    key = make_key()
    first, second = publish(client, key), publish(client, key)
    listen = listener("--after", first, "--count", "1")
    assert [e["event_id"] for e in listen.events(1)] == [second]


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["--events", "Not A Name"], 2, "unknown event"),
        (["--secret", "plain"], 2, "whsec_"),
        (["--forward-to", "ftp://x"], 2, "http"),
        (["--server", "http://127.0.0.1:1"], 2, "--api-key"),
        (["--after", "evt_never"], 1, "unknown event_id"),
        (["--count", "0"], 2, "count"),
    ],
)
def test_listen_refuses_bad_options_with_one_clear_line(listener, args, code, said):
    listen = listener(*args)
    assert listen.process.wait(timeout=20) == code
    time.sleep(0.1)
    assert said in "\n".join(listen.err)


def test_listen_follows_a_remote_wahook_stream(processes, make_key, listener, client):
    key = make_key("publish,read")
    base = processes.start_web()
    listen = listener("--server", base, "--api-key", key, "--events", "campaign.*", "--count", "2")
    listen.wait_err("connected")
    ids = [publish(client, key), publish(client, key, event="flow.other"), publish(client, key, note="a\u2028b\x85c")]
    events = listen.events(2)
    assert [e["event_id"] for e in events] == [ids[0], ids[2]]
    assert events[1]["note"] == "a\u2028b\x85c"
    assert listen.process.wait(timeout=10) == 0
    assert key not in "\n".join(listen.err)


def test_listen_with_a_refused_key_stops_and_says_why(processes, make_key, listener):
    base = processes.start_web()
    listen = listener("--server", base, "--api-key", make_key("publish"))
    assert listen.process.wait(timeout=20) == 1
    assert "403" in "\n".join(listen.err)


def test_newcomer_path_simulate_text_shows_a_signed_verified_event(processes, listener, runner, receiver):
    """`make run`, `listen`, `simulate text`: the first event appears, and forwarded it verifies."""
    base = processes.start_web()
    listen = listener("--forward-to", receiver.url, "--secret", SECRET, "--count", "1")
    listen.wait_err("forwarding")
    result = runner.invoke(args=["simulate", "text", "--url", base + "/api/webhooks/whatsapp"])
    assert result.exit_code == 0, result.output
    event = listen.events(1)[0]
    assert event["event"] in ("message.received", "contact.created")
    wait_until(lambda: receiver.requests, message="the forwarded event")
    verify(SECRET, receiver.requests[0].headers, receiver.requests[0].body)
