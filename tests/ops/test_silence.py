"""Silence: no Meta webhook for meta.silence_hours while an endpoint is enabled shows on the
monitor, in /healthz and /metrics, and goes out once as gateway.silent; a webhook clears it."""

from __future__ import annotations

import json
import time

import pytest
import requests

import worker
from app import create_app
from conftest import SWEEP_INTERVAL, Processes, instance_sections, login, make_app, sign, text_message, wait_until
from gateway.delivery import endpoints
from gateway.intake.event_catalog import iso
from gateway.ops import heartbeats, silence
from gateway.storage import db

pytestmark = pytest.mark.engines


def test_a_short_window_with_real_processes(tmp_path, redis_url, make_receiver):
    """3.6 s of quiet: one event, /healthz says silent (still 200); a webhook clears it and the
    next silent period sends its own event."""
    sections = instance_sections(tmp_path, redis_url)
    sections["meta"]["silence_hours"] = 0.001
    processes = Processes(tmp_path, sections)
    try:
        ops, everything = make_receiver(), make_receiver()
        base = processes.start_web()
        # Endpoints and a first webhook together: the silent period starts at that webhook.
        app = create_app({"config_path": str(processes.config_path)})
        with app.app_context():
            endpoints.create(db.get_db(), app.config["WAHOOK"], ops.url, events="gateway.silent")
            endpoints.create(db.get_db(), app.config["WAHOOK"], everything.url)
        posted = post(base, "wamid.silence1")

        def health() -> dict:
            return requests.get(base + "/healthz", timeout=5).json()

        assert health()["meta"] == "ok"
        processes.start_worker()
        wait_until(lambda: ops.requests, timeout=20, message="gateway.silent")
        response = requests.get(base + "/healthz", timeout=5)
        assert response.status_code == 200 and response.json()["meta"] == "silent" and response.json()["ok"]
        first = json.loads(ops.requests[0].body)
        assert first["event"] == "gateway.silent" and first["hours"] == 0.001
        assert first["since"] in (iso(posted - 1), iso(posted))
        assert ops.requests[0].headers["X-Webhook-Event"] == "gateway.silent"
        time.sleep(5 * SWEEP_INTERVAL)  # five more looks of the sweeper: still one event for one silent period
        assert len(ops.requests) == 1
        assert "wahook_meta_silent 1.0" in requests.get(base + "/metrics", timeout=5).text

        post(base, "wamid.silence2")
        assert health()["meta"] == "ok"
        assert "wahook_meta_silent 0.0" in requests.get(base + "/metrics", timeout=5).text
        wait_until(lambda: len(ops.requests) == 2, timeout=20, message="the second silent period's event")
        second = json.loads(ops.requests[1].body)
        assert second["event_id"] != first["event_id"]
        # An empty filter leaves operational events out.
        assert {json.loads(r.body)["event"] for r in everything.requests} <= {"message.received", "contact.created"}
    finally:
        processes.stop_all()
        db.close_all()


def post(base: str, wamid: str) -> float:
    raw = json.dumps(text_message(wamid=wamid)).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
    assert requests.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=10).status_code == 200
    return time.time()


def test_off_by_default_and_without_endpoints(tmp_path, redis_url, conn, add_endpoint, client):
    heartbeats.beat(conn, "w1", time.time())
    add_endpoint("http://127.0.0.1:9/hook")
    conn.execute("UPDATE endpoints SET created_at = 0")
    assert client.get("/healthz").json["meta"] == "ok"  # silence_hours = 0: not watching

    app = make_app(tmp_path / "watching", redis_url, meta={"silence_hours": 0.5})
    with app.app_context():
        quiet_conn = db.get_db()
        assert silence.state(quiet_conn, app.config["WAHOOK"]).silent is False  # no endpoint yet
        assert silence.check(quiet_conn, app.config["WAHOOK"]) is None
    db.close_all()


def test_monitor_and_healthz_say_so_and_one_event_per_period(tmp_path, redis_url):
    app = make_app(tmp_path, redis_url, meta={"silence_hours": 1.5})
    config = app.config["WAHOOK"]
    client = app.test_client()
    with app.app_context():
        conn = db.get_db()
        endpoints.create(conn, config, "http://127.0.0.1:9/ops", events="gateway.silent")
        heartbeats.beat(conn, "w1", time.time())
        long_ago = time.time() - 2 * 3600
        conn.execute("UPDATE endpoints SET created_at = ?", (long_ago - 100,))
        conn.execute("INSERT INTO webhooks (webhook_id, received_at, body) VALUES ('whk_old', ?, x'7b7d')", (long_ago,))
        assert client.get("/healthz").json == {
            "ok": True,
            "database": "ok",
            "redis": "ok",
            "worker": "ok",
            "meta": "silent",
        }
        first = silence.check(conn, config)
        assert first is not None
        assert silence.check(conn, config) is None  # the same silent period
        rows = conn.execute("SELECT body FROM events WHERE name = 'gateway.silent'").fetchall()
        assert len(rows) == 1
        assert json.loads(rows[0][0])["since"] == iso(long_ago)
        assert conn.execute("SELECT count(*) FROM deliveries WHERE event_name = 'gateway.silent'").fetchone()[0] == 1

        assert login(client).status_code == 303
        page = client.get("/monitor").text
        assert 'id="meta-silent"' in page and "1.5 hours" in page

        conn.execute("UPDATE webhooks SET received_at = ?", (time.time(),))
        assert client.get("/healthz").json["meta"] == "ok"
        assert 'id="meta-silent"' not in client.get("/monitor").text
        assert silence.check(conn, config) is None
    db.close_all()


def test_a_silence_longer_than_retention_is_announced_once(tmp_path, redis_url, storage_database):
    """Pruning takes away both the last webhook (which marked the start of the silent period)
    and the gateway.silent event (which marked it as announced): the same silence must not be
    announced again, while the next one still is."""
    app = make_app(tmp_path, redis_url, meta={"silence_hours": 24}, storage={"database": storage_database})
    config = app.config["WAHOOK"]
    day = 86400
    with app.app_context():
        conn = db.get_db()
        endpoints.create(conn, config, "http://127.0.0.1:9/ops", events="gateway.silent")
        now = time.time()
        conn.execute("UPDATE endpoints SET created_at = ?", (now - 40 * day,))
        conn.execute(
            "INSERT INTO webhooks (webhook_id, received_at, body) VALUES ('whk_old', ?, ?)", (now - 31 * day, b"{}")
        )
        assert silence.check(conn, config, now - 30 * day) is not None  # announced a day into the silence
        conn.execute("UPDATE events SET created_at = ? WHERE name = 'gateway.silent'", (now - 30 * day,))
        worker.prune(conn, retention_days=7)
        assert conn.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert silence.check(conn, config) is None  # still the same silence
        assert silence.state(conn, config).silent  # and still shown as one

        post_time = time.time() - 2 * day  # Meta came back, then went quiet again
        conn.execute(
            "INSERT INTO webhooks (webhook_id, received_at, body) VALUES ('whk_new', ?, ?)", (post_time, b"{}")
        )
        assert silence.check(conn, config) is not None
        assert silence.check(conn, config) is None
    db.close_all()
