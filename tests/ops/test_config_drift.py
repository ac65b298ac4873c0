"""A config file edited while wahook runs never gives contradicting answers: the CLI and the
pages say which delivery rules the running processes still use and what to do, and a delivery
refused by an old rule says so instead of asking for a setting the file already has."""

from __future__ import annotations

import json
import os

import pytest

from app import create_app
from conftest import (
    element,
    instance_sections,
    login,
    sign,
    text_message,
    wait_until,
    worker_in_process,
    write_config,
)
from gateway import runstate
from gateway.delivery import doorbell
from gateway.storage import db


@pytest.fixture
def edited(tmp_path, redis_url, receiver):
    """wahook started from a strict config file (the `running` app, as gunicorn and the worker
    read it), then the file edited to allow http:// and private addresses, then an endpoint
    added by the CLI (the `cli` app, which reads the file as it is now)."""
    sections = instance_sections(tmp_path, redis_url)
    sections["delivery"].update(allow_http=False, allow_private_urls=False)
    path = write_config(tmp_path / "config.toml", sections)
    running = create_app({"TESTING": True, "config_path": str(path)})
    doorbell.redis_connection(running.config["WAHOOK"]).flushall()
    sections["delivery"].update(allow_http=True, allow_private_urls=True)
    write_config(path, sections)
    cli = create_app({"TESTING": True, "config_path": str(path)})
    result = cli.test_cli_runner().invoke(args=["endpoint", "add", receiver.url])
    assert result.exit_code == 0, result.output
    yield running, cli, path
    db.close_all()


def test_a_delivery_refused_by_an_old_rule_says_the_file_changed_and_what_to_do(edited, receiver):
    running, _, path = edited
    body = json.dumps(text_message()).encode()
    headers = {"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"}
    with worker_in_process(running):
        assert running.test_client().post("/api/webhooks/whatsapp", data=body, headers=headers).status_code == 200
        conn = db.connection(running.config["WAHOOK"].database)
        wait_until(
            lambda: conn.execute("SELECT count(*) FROM deliveries WHERE state = 'failed'").fetchone()[0] == 2,
            message="both deliveries to fail",
        )
    errors = {row[0] for row in conn.execute("SELECT error FROM attempts")}
    assert len(errors) == 1
    error = errors.pop()
    assert error.startswith("URL must start with https://")
    assert f"wahook still runs with delivery.allow_http = false, read at start; {path} now says true" in error
    assert "restart wahook" in error and "mark the endpoint local" in error
    assert "set delivery.allow_http" not in error  # the file already says so
    assert receiver.requests == []


def test_the_pages_name_the_rules_still_in_use(edited):
    running, _, path = edited
    client = running.test_client()
    assert login(client).status_code == 303
    for page in ("/settings", "/monitor"):
        notice = element(client.get(page).get_data(as_text=True), "delivery-drift-notice")
        assert f"delivery.allow_http = true in {path} ; wahook still runs with false , read at start" in notice
        assert "delivery.allow_private_urls = true" in notice
        assert "restart wahook" in notice and "Local receiver" in notice


def test_the_cli_says_the_running_processes_still_use_the_old_rules(edited, receiver):
    running, cli, path = edited
    data_dir = running.config["WAHOOK"].data_dir
    runstate.write_run_info(
        data_dir,
        {
            "pid": os.getpid(),
            "url": "http://127.0.0.1:1",
            "config": str(path),
            "config_fingerprint": None,
            "delivery": running.config["WAHOOK"]["delivery"],
        },
    )
    result = cli.test_cli_runner().invoke(args=["endpoint", "list"])
    assert result.exit_code == 0
    assert "delivery.allow_http = true in the file, still false in the running wahook" in result.stderr
    assert "restart wahook" in result.stderr and "--local" in result.stderr
    result = cli.test_cli_runner().invoke(args=["endpoint", "add", receiver.url + "?two"])
    assert "still false in the running wahook" in json.loads(result.stdout)["warning"]
    # Running with what the file says: nothing to say.
    runstate.write_run_info(
        data_dir,
        {"pid": os.getpid(), "url": "x", "config": str(path), "delivery": cli.config["WAHOOK"]["delivery"]},
    )
    assert "warning" not in cli.test_cli_runner().invoke(args=["endpoint", "list"]).stderr
