"""Statuses out of order: mark a `message.status_updated` that is behind what is known.

Meta does not keep order: `delivered` can arrive after `read`. Statuses rank `sent` <
`delivered` < `read` (`played` ranks with `read`; `failed` is final). For each message id the
highest status received so far is kept in `status_marks`; a status that ranks at or below it
is still delivered, with `stale: true` and `current_status` the highest seen.

`settle` runs inside the intake transaction. SQLite lets one writer in at a time (BEGIN
IMMEDIATE), so reading and raising the mark there is race-free even when two web
processes receive `read` and `delivered` for one message at the same moment. Marks are
pruned with the rest of the history (worker.prune), so a status for a message older than
the retention period is never stale.
"""

from __future__ import annotations

import sqlite3

from db import transaction

PRUNE_BATCH = 500
RANKS = {"sent": 1, "delivered": 2, "read": 3, "played": 3, "failed": 4}


def settle(conn: sqlite3.Connection, message_id: str, status: str, now: float) -> tuple[bool, str]:
    """(stale, current_status) for this status, raising the message's mark when it is ahead.

    Call inside the intake transaction. A status with no rank (`deleted`, a future one) is
    never stale and leaves the mark alone; current_status is then the highest seen, if any.
    """
    rank = RANKS.get(status)
    if not message_id:
        return False, status
    if rank is None:
        row = conn.execute("SELECT status FROM status_marks WHERE message_id = ?", (message_id,)).fetchone()
        return False, row[0] if row else status
    # One statement on the usual path (a first status, or one further along): the upsert
    # returns a row only when it inserted or raised the mark.
    raised = conn.execute(
        "INSERT INTO status_marks (message_id, rank, status, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (message_id) DO UPDATE SET rank = excluded.rank, status = excluded.status"
        " WHERE excluded.rank > status_marks.rank RETURNING 1",
        (message_id, rank, status, now),
    ).fetchone()
    if raised:
        return False, status
    row = conn.execute("SELECT status FROM status_marks WHERE message_id = ?", (message_id,)).fetchone()
    return True, row[0]


def prune(conn: sqlite3.Connection, cutoff: float) -> int:
    """Forget the marks of messages first seen before `cutoff`, in small transactions; rows deleted.

    Marks are written in time order, so the oldest are the lowest ids: each batch looks at
    the next few hundred by id only (no index on the time needed) and stops at the first
    batch with nothing old in it.
    """
    deleted = 0
    while True:
        with transaction(conn):
            count = conn.execute(
                "DELETE FROM status_marks WHERE id IN (SELECT id FROM status_marks ORDER BY id LIMIT ?)"
                " AND created_at < ?",
                (PRUNE_BATCH, cutoff),
            ).rowcount
        deleted += count
        if count == 0:
            return deleted
