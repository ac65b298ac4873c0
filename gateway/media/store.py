"""The `media` table: which media ids wahook holds, their download state, and their files.

A row is written in the intake transaction for each media message whose event got a link
(`track`), so a download is never forgotten, whatever happens to Redis or a worker. Workers and
the link route `claim` due rows with a lease (leases.py, as for deliveries), and record the
outcome: downloaded, or a failure as data (the reason, and whether retrying can help), retried on
`delivery.retry_schedule` like a delivery. `prune` removes the rows and files no stored webhook
refers to any more; a file shared by two media ids stays while either row stays.
"""

from __future__ import annotations

import time
from pathlib import Path

from gateway.delivery import leases
from gateway.storage import db
from gateway.storage.db import transaction

ERROR_KEEP = 500  # characters of a failure reason kept
ORPHAN_AGE = 3600  # seconds before a file no row names (an interrupted download's) is removed


def media_dir(config) -> Path:
    """Where files are kept: `media/` in the data folder, temporary files in `media/tmp/`."""
    return config.data_dir / "media"


def track(conn: db.Connection, drawn: list, webhook_id: int, now: float) -> None:
    """Record the media of `drawn` events that got a link, and that `webhook_id` refers to them.

    Runs inside the intake transaction. A media id seen before keeps its row (and its file);
    the new webhook is added to the ones that keep it."""
    for event in drawn:
        media = event.body.get("media")
        if not isinstance(media, dict) or not media.get("url"):
            continue
        conn.execute(
            "INSERT INTO media (media_id, mime_type, sha256, filename, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (media_id) DO NOTHING",
            (
                media["id"],
                str(media.get("mime_type") or "")[:200],
                str(media.get("sha256") or "")[:200],
                str(media.get("filename") or "")[:500],
                now,
                now,
                now,
            ),
        )
        conn.execute(
            "INSERT INTO media_refs (media, webhook_id) SELECT id, ? FROM media WHERE media_id = ?"
            " ON CONFLICT DO NOTHING",
            (webhook_id, media["id"]),
        )


def get(conn: db.Connection, media_id: str) -> db.Row | None:
    return conn.execute("SELECT * FROM media WHERE media_id = ?", (media_id,)).fetchone()


def any_due(conn: db.Connection, now: float | None = None) -> bool:
    """Whether some download is due and nobody holds it (one index look-up)."""
    return leases.any_due(conn, "media", now)


def claim(
    conn: db.Connection, owner: str, lease: float, media_id: str | None = None, now: float | None = None
) -> db.Row | None:
    """Take the oldest due download (or `media_id`'s, due or not, while it is not finished)
    for `lease` seconds; None when there is none or someone else holds it."""
    narrow = {"where": "media_id = ?", "params": (media_id,), "due": False} if media_id is not None else {}
    rows = leases.claim(conn, "media", owner, lease, touch=True, now=now, **narrow)
    return rows[0] if rows else None


def record_downloaded(conn: db.Connection, row_id: int, file: str, size: int, mime_type: str) -> None:
    now = time.time()
    with transaction(conn):
        conn.execute(
            "UPDATE media SET state = 'downloaded', file = ?, size = ?, attempts = attempts + 1,"
            " mime_type = CASE WHEN mime_type = '' THEN ? ELSE mime_type END, last_error = '',"
            " lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
            (file, size, mime_type[:200], now, row_id),
        )


def record_failure(conn: db.Connection, row_id: int, reason: str, permanent: bool, retry_schedule: list) -> str:
    """Count a failed attempt: retried after the schedule's next delay, or failed for good when
    retrying cannot help or the schedule is used up. Returns the new state."""
    now = time.time()
    with transaction(conn):
        row = conn.execute("SELECT attempts FROM media WHERE id = ?", (row_id,)).fetchone()
        if row is None:  # pruned meanwhile
            return "failed"
        attempts = row["attempts"] + 1
        delay = leases.retry_delay(attempts, retry_schedule, permanent)
        state = "failed" if delay is None else "retrying"
        conn.execute(
            "UPDATE media SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
            " lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
            (state, attempts, now + (delay or 0), reason[:ERROR_KEEP], now, row_id),
        )
    return state


def summary(conn: db.Connection) -> dict:
    """The monitor's media row: counts by state, disk used, and the newest failures."""
    counts = dict.fromkeys(("pending", "retrying", "downloaded", "failed"), 0)
    for row in conn.execute("SELECT state, count(*) AS n FROM media GROUP BY state"):
        counts[row["state"]] = row["n"]
    used = conn.execute(
        "SELECT coalesce(sum(size), 0) AS bytes, count(*) AS files FROM"
        " (SELECT file, max(size) AS size FROM media WHERE file IS NOT NULL GROUP BY file)"
    ).fetchone()
    failures = conn.execute(
        "SELECT media_id, mime_type, attempts, last_error, updated_at, state FROM media"
        " WHERE last_error != '' AND state != 'downloaded' ORDER BY updated_at DESC LIMIT 10"
    ).fetchall()
    return {**counts, "bytes": used["bytes"], "files": used["files"], "failures": failures}


def prune(conn: db.Connection, folder: Path | None, now: float | None = None) -> int:
    """Delete the rows no stored webhook refers to, then the files no row names. Returns rows deleted.

    Run after the webhooks are pruned (their refs go with them). A file is also removed when no
    row names it and it is older than ORPHAN_AGE: what an interrupted download, or a row pruned
    while its download ran, leaves behind."""
    now = time.time() if now is None else now
    with transaction(conn):
        deleted = conn.execute(
            "DELETE FROM media WHERE NOT EXISTS (SELECT 1 FROM media_refs WHERE media_refs.media = media.id)"
        ).rowcount
    if folder is None or not folder.is_dir():
        return deleted
    kept = {row[0] for row in conn.execute("SELECT DISTINCT file FROM media WHERE file IS NOT NULL")}
    for path in [*folder.iterdir(), *((folder / "tmp").iterdir() if (folder / "tmp").is_dir() else [])]:
        if not path.is_file() or path.name in kept:
            continue
        try:
            if path.parent.name == "tmp" and now - path.stat().st_mtime < ORPHAN_AGE:
                continue  # a download in progress
            if path.parent == folder and len(path.name) == 64 and now - path.stat().st_mtime < ORPHAN_AGE:
                continue  # renamed into place just now; its row may not say so yet
            path.unlink()
        except FileNotFoundError:
            pass
    return deleted
