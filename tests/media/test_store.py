"""The media table: rows from intake, leases, failures on the retry schedule, the monitor's
summary, and pruning of rows and files."""

from __future__ import annotations

import os
import time

import pytest

from gateway.intake.meta_parser import Event
from gateway.media import store
from gateway.storage import db

pytestmark = pytest.mark.engines


@pytest.fixture
def conn(media_app):
    return db.connection(media_app.config["WAHOOK"].database_path)


def webhook(conn) -> int:
    with db.transaction(conn):
        return conn.execute(
            "INSERT INTO webhooks (webhook_id, received_at, body) VALUES (hex(randomblob(8)), ?, x'')", (time.time(),)
        ).lastrowid


def track(conn, *media_ids: str, url: str | None = "https://x/media/t") -> int:
    drawn = [
        Event("message.received", f"k{m}", {"media": {"id": m, "mime_type": "image/png", "url": url}})
        for m in media_ids
    ]
    webhook_id = webhook(conn)
    with db.transaction(conn):
        store.track(conn, drawn, webhook_id, time.time())
    return webhook_id


def test_only_media_with_a_link_is_tracked(conn):
    track(conn, "1", url=None)
    assert conn.execute("SELECT count(*) FROM media").fetchone()[0] == 0
    track(conn, "1")
    track(conn, "1")  # seen again: one row, two webhooks keep it
    assert conn.execute("SELECT count(*) FROM media").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM media_refs").fetchone()[0] == 2


def test_a_download_is_leased_to_one_taker(conn):
    track(conn, "1", "2")
    first = store.claim(conn, "a", 60)
    second = store.claim(conn, "b", 60)
    assert {first["media_id"], second["media_id"]} == {"1", "2"}
    assert store.claim(conn, "c", 60) is None
    assert store.claim(conn, "c", 60, media_id="1") is None  # held by a
    assert not store.any_due(conn)
    later = time.time() + 61  # a's lease ran out (a crashed): someone else takes it
    assert store.claim(conn, "c", 60, now=later)["media_id"] in ("1", "2")


def test_failures_follow_the_retry_schedule_then_stop(conn):
    track(conn, "1", "2")
    row = store.claim(conn, "a", 60, media_id="1")
    assert store.record_failure(conn, row["id"], "Graph answered 500", False, [5]) == "retrying"
    row = store.get(conn, "1")
    assert row["attempts"] == 1 and row["next_attempt_at"] > time.time() + 4 and row["lease_owner"] is None
    assert store.claim(conn, "a", 60) is not None  # "2" is due; "1" waits its 5 s
    assert store.claim(conn, "a", 60) is None
    assert store.record_failure(conn, row["id"], "Graph answered 500", False, [5]) == "failed"
    other = store.get(conn, "2")
    assert store.record_failure(conn, other["id"], "over media.max_bytes", True, [5, 5]) == "failed"
    summary = store.summary(conn)
    assert (summary["failed"], summary["pending"], summary["downloaded"]) == (2, 0, 0)
    assert [f["last_error"] for f in summary["failures"]] == ["over media.max_bytes", "Graph answered 500"]


def test_disk_used_counts_a_shared_file_once(conn):
    track(conn, "1", "2")
    for media_id in ("1", "2"):
        store.record_downloaded(conn, store.get(conn, media_id)["id"], "ab" * 32, 1000, "image/png")
    summary = store.summary(conn)
    assert (summary["downloaded"], summary["bytes"], summary["files"]) == (2, 1000, 1)


def test_prune_removes_unreferenced_rows_their_files_and_old_leftovers(conn, media_app):
    folder = store.media_dir(media_app.config["WAHOOK"])
    (folder / "tmp").mkdir(parents=True)
    gone_hook = track(conn, "1")
    track(conn, "2")
    store.record_downloaded(conn, store.get(conn, "1")["id"], "aa" * 32, 3, "image/png")
    store.record_downloaded(conn, store.get(conn, "2")["id"], "bb" * 32, 3, "image/png")
    for name in ("aa" * 32, "bb" * 32, "cc" * 32):
        (folder / name).write_bytes(b"abc")
    (folder / "tmp" / "old.part").write_bytes(b"a")
    (folder / "tmp" / "new.part").write_bytes(b"a")
    os.utime(folder / "tmp" / "old.part", (time.time() - 7200, time.time() - 7200))
    with db.transaction(conn):
        conn.execute("DELETE FROM webhooks WHERE id = ?", (gone_hook,))
    assert store.prune(conn, folder) == 1
    # Files just written are left an hour: a download may be about to record its row.
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["aa" * 32, "bb" * 32, "cc" * 32]
    assert [p.name for p in (folder / "tmp").iterdir()] == ["new.part"]
    store.prune(conn, folder, now=time.time() + 2 * store.ORPHAN_AGE)
    assert [p.name for p in folder.iterdir() if p.is_file()] == ["bb" * 32]
    assert [r[0] for r in conn.execute("SELECT media_id FROM media")] == ["2"]
