"""A delivery's life after the fan-out: claimed, sent, retried, failed, redelivered, dismissed.

outbox.py writes a delivery when its event is stored; every later change to it is made here,
including those an outage makes (outages.py). Its state machine:

    pending --claim--> (leased) --2xx--> delivered
                                --fail--> retrying --claim--> ... --last retry--> failed
    failed / delivered --redeliver--> pending (a fresh retry cycle; attempts kept)
    failed, endpoint deleted --dismiss--> failed with dismissed_at (out of the counts)

A worker owns a row while `lease_until` is ahead (leases.py, shared with media downloads),
so two workers never send it at once. send.py signs and sends; it decides what an
outcome means and calls `finish` with the new state. Functions that say "call inside a
transaction" leave the transaction to the caller, so one commit can cover more than them.
"""

from __future__ import annotations

import time

from gateway.delivery import leases
from gateway.storage import db
from gateway.storage.db import transaction


def claim_next(
    conn: db.Connection, endpoint_id: int | None, owner: str, lease_seconds: float, limit: int
) -> list[db.Row]:
    """Lease the endpoint's `limit` longest-due deliveries that nobody holds; return them. The
    endpoint None is every deleted one: its deliveries fail as unsendable when sent."""
    # Two spellings rather than `IS NOT DISTINCT FROM ?`, which SQLite reads only from 3.39 on.
    where, params = ("endpoint_id IS NULL", ()) if endpoint_id is None else ("endpoint_id = ?", (endpoint_id,))
    return leases.claim(conn, "deliveries", owner, lease_seconds, where=where, params=params, limit=limit)


def extend_lease(conn: db.Connection, ids: list[int], owner: str, until: float) -> None:
    leases.extend(conn, "deliveries", ids, owner, until)


def due_endpoints(conn: db.Connection) -> list[int | None]:
    """The endpoints (None for deleted ones) with a delivery that is due and that nobody holds.

    One indexed look-up per endpoint, however many deliveries wait, so it is cheap enough
    to ask many times a second.
    """
    now = time.time()
    waiting = (
        "SELECT 1 FROM deliveries d WHERE d.endpoint_id {} AND d."  # noqa: S608
        + leases.OPEN
        + " AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until < ?)"
    )
    found: list[int | None] = [
        row[0]
        for row in conn.execute(
            f"SELECT e.id FROM endpoints e WHERE EXISTS ({waiting.format('= e.id')})",  # noqa: S608 (our SQL)
            (now, now),
        )
    ]
    if conn.execute(f"SELECT EXISTS ({waiting.format('IS NULL')})", (now, now)).fetchone()[0]:  # noqa: S608
        found.append(None)
    return found


def record_attempt(conn: db.Connection, delivery: db.Row, at: float, outcome) -> None:
    """Keep one attempt's outcome in the history. Call inside a transaction."""
    conn.execute(
        "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, status_code, ok, error,"
        " response_body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            delivery["id"],
            delivery["endpoint_id"],
            at,
            outcome.duration_ms,
            outcome.status_code,
            int(outcome.ok),
            outcome.error,
            outcome.response_body,
        ),
    )


def finish_later(conn: db.Connection, delivery_id: int, owner: str, state: str, attempts: int, next_at: float, outcome):
    """Move a leased delivery on after an attempt and release it, sent without waiting. Call inside
    a transaction. Its cursor has a row only when `owner` still held the lease (if it ran out,
    another worker owns the row now). A batch's updates read late go to PostgreSQL in one round
    trip (concurrency.pipelined_transaction)."""
    return conn.execute(
        "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, lease_owner = NULL,"
        " lease_until = NULL, last_status_code = ?, last_error = ?, last_duration_ms = ?, updated_at = ?"
        " WHERE id = ? AND lease_owner = ? RETURNING id",
        (
            state,
            attempts,
            next_at,
            outcome.status_code,
            outcome.error,
            outcome.duration_ms,
            time.time(),
            delivery_id,
            owner,
        ),
    )


def fail_leased(conn: db.Connection, owner: str, reason: str, *, ids: list[int] | None = None, endpoint_id=None) -> int:
    """End deliveries `owner` holds as failed: those `ids`, or all of one endpoint's. Call inside
    a transaction."""
    now = time.time()
    if ids is not None:
        return conn.executemany(
            "UPDATE deliveries SET state = 'failed', last_error = ?, lease_owner = NULL, lease_until = NULL,"
            " updated_at = ? WHERE id = ? AND lease_owner = ?",
            [(reason, now, delivery_id, owner) for delivery_id in ids],
        ).rowcount
    return conn.execute(
        "UPDATE deliveries SET state = 'failed', last_error = ?, lease_owner = NULL, lease_until = NULL,"  # noqa: S608
        f" updated_at = ? WHERE endpoint_id = ? AND lease_owner = ? AND {leases.OPEN}",
        (reason, now, endpoint_id, owner),
    ).rowcount


def fail_waiting(conn: db.Connection, endpoint_id: int, reason: str) -> int:
    """End the endpoint's pending and retrying deliveries as failed. Call inside a transaction.

    A delivery a worker is sending right now is left to it: its outcome is recorded, and if
    that calls for a retry, the next claim finds the endpoint gone and fails it then.
    """
    now = time.time()
    return conn.execute(
        "UPDATE deliveries SET state = 'failed', last_error = ?, lease_owner = NULL, lease_until = NULL,"  # noqa: S608
        f" updated_at = ? WHERE endpoint_id = ? AND {leases.OPEN}"
        " AND (lease_until IS NULL OR lease_until < ?)",
        (reason, now, endpoint_id, now),
    ).rowcount


