"""doorbell.py: waking a worker after a commit never holds up the intake, whatever Redis does."""

from __future__ import annotations

import json
import os
import signal
import time

from app import create_app
from conftest import instance_sections, sign, text_message
from gateway.delivery import embedded_redis, endpoints
from gateway.storage.db import get_db


def test_a_redis_that_stopped_answering_does_not_hold_metas_post(tmp_path, receiver):
    data = tmp_path / "own-redis"
    url = embedded_redis.ensure_running(data)
    app = create_app({"config_path": str(tmp_path / "none.toml"), **instance_sections(tmp_path, url)})
    with app.app_context():  # a delivery to make, so the intake wakes a worker
        endpoints.create(get_db(), app.config["WAHOOK"], receiver.url)
    pid = int((data / "redis.pid").read_text().strip())
    os.kill(pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        client = app.test_client()
        took = []
        for n in range(4):
            raw = json.dumps(text_message(f"wamid.HUNG{n}")).encode()
            started = time.monotonic()
            response = client.post("/api/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw)})
            took.append(time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(1.1)  # past the back-off, so every POST asks Redis again
        assert max(took) < 2, took  # was 10 s each: two 5 s socket timeouts
    finally:
        os.kill(pid, signal.SIGCONT)
        embedded_redis.stop(data)
