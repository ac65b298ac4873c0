"""WAHOOK_LOG_FORMAT=json: every line real gunicorn and worker processes write is one JSON
object with the ids involved, and no secret or body is ever in one."""

from __future__ import annotations

import json

import pytest
import requests

from conftest import (
    ADMIN_PASSWORD,
    APP_SECRET,
    VERIFY_TOKEN,
    Processes,
    instance_sections,
    sign,
    text_message,
    wait_until,
)
from receiver import Behaviour

ENDPOINT_SECRET = "whsec_" + "c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1iZS1sb2dnZWQ="
BEARER = "bearer-token-never-logged"
METRICS_TOKEN = "metrics-token-never-logged"
BODY_TEXT = "a customer's words never logged"
CAPABILITY = "capability-in-the-receivers-url"
API_TOKEN = "api-token-in-the-query-string"


def test_json_lines_with_ids_and_no_secrets(tmp_path, redis_url, make_receiver):
    sections = instance_sections(tmp_path, redis_url)
    sections["admin"]["metrics_token"] = METRICS_TOKEN
    processes = Processes(tmp_path, sections)
    processes.env.update({"WAHOOK_LOG_FORMAT": "json", "WAHOOK_LOG_LEVEL": "debug"})
    good, bad = make_receiver(), make_receiver()
    bad.behaviour = Behaviour(status=500, body=b"receiver says no")
    try:
        base = processes.start_web()
        for url in (good.url, bad.url):
            code, _ = processes.cli("endpoint", "add", url, "--secret", ENDPOINT_SECRET, "--bearer-token", BEARER)
            assert code == 0
        processes.start_worker()
        raw = json.dumps(text_message(text=BODY_TEXT)).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
        assert requests.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=10).ok
        forged = {**headers, "X-Hub-Signature-256": sign(raw, "not-the-secret")}
        assert requests.post(base + "/api/webhooks/whatsapp", data=raw, headers=forged, timeout=10).status_code == 401
        assert requests.post(base + "/api/webhooks/whatsapp", data=b"{", headers=headers, timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        assert requests.get(base + "/metrics", headers=auth, timeout=10).status_code == 200
        with requests.Session() as admin:
            admin.post(base + "/login", data={"password": ADMIN_PASSWORD}, timeout=10)
        wait_until(lambda: len(good.requests) >= 1 and len(bad.requests) >= 3, timeout=60, message="deliveries")
    finally:
        processes.stop_all()

    logs = sorted(tmp_path.glob("gunicorn-*.log")) + sorted(tmp_path.glob("worker-*.log"))
    assert len(logs) == 2
    lines = [line for path in logs for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every single line
        assert isinstance(record, dict) and {"time", "level", "message"} <= record.keys(), line
        records.append(record)
    assert any(r["logger"].startswith("gunicorn") for r in records)
    stored = [r for r in records if r["message"].startswith("webhook stored")]
    assert stored and all(r["webhook_id"].startswith("whk_") for r in stored)
    failed = [r for r in records if r["message"].startswith("delivery attempt failed")]
    assert failed and {"delivery_id", "endpoint_id", "event_id", "status_code"} <= failed[0].keys()
    assert failed[0]["event_id"].startswith("evt_") and failed[0]["status_code"] == 500
    delivered = [r for r in records if r["message"].startswith("delivered")]
    assert delivered and delivered[0]["endpoint_id"] != failed[0]["endpoint_id"]

    text = "\n".join(lines)
    for secret in (APP_SECRET, ENDPOINT_SECRET, ENDPOINT_SECRET[6:], BEARER, METRICS_TOKEN, ADMIN_PASSWORD):
        assert secret not in text, secret
    assert BODY_TEXT not in text and "receiver says no" not in text
    assert good.url not in text and bad.url not in text


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_log_and_debug_lines_mask_tokens_in_urls(tmp_path, redis_url, make_receiver, log_format):
    """With WAHOOK_ACCESS_LOG=1 at debug level, request lines would hold Meta's verify token,
    media links (7-day bearer links to customers' files), `?token=` of the API and the
    capability token in a receiver's URL. Each is masked."""
    processes = Processes(tmp_path, instance_sections(tmp_path, redis_url))
    processes.env.update({"WAHOOK_ACCESS_LOG": "1", "WAHOOK_LOG_LEVEL": "debug", "WAHOOK_LOG_FORMAT": log_format})
    receiver = make_receiver()
    media_token = "MEDIALINKTOKEN" + "x" * 40
    try:
        base = processes.start_web(workers=1)
        code, _ = processes.cli("endpoint", "add", f"{receiver.url}?token={CAPABILITY}")
        assert code == 0
        processes.start_worker()
        challenge = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
        assert requests.get(base + "/api/webhooks/whatsapp", params=challenge, timeout=10).text == "42"
        requests.get(f"{base}/media/{media_token}", timeout=10)
        requests.get(f"{base}/media/{media_token}?download=1", timeout=10)
        requests.get(base + "/api/v1/events", params={"token": API_TOKEN}, timeout=10)
        raw = json.dumps(text_message()).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
        assert requests.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=10).ok
        wait_until(lambda: receiver.requests, timeout=30, message="a delivery")
    finally:
        processes.stop_all()

    text = "\n".join(path.read_text(encoding="utf-8") for path in sorted(tmp_path.glob("*.log")))
    assert "/api/webhooks/whatsapp" in text  # the access log is on
    for secret in (VERIFY_TOKEN, media_token[:20], API_TOKEN, CAPABILITY):
        assert secret not in text, secret