def redeliver(
    conn: db.Connection,
    *,
    ids: list[int] | None = None,
    failed_only: bool = True,
    since: float | None = None,
    endpoint_id: int | None = None,
) -> int:
    """Start a fresh retry cycle for finished deliveries; returns how many.

    Every failed delivery the monitor counts is covered, a `webhook.test` one included (its
    stored test event is sent again), as long as its endpoint exists and is enabled.
    failed_only=False also replays delivered ones (a receiver that lost data). Deliveries
    still pending or retrying are left alone: they are on their way already. The attempts
    of earlier cycles stay in `attempts`.
    """
    clauses = [
        "state IN ('failed')" if failed_only else "state IN ('failed', 'delivered')",
        "endpoint_id IN (SELECT id FROM endpoints WHERE enabled = 1)",
    ]
    params: list = []
    if ids is not None:
        clauses.append(f"id IN ({','.join('?' for _ in ids)})")
        params += ids
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(since)
    if endpoint_id is not None:
        clauses.append("endpoint_id = ?")
        params.append(endpoint_id)
    where = " AND ".join(clauses)  # every clause is ours; values go in as parameters
    sql = f"UPDATE deliveries SET state = 'pending', attempts = 0, cycle = cycle + 1, auto_redelivered = 0, next_attempt_at = ?, lease_owner = NULL, lease_until = NULL, dismissed_at = NULL, updated_at = ? WHERE {where}"  # noqa: E501, S608
    now = time.time()
    with transaction(conn):
        return conn.execute(sql, (now, now, *params)).rowcount


def dismiss_orphaned(conn: db.Connection, ids: list[int] | None = None) -> int:
    """Dismiss failed deliveries whose endpoint was deleted (those `ids`, or all); returns how many.

    They can never be sent again. A dismissed delivery leaves the monitor's counts; its row
    and attempts stay, so the event log still shows what happened.
    """
    where = "state = 'failed' AND endpoint_id IS NULL AND dismissed_at IS NULL"
    params: list = []
    if ids is not None:
        where += f" AND id IN ({','.join('?' for _ in ids)})"
        params += ids
    now = time.time()
    with transaction(conn):
        return conn.execute(
            f"UPDATE deliveries SET dismissed_at = ?, updated_at = ? WHERE {where}",  # noqa: S608 (our SQL)
            (now, now, *params),
        ).rowcount


# -- outages (outages.py): the deliveries an endpoint's failing streak left failed

# How often automatic recovery may redeliver one delivery within a retry cycle given by hand: an
# event a receiver refuses while it takes others must not go out again after every outage.
MAX_AUTO_REDELIVERIES = 3

_STREAK_SQL = (
    "endpoint_id = ? AND state = 'failed' AND updated_at >= ? AND event_name != 'webhook.test'"
    f" AND auto_redelivered < {MAX_AUTO_REDELIVERIES}"
)


def has_active(conn: db.Connection, endpoint_id: int) -> bool:
    """Whether the endpoint has deliveries pending or retrying (they are probes enough)."""
    sql = f"SELECT EXISTS (SELECT 1 FROM deliveries WHERE endpoint_id = ? AND {leases.OPEN})"  # noqa: S608
    return bool(conn.execute(sql, (endpoint_id,)).fetchone()[0])


def start_probe(conn: db.Connection, endpoint_id: int, since: float, last_attempt: int) -> int | None:
    """Make the endpoint's oldest failed delivery of the streak since `since` due now, as the last
    attempt of its cycle (`last_attempt`: a failure leaves it failed, with no new retries).
    Returns its id, or None when there is none. Call inside a transaction."""
    now = time.time()
    row = conn.execute(
        "UPDATE deliveries SET state = 'retrying', attempts = ?, next_attempt_at = ?, updated_at = ?"  # noqa: S608
        f" WHERE id = (SELECT id FROM deliveries WHERE {_STREAK_SQL} ORDER BY id LIMIT 1) RETURNING id",
        (last_attempt, now, now, endpoint_id, since),
    ).fetchone()
    return None if row is None else row[0]


def count_streak_failed(conn: db.Connection, endpoint_id: int, since: float) -> int:
    sql = f"SELECT count(*) FROM deliveries WHERE {_STREAK_SQL}"  # noqa: S608
    return conn.execute(sql, (endpoint_id, since)).fetchone()[0]


def redeliver_streak(conn: db.Connection, endpoint_id: int, since: float, per_second: int) -> float | None:
    """Start a fresh retry cycle for the deliveries the streak since `since` left failed, oldest
    first, `per_second` of them due each second from now, so a receiver that just came back is
    not flooded. Returns when the last one is due (None when there were none). Call inside a
    transaction."""
    now = time.time()
    streak = f"SELECT id FROM deliveries WHERE {_STREAK_SQL} ORDER BY id"  # noqa: S608 (our SQL)
    ids = [row[0] for row in conn.execute(streak, (endpoint_id, since))]
    conn.executemany(
        "UPDATE deliveries SET state = 'pending', attempts = 0, auto_redelivered = auto_redelivered + 1,"
        " next_attempt_at = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?"
        " WHERE id = ? AND state = 'failed'",
        [(now + index // per_second, now, delivery_id) for index, delivery_id in enumerate(ids)],
    )
    return now + (len(ids) - 1) // per_second if ids else None
