"""The outbox: every write to `events` fan-out and to `deliveries` goes through here.

A delivery is one row per (event, endpoint), or per (Meta webhook, endpoint) for the
`meta` format. Its state machine:

    pending --claim--> (leased) --2xx--> delivered
                                --fail--> retrying --claim--> ... --last retry--> failed
    failed / delivered --redeliver--> pending (a fresh retry cycle; attempts kept)
    failed, endpoint deleted --dismiss--> failed with dismissed_at (out of the counts)

A worker owns a row while `lease_until` is ahead (taken with a conditional UPDATE), so
two workers never send it at once. delivery.py signs and sends; it decides what an
outcome means and calls `finish` with the new state. Functions that say "call inside a
transaction" leave the transaction to the caller, so one commit can cover more than them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import accounts
import db
from db import transaction
from events import OPERATIONAL_EVENTS, event_id_for, iso, storable

ACTIVE = ("pending", "retrying")
# How often automatic recovery may redeliver one delivery within a retry cycle given by hand: an
# event a receiver refuses while it takes others must not go out again after every outage.
MAX_AUTO_REDELIVERIES = 3
_ACTIVE_SQL = "state IN ('pending', 'retrying')"

# Sent only to endpoints that name them: an empty filter selects every other event.
OPERATIONAL = frozenset(OPERATIONAL_EVENTS)


@dataclass(frozen=True)
class Target:
    """An enabled endpoint as the fan-out sees it."""

    id: int
    url: str
    format: str
    wanted: frozenset[str]
    account_ids: frozenset[str] = frozenset()  # empty: every account (accounts.py)

    def selects(self, name: str) -> bool:
        return selects(self.wanted, name)


def selects(wanted: Iterable[str], name: str) -> bool:
    """Whether an endpoint's `events` filter picks the event `name`.

    An entry is a name or a `prefix.*`; an empty filter picks everything but the
    operational events, which go only where they are named.
    """
    wanted = frozenset(wanted)
    if not wanted:
        return name not in OPERATIONAL
    if name in wanted:
        return True
    return any(entry.endswith(".*") and name.startswith(entry[:-1]) for entry in wanted)


def targets(conn: db.Connection) -> list[Target]:
    """Every enabled endpoint with its filter, read once per transaction that fans out."""
    return [
        Target(
            row["id"],
            row["url"],
            row["format"],
            frozenset(json.loads(row["events"] or "[]")),
            frozenset(json.loads(row["accounts"] or "[]")),
        )
        for row in conn.execute("SELECT id, url, events, format, accounts FROM endpoints WHERE enabled = 1")
    ]


@dataclass(frozen=True)
class NewEvent:
    """An event about to be stored: its public id, name, duplicate key and JSON text."""

    event_id: str
    name: str
    dedupe_key: str | None
    body: str


def add_events(
    conn: db.Connection,
    new: list[NewEvent],
    created_at: float,
    *,
    webhook: tuple[int, str] | None = None,
    to: list[Target] | None = None,
    exclude_endpoint: int | None = None,
) -> tuple[list[str], int]:
    """Store events and a delivery for each endpoint that selects them. Call inside a transaction.

    A duplicate (its dedupe key already stored) is skipped by the UNIQUE constraint, which
    holds even when two web processes commit the same update at once. `webhook` is the
    source Meta webhook (row id, public id): `meta`-format endpoints get one delivery of
    it when any new event selects them. `exclude_endpoint` keeps an operational event
    away from the endpoint it is about. Returns (names of new events, deliveries made).
    """
    if to is None:
        to = targets(conn)
    to = [t for t in to if t.id != exclude_endpoint]
    webhook_row = webhook[0] if webhook else None
    now = time.time()
    rows = []
    new_events = []
    # An event's accounts are read from its JSON only when some endpoint routes by account.
    by_account = any(t.account_ids for t in to)
    for event in new:
        inserted = add_event_row(conn, event, created_at, webhook_row)
        if inserted is None:
            continue
        ids = accounts.of_body(event.body) if by_account else (None, None)
        new_events.append((event.name, ids))
        for target in to:
            if target.format == "events" and target.selects(event.name) and accounts.takes(target.account_ids, *ids):
                rows.append((target.id, target.url, inserted, webhook_row, event.name, event.event_id, now, now, now))
    new_names = [name for name, _ in new_events]
    if webhook is not None:
        for target in to:
            if target.format == "meta" and any(
                target.selects(name) and accounts.takes(target.account_ids, *ids) for name, ids in new_events
            ):
                rows.append((target.id, target.url, None, webhook_row, "whatsapp.meta", webhook[1], now, now, now))
    if rows:
        conn.executemany(
            "INSERT INTO deliveries (endpoint_id, endpoint_url, event_id, webhook_id, event_name, message_id,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return new_names, len(rows)


def add_event_row(conn: db.Connection, event: NewEvent, created_at: float, webhook_row: int | None = None):
    """Store one event without fanning it out; its row id, or None for a duplicate."""
    db.ids_in_commit_order(conn, "events")
    inserted = conn.execute(
        "INSERT INTO events (event_id, webhook_id, name, dedupe_key, created_at, body)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        (event.event_id, webhook_row, event.name, event.dedupe_key, created_at, event.body),
    ).fetchone()
    return None if inserted is None else inserted[0]


def add_leased(
    conn: db.Connection, endpoint_id: int, url: str, event_row: int, event: NewEvent, owner: str, until: float
) -> db.Row:
    """A delivery that `owner` holds from the start (a test send): no worker may take it. Call
    inside a transaction."""
    now = time.time()
    return conn.execute(
        "INSERT INTO deliveries (endpoint_id, endpoint_url, event_id, event_name, message_id, next_attempt_at,"
        " lease_owner, lease_until, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (endpoint_id, url, event_row, event.name, event.event_id, now, owner, until, now, now),
    ).fetchone()


def claim(conn: db.Connection, ids: list[int], owner: str, lease_seconds: float) -> list[db.Row]:
    """Take the leases of those `ids` that are due and not leased by anyone; return them."""
    if not ids:
        return []
    now = time.time()
    marks = ",".join("?" for _ in ids)
    with transaction(conn):
        return conn.execute(
            f"UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE id IN ({marks})"  # noqa: S608
            f" AND {_ACTIVE_SQL} AND next_attempt_at <= ?"
            " AND (lease_until IS NULL OR lease_until < ?) RETURNING *",
            (owner, now + lease_seconds, *ids, now, now),
        ).fetchall()


def claim_next(
    conn: db.Connection, endpoint_id: int | None, owner: str, lease_seconds: float, limit: int
) -> list[db.Row]:
    """Lease the endpoint's `limit` longest-due deliveries that nobody holds; return them.

    The read that picks them takes no lock, so a lane with nothing to do never queues for
    the write lock; the claim itself re-checks every condition, so two workers reading the
    same ids cannot both win one.

    On PostgreSQL it is one statement instead: rows another worker is claiming right now
    are skipped (FOR UPDATE SKIP LOCKED), so workers on several machines never queue
    behind each other's claims.
    """
    now = time.time()
    due = (
        f"SELECT id FROM deliveries WHERE endpoint_id IS ? AND {_ACTIVE_SQL}"  # noqa: S608
        " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
        " ORDER BY next_attempt_at LIMIT ?"
    )
    if db.engine(conn) == "postgresql":
        with transaction(conn):
            return conn.execute(
                f"UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE id IN ({due} FOR UPDATE SKIP LOCKED)"  # noqa: S608
                " RETURNING *",
                (owner, now + lease_seconds, endpoint_id, now, now, limit),
            ).fetchall()
    ids = [row[0] for row in conn.execute(due, (endpoint_id, now, now, limit))]
    return claim(conn, ids, owner, lease_seconds)


def extend_lease(conn: db.Connection, ids: list[int], owner: str, until: float) -> None:
    with transaction(conn):
        conn.execute(
            f"UPDATE deliveries SET lease_until = ? WHERE id IN ({','.join('?' for _ in ids)})"  # noqa: S608
            " AND lease_owner = ?",
            (until, *ids, owner),
        )


def due_endpoints(conn: db.Connection) -> list[int | None]:
    """The endpoints (None for deleted ones) with a delivery that is due and that nobody holds.

    One indexed look-up per endpoint, however many deliveries wait, so it is cheap enough
    to ask many times a second.
    """
    now = time.time()
    waiting = (
        "SELECT 1 FROM deliveries d WHERE d.endpoint_id {} AND d."  # noqa: S608
        + _ACTIVE_SQL
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


def finish(
    conn: db.Connection,
    delivery_id: int,
    owner: str,
    state: str,
    attempts: int,
    next_at: float,
    outcome,
) -> bool:
    """Move a leased delivery on after an attempt and release it. Call inside a transaction.

    Only while `owner` still holds the lease: if it ran out, another worker owns the row
    now and this returns False.
    """
    return (
        conn.execute(
            "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, lease_owner = NULL,"
            " lease_until = NULL, last_status_code = ?, last_error = ?, last_duration_ms = ?, updated_at = ?"
            " WHERE id = ? AND lease_owner = ?",
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
        ).rowcount
        > 0
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
        f" updated_at = ? WHERE endpoint_id = ? AND lease_owner = ? AND {_ACTIVE_SQL}",
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
        f" updated_at = ? WHERE endpoint_id = ? AND {_ACTIVE_SQL}"
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


def publish(
    conn: db.Connection,
    name: str,
    data: dict,
    *,
    dedupe_key: str,
    exclude_endpoint: int | None = None,
) -> str | None:
    """Store an event the gateway or an API client makes (not drawn from a Meta webhook) and
    fan it out. Call inside a transaction.

    The body is flat like every event: `event`, `event_id`, `timestamp`, `received_at`, then
    `data`'s keys. `dedupe_key` makes a repeat a no-op (give one that names the occurrence,
    e.g. the failed delivery's id); its event_id comes from it. Returns the event_id, or None
    when it was a duplicate.
    """
    now = time.time()
    event_id = event_id_for(dedupe_key)
    body = {"event": name, "event_id": event_id, "timestamp": int(now), "received_at": iso(now), **data}
    # storable: a lone surrogate an API client sent ("\ud800") stays escaped, so it can be stored.
    text = storable(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
    new, _ = add_events(conn, [NewEvent(event_id, name, dedupe_key, text)], now, exclude_endpoint=exclude_endpoint)
    return event_id if new else None


# -- outages (see outages.py): the deliveries an endpoint's failing streak left failed

_STREAK_SQL = (
    "endpoint_id = ? AND state = 'failed' AND updated_at >= ? AND event_name != 'webhook.test'"
    f" AND auto_redelivered < {MAX_AUTO_REDELIVERIES}"
)


def has_active(conn: db.Connection, endpoint_id: int) -> bool:
    """Whether the endpoint has deliveries pending or retrying (they are probes enough)."""
    sql = f"SELECT EXISTS (SELECT 1 FROM deliveries WHERE endpoint_id = ? AND {_ACTIVE_SQL})"  # noqa: S608
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
