"""Endpoints: ids are never given twice, on a new database and on one that already lost an
endpoint before the high-water mark existed (db migration 4)."""

from __future__ import annotations

import time

import pytest

from conftest import instance_sections
from gateway.config import load_config
from gateway.delivery import endpoints
from gateway.pages import monitor
from gateway.storage import db

pytestmark = pytest.mark.engines


def make(conn, config, url="http://127.0.0.1:9/hook"):
    return endpoints.create(conn, config, url)["id"]


def test_a_deleted_endpoints_id_is_never_given_again(app, conn):
    config = app.config["WAHOOK"]
    first, second = make(conn, config), make(conn, config)
    assert (first, second) == (1, 2)
    endpoints.remove(conn, second)
    assert make(conn, config) == 3
    endpoints.remove(conn, 3)
    endpoints.remove(conn, first)
    assert make(conn, config) == 4


def test_an_old_database_that_lost_an_endpoint_keeps_its_history_apart(tmp_path, redis_url):
    conn = db.connect(tmp_path / "old.db")
    assert db.migrate(conn, db.migrations()[:3]) == 3  # as shipped before the high-water mark
    now = time.time()
    with db.transaction(conn):
        for endpoint_id in (1, 2, 3):
            conn.execute(
                "INSERT INTO endpoints (id, url, secret, created_at, updated_at) VALUES (?, ?, 's', ?, ?)",
                (endpoint_id, f"https://e{endpoint_id}.example/hook", now, now),
            )
        for endpoint_id in (1, 3):
            delivery = conn.execute(
                "INSERT INTO deliveries (endpoint_id, endpoint_url, event_name, message_id, state, next_attempt_at,"
                " created_at, updated_at) VALUES (?, 'u', 'message.received', 'evt', 'failed', ?, ?, ?)",
                (endpoint_id, now, now, now),
            ).lastrowid
            conn.execute(
                "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, status_code, ok)"
                " VALUES (?, ?, ?, 5, 500, 0)",
                (delivery, endpoint_id, now),
            )
        # #3 failed, then was deleted: its delivery forgets it, its attempts do not. #2 went quietly.
        conn.execute("DELETE FROM endpoints WHERE id IN (2, 3)")
    assert db.migrate(conn) == db.migrations()[-1][0]
    # The migration changed no delivery's endpoint (no table was rebuilt).
    assert [tuple(r) for r in conn.execute("SELECT endpoint_id FROM deliveries ORDER BY id")] == [(1,), (None,)]

    config = load_config(None, instance_sections(tmp_path, redis_url))
    new = make(conn, config)
    assert new == 4
    health = {item.id: item for item in monitor.endpoint_health(conn)}
    assert health[new].state == "idle" and health[new].failing_since is None


def test_an_endpoint_inserted_with_its_own_id_raises_the_mark(app, conn):
    now = time.time()
    with db.transaction(conn):
        conn.execute(
            "INSERT INTO endpoints (id, url, secret, created_at, updated_at)"
            " VALUES (40, 'https://x.example/', 's', ?, ?)",
            (now, now),
        )
        conn.execute("DELETE FROM endpoints WHERE id = 40")
    assert make(conn, app.config["WAHOOK"]) == 41
