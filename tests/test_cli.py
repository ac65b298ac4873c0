"""`flask --app app simulate KIND` against a real gunicorn, and history pruning."""

from __future__ import annotations

import json
import time

import pytest

import samples
import worker


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


def test_prune_removes_only_what_is_older_than_retention(post_webhook, conn):
    from test_intake import text_message

    post_webhook(text_message("wamid.OLD"))
    post_webhook(text_message("wamid.NEW"))
    old = time.time() - 31 * 86400
    conn.execute("UPDATE webhooks SET received_at = ? WHERE id = 1", (old,))
    conn.execute("INSERT INTO rejections (minute, reason, count) VALUES (?, 'wrong signature', 3)", (int(old // 60),))
    conn.execute("INSERT INTO login_failures (remote_addr, at) VALUES ('203.0.113.9', ?)", (time.time() - 7200,))
    conn.execute("INSERT INTO login_failures (remote_addr, at) VALUES ('203.0.113.9', ?)", (time.time() - 10,))
    assert worker.prune(conn, 30) >= 3
    assert conn.execute("SELECT count(*) FROM login_failures").fetchone()[0] == 1  # the recent one counts still
    kept = [json.loads(r[0])["message_id"] for r in conn.execute("SELECT body FROM events")]
    assert kept == ["wamid.NEW"]
    assert conn.execute("SELECT count(*) FROM rejections").fetchone()[0] == 0
