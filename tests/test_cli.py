"""The command line: `endpoint`, `deliveries retry` and `simulate KIND` against a real gunicorn."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook

import endpoints
import samples
from conftest import cli_json, text_message, wait_until
from receiver import Behaviour


def test_simulate_posts_a_signed_sample_that_becomes_an_event(processes, runner, conn):
    base = processes.start_web(workers=1)
    result = runner.invoke(args=["simulate", "text", "--url", base + "/api/webhooks/whatsapp"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status_code"] == 200
    names = [r[0] for r in conn.execute("SELECT name FROM events")]
    assert names == ["message.received"]


@pytest.mark.parametrize("kind", ["image", "status", "template", "calls", "batch"])
def test_simulate_kinds(processes, runner, conn, kind):
    base = processes.start_web(workers=1)
    result = runner.invoke(args=["simulate", kind, "--url", base + "/api/webhooks/whatsapp"])
    assert result.exit_code == 0, result.output
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] >= 1


def test_simulate_unknown_kind_lists_the_kinds(runner):
    result = runner.invoke(args=["simulate", "nonsense"])
    assert result.exit_code == 2
    assert "text" in result.output and "template" in result.output


def test_simulate_without_app_secret_says_so(tmp_path, redis_url):
    from app import create_app
    from conftest import instance_sections

    sections = instance_sections(tmp_path, redis_url)
    sections["meta"]["app_secret"] = ""
    app = create_app({"config_path": str(tmp_path / "none.toml"), **sections})
    result = app.test_cli_runner().invoke(args=["simulate", "text"])
    assert result.exit_code == 1
    assert "app_secret" in json.loads(result.output)["error"]


def test_simulate_with_nothing_listening_says_so(runner):
    result = runner.invoke(args=["simulate", "text", "--url", "http://127.0.0.1:9/api/webhooks/whatsapp"])
    assert result.exit_code == 1
    assert "could not reach" in json.loads(result.output)["error"]


def test_every_sample_kind_is_offered():
    assert {"text", "image", "status", "template"} <= set(samples.KINDS)


def test_cli_endpoint_add_list_test_remove(runner, receiver):
    code, added = cli_json(
        runner,
        "endpoint",
        "add",
        receiver.url,
        "--events",
        "message.received,template.status_changed",
        "--bearer-token",
        "abc",
    )
    assert code == 0 and added["id"] == 1 and added["secret"].startswith("whsec_")
    assert len(endpoints.secret_key_bytes(added["secret"])) == 32
    assert added["events"] == ["message.received", "template.status_changed"]
    code, listed = cli_json(runner, "endpoint", "list")
    assert listed[0]["url"] == receiver.url and added["secret"] not in json.dumps(listed)
    code, outcome = cli_json(runner, "endpoint", "test", "1")
    assert code == 0 and outcome["ok"] is True and outcome["status_code"] == 200 and outcome["error"] is None
    (got,) = receiver.wait_for(1)
    assert json.loads(got.body)["event"] == "webhook.test"
    Webhook(added["secret"]).verify(got.body, {k.lower(): v for k, v in got.headers.items()})
    assert cli_json(runner, "endpoint", "remove", "1") == (0, {"removed": 1})
    assert cli_json(runner, "endpoint", "list") == (0, [])


def test_cli_endpoint_test_reports_a_failure(runner, receiver):
    receiver.behaviour = Behaviour(status=500)
    cli_json(runner, "endpoint", "add", receiver.url)
    code, outcome = cli_json(runner, "endpoint", "test", "1")
    assert code == 1 and outcome == {
        "ok": False,
        "status_code": 500,
        "duration_ms": outcome["duration_ms"],
        "error": "HTTP 500",
    }


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--secret", "plain"], "secret"),
        (["--secret", "whsec_!!!"], "secret"),
        (["--secret", "whsec_c2hvcnQ="], "secret"),
        (["--events", "message.recieved"], "events"),
        (["--bearer-token", "a b"], "bearer_token"),
    ],
)
def test_cli_endpoint_add_refuses_bad_values(runner, receiver, args, field):
    code, answer = cli_json(runner, "endpoint", "add", receiver.url, *args)
    assert code == 1 and answer["field"] == field and answer["error"]
    assert cli_json(runner, "endpoint", "list") == (0, [])


def test_cli_refuses_unknown_ids_and_bad_times(runner):
    assert cli_json(runner, "endpoint", "remove", "42") == (1, {"error": "no endpoint 42"})
    assert cli_json(runner, "endpoint", "test", "42") == (1, {"error": "no endpoint 42"})
    code, answer = cli_json(runner, "deliveries", "retry", "--since", "yesterday")
    assert code == 1 and answer["field"] == "since"


def test_cli_given_secret_is_used(runner, receiver):
    secret = endpoints.generate_secret()
    code, added = cli_json(runner, "endpoint", "add", receiver.url, "--secret", secret)
    assert code == 0 and added["secret"] == secret


def test_cli_replay_since_resends_delivered_events(post_webhook, receiver, add_endpoint, running_worker, runner, conn):
    add_endpoint(receiver.url)
    post_webhook(text_message())
    receiver.wait_for(1)
    wait_until(lambda: conn.execute("SELECT state FROM deliveries").fetchone()[0] == "delivered", message="delivered")
    code, answer = cli_json(runner, "deliveries", "retry", "--since", "2000-01-01T00:00:00Z")
    assert answer == {"requeued": 1}
    first, again = receiver.wait_for(2)
    assert first.headers["X-Webhook-Id"] == again.headers["X-Webhook-Id"]


def test_cli_retry_failed_covers_a_failed_test_send(runner, receiver, conn):
    receiver.behaviour = Behaviour(status=500)
    cli_json(runner, "endpoint", "add", receiver.url)
    assert cli_json(runner, "endpoint", "test", "1")[0] == 1
    assert cli_json(runner, "deliveries", "retry", "--failed") == (0, {"requeued": 1})
    assert [tuple(r) for r in conn.execute("SELECT event_name, state FROM deliveries")] == [("webhook.test", "pending")]
