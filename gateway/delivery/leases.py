"""The lease cycle that deliveries and media downloads share: claim due rows, extend, retry.

A work table (`deliveries`, `media`) has a `state` that is 'pending' or 'retrying' while the
work is open, a `next_attempt_at`, and a lease: a worker owns a row while `lease_until` is
ahead, so two workers never do the same work at once, and a worker that dies holds its rows
up for one lease at most. After a failed attempt the row waits the retry schedule's next
delay (`retry_delay`), or fails for good when the schedule is used up or retrying cannot help.

Claiming is the one place the two engines need different plans, so it is written once here:

- SQLite: the read that picks the rows takes no lock, so a worker with nothing to do never
  queues for the write lock; the claim then re-checks every condition in a conditional
  UPDATE, so two workers reading the same ids cannot both win one.
- PostgreSQL: one statement, whose picking SELECT skips rows another worker is claiming
  right now (FOR UPDATE SKIP LOCKED), so workers on several machines never queue behind
  each other's claims.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.storage import db
from gateway.storage.db import transaction

OPEN = "state IN ('pending', 'retrying')"
_FREE = "(lease_until IS NULL OR lease_until < ?)"


def claim(
    conn: db.Connection,
    table: str,
    owner: str,
    lease_seconds: float,
    *,
    where: str = "",
    params: Sequence = (),
    limit: int = 1,
    due: bool = True,
    touch: bool = False,
    now: float | None = None,
) -> list[db.Row]:
    """Lease up to `limit` open rows of `table` that nobody holds, longest due first; return them.

    `where` (with `params`) narrows the rows further; due=False also takes rows whose next
    attempt is still ahead (a receiver asking for a file now). touch=True sets `updated_at`."""
    now = time.time() if now is None else now
    narrow = f" AND {where}" if where else ""
    waiting = " AND next_attempt_at <= ?" if due else ""
    pick = (
        f"SELECT id FROM {table} WHERE {OPEN}{narrow}{waiting} AND {_FREE}"  # noqa: S608 (our SQL)
        " ORDER BY next_attempt_at, id LIMIT ?"
    )
    pick_params = (*params, *((now,) if due else ()), now, limit)
    if db.engine(conn) == "postgresql":
        # One statement is a transaction of its own: no BEGIN and COMMIT, two round trips fewer.
        rows = conn.execute(
            f"UPDATE {table} SET {_lease_sql(touch)} WHERE id IN ({pick} FOR UPDATE SKIP LOCKED) RETURNING *",  # noqa: S608
            (*_lease_params(owner, now + lease_seconds, now, touch), *pick_params),
        ).fetchall()
        # RETURNING keeps no order: longest due first, oldest first among equals, as on SQLite.
        return sorted(rows, key=lambda row: (row["next_attempt_at"], row["id"]))
    ids = [row[0] for row in conn.execute(pick, pick_params)]
    return claim_ids(conn, table, ids, owner, lease_seconds, due=due, touch=touch, now=now)


def claim_ids(
    conn: db.Connection,
    table: str,
    ids: Sequence[int],
    owner: str,
    lease_seconds: float,
    *,
    due: bool = True,
    touch: bool = False,
    now: float | None = None,
) -> list[db.Row]:
    """Take the leases of those `ids` that are open, due (unless due=False) and not leased by
    anyone; return them."""
    if not ids:
        return []
    now = time.time() if now is None else now
    marks = ",".join("?" for _ in ids)
    waiting = " AND next_attempt_at <= ?" if due else ""
    with transaction(conn):
        return conn.execute(
            f"UPDATE {table} SET {_lease_sql(touch)} WHERE id IN ({marks})"  # noqa: S608 (our SQL)
            f" AND {OPEN}{waiting} AND {_FREE} RETURNING *",
            (*_lease_params(owner, now + lease_seconds, now, touch), *ids, *((now,) if due else ()), now),
        ).fetchall()


def _lease_sql(touch: bool) -> str:
    return "lease_owner = ?, lease_until = ?" + (", updated_at = ?" if touch else "")


def _lease_params(owner: str, until: float, now: float, touch: bool) -> tuple:
    return (owner, until, now) if touch else (owner, until)


def extend(conn: db.Connection, table: str, ids: Sequence[int], owner: str, until: float) -> None:
    """Move the leases `owner` still holds on `ids` to `until` (a slow batch, still at work)."""
    with transaction(conn):
        conn.execute(
            f"UPDATE {table} SET lease_until = ? WHERE id IN ({','.join('?' for _ in ids)})"  # noqa: S608
            " AND lease_owner = ?",
            (until, *ids, owner),
        )


def any_due(conn: db.Connection, table: str, now: float | None = None) -> bool:
    """Whether some row of `table` is due and nobody holds it."""
    now = time.time() if now is None else now
    sql = f"SELECT 1 FROM {table} WHERE {OPEN} AND next_attempt_at <= ? AND {_FREE} LIMIT 1"  # noqa: S608
    return conn.execute(sql, (now, now)).fetchone() is not None


def retry_delay(attempts: int, schedule: Sequence[float], permanent: bool = False) -> float | None:
    """Seconds to wait before the next attempt after `attempts` have failed in this cycle, or
    None when the work has failed for good (retrying cannot help, or the schedule is used up)."""
    if permanent or attempts > len(schedule):
        return None
    return float(schedule[attempts - 1])
