"""worker.py: history pruning."""

from __future__ import annotations

import json
import time

import pytest

import worker
from conftest import text_message

pytestmark = pytest.mark.engines


def test_prune_removes_only_what_is_older_than_retention(post_webhook, conn):
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
