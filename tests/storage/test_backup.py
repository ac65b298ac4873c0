"""`backup PATH`: a checked, consistent copy taken while intake and delivery run, and a restore
from it that loses nothing and sends what was pending."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time

import pytest
import requests

from conftest import Processes, cli_json, instance_sections, sign, text_message, wait_until
from gateway.storage import db
from receiver import Behaviour


def test_a_copy_that_opens_with_everything_in_it(tmp_path, runner, post_webhook, add_endpoint):
    add_endpoint("http://127.0.0.1:9/hook", events="message.received")
    for i in range(3):
        assert post_webhook(text_message(wamid=f"wamid.copy{i}")).status_code == 200
    target = tmp_path / "copies" / "wahook-backup.db"
    target.parent.mkdir()
    code, out = cli_json(runner, "backup", str(target))
    assert code == 0
    assert out == {"path": str(target), "bytes": target.stat().st_size}
    assert out["bytes"] > 0
    assert target.stat().st_mode & 0o777 == 0o600  # it holds endpoint secrets
    copy = sqlite3.connect(target)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 3
    assert copy.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchone()[0] == 3
    copy.close()
    assert sorted(p.name for p in target.parent.iterdir()) == ["wahook-backup.db"]  # no partial files left


def test_refuses_what_it_cannot_write_without_touching_anything(tmp_path, runner):
    existing = tmp_path / "taken.db"
    existing.write_bytes(b"keep me")
    cases = {
        str(existing): "already exists",
        str(tmp_path): "already exists",
        str(tmp_path / "missing" / "b.db"): "does not exist",
        "nul\x00byte.db": "NUL byte",
        "x" * 300 + ".db": "backup",
    }
    for path, says in cases.items():
        code, out = cli_json(runner, "backup", path)
        assert code == 1
        assert out["field"] == "path" and says in out["error"], out
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_backup_during_a_flood_then_restore(tmp_path, redis_url, receiver):
    """Real gunicorn and a worker under load; the backup has every webhook acknowledged before
    it started, and a worker on a restored copy in a fresh data folder sends what was pending."""
    sections = instance_sections(tmp_path, redis_url)
    live = Processes(tmp_path, sections)
    receiver.behaviour = Behaviour(delay=0.2)  # slow enough that deliveries pile up
    try:
        app_conn = db.connect(sections["storage"]["database"])
        db.migrate(app_conn)
        base = live.start_web(workers=2)
        code, out = live.cli("endpoint", "add", receiver.url)
        assert code == 0, out
        live.start_worker()
        acked: list[tuple[float, str]] = []
        stop = threading.Event()

        def flood(prefix: str) -> None:
            with requests.Session() as session:
                i = 0
                while not stop.is_set():
                    wamid = f"wamid.{prefix}{i}"
                    raw = json.dumps(text_message(wamid=wamid)).encode()
                    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
                    if session.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=10).ok:
                        acked.append((time.time(), wamid))
                    i += 1

        threads = [threading.Thread(target=flood, args=(p,)) for p in ("a", "b")]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acked) >= 40, timeout=30, message="a flood under way")
        started = time.time()
        target = tmp_path / "backup.db"
        code, out = live.cli("backup", str(target))
        assert code == 0, out
        assert out["path"] == str(target)
        time.sleep(0.5)  # the flood goes on after the copy
        stop.set()
        for thread in threads:
            thread.join()
        before = {wamid for at, wamid in acked if at < started}
        after_count = len(acked)
    finally:
        live.stop_all()
        app_conn.close()

    copy = sqlite3.connect(target)
    stored = {row[0] for row in copy.execute("SELECT json_extract(body, '$.message_id') FROM events")}
    assert before <= stored  # nothing acknowledged before the backup began is missing from it
    assert len(stored) < after_count  # the copy is of a moment, not of the end
    waiting = {
        row[0] for row in copy.execute("SELECT message_id FROM deliveries WHERE state IN ('pending', 'retrying')")
    }
    copy.close()
    assert waiting, "the flood left nothing pending at the moment of the copy; the test proves nothing"

    # Restore: a fresh data folder, the copy put in place, a worker started.
    fresh = tmp_path / "restored"
    restored_sections = instance_sections(fresh, redis_url)
    os.makedirs(fresh / "data")
    shutil.copyfile(target, restored_sections["storage"]["database"])
    receiver.behaviour = Behaviour()
    already = len(receiver.requests)
    restored = Processes(fresh, restored_sections)
    try:
        restored.start_worker()

        def sent() -> set[str]:
            return {r.headers["X-Webhook-Id"] for r in receiver.requests[already:]}

        wait_until(lambda: waiting <= sent(), timeout=60, interval=0.2, message="the pending deliveries sent")
        conn = sqlite3.connect(restored_sections["storage"]["database"])
        wait_until(
            lambda: conn.execute("SELECT count(*) FROM deliveries WHERE state != 'delivered'").fetchone()[0] == 0,
            timeout=20,
            message="every delivery in the restored database delivered",
        )
        assert {row[0] for row in conn.execute("SELECT json_extract(body, '$.message_id') FROM events")} == stored
        conn.close()
    finally:
        restored.stop_all()
