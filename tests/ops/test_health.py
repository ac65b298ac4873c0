"""GET /healthz: 200 when the database, Redis and a worker all answer; 503 naming what is down."""

from __future__ import annotations

import time

import pytest

from app import create_app
from conftest import instance_sections, wait_until
from gateway.ops import heartbeats

pytestmark = pytest.mark.engines


def test_no_worker_is_503_with_the_reason(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json == {
        "ok": False,
        "database": "ok",
        "redis": "ok",
        "worker": "error: no worker has started",
        "meta": "ok",
    }


def test_all_up_is_200(client, conn):
    heartbeats.beat(conn, "w1", time.time())
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"ok": True, "database": "ok", "redis": "ok", "worker": "ok", "meta": "ok"}


def test_silent_worker_is_503(client, conn):
    heartbeats.beat(conn, "w1", time.time())
    conn.execute("UPDATE workers SET seen_at = ?", (time.time() - 120,))
    body = client.get("/healthz").json
    assert body["ok"] is False and body["worker"].startswith("error: no worker heartbeat for 1")


def test_redis_down_is_503(tmp_path, conn):
    app = create_app(
        {"config_path": str(tmp_path / "none.toml"), **instance_sections(tmp_path, "unix:///nonexistent.sock")}
    )
    heartbeats.beat(conn, "w1", time.time())
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["redis"].startswith("error:") and response.json["database"] == "ok"


def test_broken_database_is_503_not_500(client, conn):
    conn.execute("ALTER TABLE webhooks RENAME TO gone")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["database"].startswith("error:")


@pytest.mark.slow
def test_needs_no_login_and_reports_a_real_worker(processes):
    base = processes.start_web()
    import requests

    assert requests.get(base + "/healthz", timeout=5).status_code == 503
    processes.start_worker()
    wait_until(lambda: requests.get(base + "/healthz", timeout=5).status_code == 200, timeout=20, message="healthy")
