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
intake transaction, which holds SQLite's write lock (BEGIN IMMEDIATE), or on PostgreSQL a lock
on the message's id (concurrency.lock_keys), so two web processes receiving `read` and `delivered` for
one message at the same moment are answered in commit order. Statuses earlier in the same
body are not stored yet; the caller passes them in.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.intake.event_catalog import storable
from gateway.storage import db

RANKS = {"sent": 1, "delivered": 2, "read": 3, "played": 3, "failed": 4}


def status_key(message_id: str, status: str) -> str:
    """The duplicate key meta_parser.py gives this status's event."""
    return storable(f"status:{message_id}:{status}")


def highest(statuses: list[str]) -> str | None:
    """The highest ranked of `statuses` (the first of equals), or None."""
    ranked = [s for s in statuses if s in RANKS]
    return max(ranked, key=RANKS.__getitem__) if ranked else None


def stale_keys(message_id: str, status: str) -> dict[str, str]:
    """{status: its duplicate key} of the statuses that would make this one stale, if stored:
    those at or above its rank (all of them for an unranked one)."""
    if not message_id:
        return {}
    rank = RANKS.get(status, 0)
    return {s: status_key(message_id, s) for s, r in RANKS.items() if r >= rank}


def look_up(conn: db.Connection, statuses: list[tuple[str, str]]) -> Iterable[db.Row] | None:
    """Send the one read that settles every (message id, status) of a body; read its rows
    (the stored keys among them) only when needed, so on PostgreSQL it shares a round trip."""
    keys = sorted({key for message_id, status in statuses for key in stale_keys(message_id, status).values()})
    return stored_among(conn, keys) if keys else None


def stored_among(conn: db.Connection, keys: list[str]):
    """Send the read of which of the dedupe `keys` (at most 999, SQLite's oldest bound) a stored
    event has; its cursor yields them."""
    marks = ",".join("?" for _ in keys)
    return conn.execute(f"SELECT dedupe_key FROM events WHERE dedupe_key IN ({marks})", keys)  # noqa: S608


def settle(
    conn: db.Connection, message_id: str, status: str, earlier: str | None = None, known: set[str] | None = None
) -> tuple[bool, str]:
    """(stale, current_status) for this status of `message_id`. Call inside the intake transaction.

    `earlier` is the highest status for the same message earlier in the same body; `known`,
    the stored keys `look_up` found (else they are read here). A status with no rank
    (`deleted`, a future one) is never stale; its current_status is the highest ranked one seen.
    """
    keys = stale_keys(message_id, status)
    if not keys:
        return False, status
    if known is None:
        cursor = look_up(conn, [(message_id, status)])
        known = {row[0] for row in cursor} if cursor is not None else set()
    seen = {s for s, key in keys.items() if key in known} | ({earlier} if earlier else set())
    top = highest([s for s in keys if s in seen])
    if top is None:
        return False, status
    return (status in RANKS, top)
