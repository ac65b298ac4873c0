"""The command line: `endpoint`, `deliveries retry` and `simulate KIND` against a real gunicorn."""

from __future__ import annotations

import hmac
import json
import os
import re
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook

from app import create_app
from conftest import ROOT, cli_json, text_message, wait_until
from gateway import cli, runstate
from gateway.delivery import endpoints
from gateway.intake import samples
from gateway.storage import db
from receiver import Behaviour

pytestmark = pytest.mark.engines


def test_simulate_posts_a_signed_sample_that_becomes_an_event(processes, runner, conn):
    base = processes.start_web(workers=1)
    result = runner.invoke(args=["simulate", "text", "--url", base + "/api/webhooks/whatsapp"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status_code"] == 200
    names = [r[0] for r in conn.execute("SELECT name FROM events ORDER BY id")]
    assert names == ["contact.created", "message.received"]


@pytest.mark.parametrize("kind", ["image", "status", "template", "calls", "batch", "username_no_phone"])
def test_simulate_kinds(processes, runner, conn, kind):
    base = processes.start_web(workers=1)
    result = runner.invoke(args=["simulate", kind, "--url", base + "/api/webhooks/whatsapp"])
    assert result.exit_code == 0, result.output
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] >= 1


def test_simulate_unknown_kind_lists_the_kinds(runner):
    result = runner.invoke(args=["simulate", "nonsense"])
    assert result.exit_code == 2
    assert "text" in result.output and "template" in result.output


def test_simulate_on_a_fresh_install_gets_a_200_without_an_app_secret(fresh_processes, monkeypatch):
    # Meta's App secret not set yet: simulate signs with the install's local key, and the
    # web server of the same install (another process) accepts it.
    base = fresh_processes.start_web(workers=1)
    monkeypatch.setenv("WAHOOK_BIND", base.removeprefix("http://"))
    app = create_app({"config_path": str(fresh_processes.config_path)})
    result = app.test_cli_runner().invoke(args=["simulate", "text"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status_code"] == 200
    db.close_all()


def run_info(app, url: str, pid: int | None = None, fingerprint=None) -> None:
    """run.json as `make run` writes it in the app's data folder."""
    config = app.config["WAHOOK"]
    runstate.write_run_info(
        config.data_dir,
        {
            "pid": pid or os.getpid(),
            "bind": url.removeprefix("http://"),
            "url": url,
            "config": str(config.path),
            "config_fingerprint": fingerprint,
        },
    )


def test_simulate_posts_where_make_run_serves_and_wahook_bind_still_wins(processes, app, runner, monkeypatch):
    base = processes.start_web(workers=1)
    monkeypatch.delenv("WAHOOK_BIND", raising=False)
    run_info(app, base)
    result = runner.invoke(args=["simulate", "text"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["url"] == base + "/api/webhooks/whatsapp"

    monkeypatch.setenv("WAHOOK_BIND", "127.0.0.1:9")
    result = runner.invoke(args=["simulate", "text"])
    assert result.exit_code == 1
    assert "http://127.0.0.1:9/api/webhooks/whatsapp" in json.loads(result.stdout)["error"]


def test_simulate_ignores_what_a_dead_make_run_left(app, monkeypatch):
    monkeypatch.delenv("WAHOOK_BIND", raising=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_info(app, "http://127.0.0.1:9", pid=dead.pid)
    with app.app_context():
        assert cli.simulate_target()[0] == "http://127.0.0.1:8000/api/webhooks/whatsapp"
    for garbage in ("{", "[]", '{"url": 1, "pid": "x"}', "\udcff"):
        (app.config["WAHOOK"].data_dir / "run.json").write_text(garbage, errors="surrogateescape")
        with app.app_context():
            assert cli.simulate_target() == ("http://127.0.0.1:8000/api/webhooks/whatsapp", None)


def test_simulate_says_when_the_config_changed_since_the_server_started(processes, redis_url, monkeypatch):
    base = processes.start_web(workers=1)
    monkeypatch.delenv("WAHOOK_BIND", raising=False)
    app = create_app({"config_path": str(processes.config_path)})
    run_info(app, base, fingerprint=runstate.fingerprint(processes.config_path))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["simulate", "text"])
    assert result.exit_code == 0 and "warning" not in json.loads(result.stdout)

    with processes.config_path.open("a") as f:
        f.write("\n# an edit\n")
    result = runner.invoke(args=["simulate", "text"])
    assert result.exit_code == 0, result.output
    warning = json.loads(result.stdout)["warning"]
    assert "still use the old values" in warning and "Restart" in warning
    assert f"warning: {warning}" in result.stderr
    db.close_all()


def test_simulate_help_lists_kinds_whole():
    result = CliRunner().invoke(cli.simulate, ["--help"], terminal_width=60)
    words = set(re.findall(r"[a-z_]+", result.output))
    assert set(samples.KINDS) <= words, set(samples.KINDS) - words
    assert max(len(line) for line in result.output.splitlines()) <= 80


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
    add_endpoint(receiver.url, events="message.received")
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


def verifies(secret: str, got) -> bool:
    """Whether the Standard Webhooks library, holding only `secret`, accepts a received request."""
    from standardwebhooks.webhooks import WebhookVerificationError

    try:
        Webhook(secret).verify(got.body, {k.lower(): v for k, v in got.headers.items()})
    except WebhookVerificationError:
        return False
    return True


def test_cli_rotate_secret_keeps_the_old_one_signing_during_the_overlap(runner, receiver, conn):
    code, added = cli_json(runner, "endpoint", "add", receiver.url)
    old = added["secret"]
    code, rotated = cli_json(runner, "endpoint", "rotate-secret", str(added["id"]), "--keep-old-hours", "0.5")
    assert code == 0 and rotated["id"] == added["id"]
    new = rotated["secret"]
    assert new != old and endpoints.check_secret(new) is None
    assert rotated["previous_secret_until"] == pytest.approx(
        endpoints.get(conn, added["id"])["created_at"] + 1800, abs=60
    )
    assert cli_json(runner, "endpoint", "test", str(added["id"]))[0] == 0
    (got,) = receiver.wait_for(1)
    # A receiver still holding the old secret and one already holding the new both accept it.
    assert verifies(old, got) and verifies(new, got)
    assert not verifies(endpoints.generate_secret(), got)
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    # New first; X-Webhook-Signature is made with the new secret alone.
    assert verifies(new, type(got)(got.path, {**got.headers, "webhook-signature": signatures[0]}, got.body, got.at))
    stamp = got.headers["X-Webhook-Timestamp"].encode()
    assert got.headers["X-Webhook-Signature"] == hmac.new(new.encode(), stamp + b"." + got.body, "sha256").hexdigest()
    # Once the overlap is over only the new secret signs.
    conn.execute("UPDATE endpoints SET previous_secret_until = ? WHERE id = ?", (time.time() - 1, added["id"]))
    assert cli_json(runner, "endpoint", "test", str(added["id"]))[0] == 0
    later = receiver.wait_for(2)[1]
    assert verifies(new, later) and not verifies(old, later)
    assert " " not in later.headers["webhook-signature"]


def test_cli_rotate_secret_defaults_to_a_day_and_zero_ends_the_old_one(runner, receiver, conn):
    code, added = cli_json(runner, "endpoint", "add", receiver.url)
    code, rotated = cli_json(runner, "endpoint", "rotate-secret", str(added["id"]))
    assert code == 0 and rotated["previous_secret_until"] == pytest.approx(time.time() + 86400, abs=60)
    code, again = cli_json(runner, "endpoint", "rotate-secret", str(added["id"]), "--keep-old-hours", "0")
    assert code == 0 and again["previous_secret_until"] is None
    assert endpoints.signing_secrets(endpoints.get(conn, added["id"]), time.time()) == [again["secret"]]


@pytest.mark.parametrize("hours", ["-2", "1e9", "nan", "inf", "soon", ""])
def test_cli_rotate_secret_refuses_bad_overlaps(runner, receiver, conn, hours):
    code, added = cli_json(runner, "endpoint", "add", receiver.url)
    code, answer = cli_json(runner, "endpoint", "rotate-secret", str(added["id"]), "--keep-old-hours", hours)
    assert code == 1 and answer["field"] == "keep_old_hours"
    assert endpoints.get(conn, added["id"])["secret"] == added["secret"]


def test_cli_rotate_secret_of_an_unknown_endpoint(runner):
    code, answer = cli_json(runner, "endpoint", "rotate-secret", "999")
    assert code == 1 and "no endpoint 999" in answer["error"]


def test_wahook_script_runs_the_cli_from_any_folder_without_an_active_venv(tmp_path):
    # A relative WAHOOK_CONFIG is taken from where the command was typed, as a user means it.
    (tmp_path / "config.toml").write_text('[storage]\ndatabase = "data/here.db"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAHOOK_", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # no venv on PATH
    env["WAHOOK_CONFIG"] = "config.toml"
    done = subprocess.run(
        [str(ROOT / "wahook"), "endpoint", "list"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert (tmp_path / "data" / "here.db").exists()
    bad = subprocess.run(
        [str(ROOT / "wahook"), "endpoint", "remove", "7"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and json.loads(bad.stdout) == {"error": "no endpoint 7"}
