"""Statuses out of order: mark a `message.status_updated` that is behind what is known.

Meta does not keep order: `delivered` can arrive after `read`. Statuses rank `sent` <
`delivered` < `read` (`played` ranks with `read`; `failed` is final). A status that ranks at
or below one already received for the same message is still delivered, with `stale: true`
and `current_status` the highest seen.

What was received is already stored: each status event's duplicate key is
`status:<message id>:<status>`, kept under a unique index. So `settle` asks that index for
the statuses that would make this one stale (one read, nothing written), and the answer
lasts exactly as long as the events do: they are pruned with their webhooks after the
retention period, after which a late status is no longer marked stale. It runs inside the
intake transaction, which holds SQLite's write lock (BEGIN IMMEDIATE), so two web processes
receiving `read` and `delivered` for one message at the same moment are answered in commit
order. Statuses earlier in the same body are not stored yet; the caller passes them in.
"""

from __future__ import annotations

import db
from event_catalog import storable

RANKS = {"sent": 1, "delivered": 2, "read": 3, "played": 3, "failed": 4}


def status_key(message_id: str, status: str) -> str:
    """The duplicate key events.py gives this status's event."""
    return storable(f"status:{message_id}:{status}")


def highest(statuses: list[str]) -> str | None:
    """The highest ranked of `statuses` (the first of equals), or None."""
    ranked = [s for s in statuses if s in RANKS]
    return max(ranked, key=RANKS.__getitem__) if ranked else None


def settle(conn: db.Connection, message_id: str, status: str, earlier: str | None = None) -> tuple[bool, str]:
    """(stale, current_status) for this status of `message_id`. Call inside the intake transaction.

    `earlier` is the highest status for the same message earlier in the same body. A status
    with no rank (`deleted`, a future one) is never stale; its current_status is the highest
    ranked one seen, if any.
    """
    if not message_id:
        return False, status
    rank = RANKS.get(status, 0)
    # Only the statuses at or above this one's rank can make it stale (all of them for an unranked one).
    wanted = [s for s, r in RANKS.items() if r >= rank]
    marks = ",".join("?" for _ in wanted)
    found = conn.execute(
        f"SELECT dedupe_key FROM events WHERE dedupe_key IN ({marks})",  # noqa: S608 (placeholders only)
        [status_key(message_id, s) for s in wanted],
    ).fetchall()
    seen = [row[0].rpartition(":")[2] for row in found] + ([earlier] if earlier else [])
    top = highest([s for s in wanted if s in seen])
    if top is None:
        return False, status
    return (status in RANKS, top)
