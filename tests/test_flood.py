"""A user's worst afternoon, with real processes: a flood of Meta webhooks through gunicorn,
the worker killed with SIGKILL in the middle, and every event still delivered."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import requests

from conftest import sign, text_message, wait_every_event_delivered, wait_until
from gateway.delivery import endpoints
from gateway.storage.db import get_db

pytestmark = pytest.mark.engines

TOTAL = 300


@pytest.mark.slow
def test_worker_killed_mid_flood_loses_nothing(app, processes, receiver, conn):
    with app.app_context():
        endpoints.create(get_db(), app.config["WAHOOK"], receiver.url, events="message.received")
    base = processes.start_web()
    first = processes.start_worker()
    statuses: list[int] = []

    def post(offset: int) -> None:
        session = requests.Session()
        for n in range(offset, TOTAL, 4):
            raw = json.dumps(text_message(f"wamid.FLOOD{n}")).encode()
            response = session.post(
                base + "/api/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw)}, timeout=10
            )
            statuses.append(response.status_code)

    posters = [threading.Thread(target=post, args=(k,)) for k in range(4)]
    for thread in posters:
        thread.start()
    wait_until(lambda: len(receiver.requests) >= 50, timeout=30, message="the flood to start arriving")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    arrived_before_kill = len({r.headers["X-Webhook-Id"] for r in list(receiver.requests)})
    assert arrived_before_kill < TOTAL  # the kill really fell in the middle of the flood
    for thread in posters:
        thread.join()
    assert statuses == [200] * TOTAL
    processes.start_worker()
    wait_every_event_delivered(conn, receiver, TOTAL)
