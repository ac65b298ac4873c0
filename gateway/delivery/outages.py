"""Outages: an endpoint's failing streak, its probes, automatic recovery, disabling after too long,
and the operational events these send (`delivery.failed`, `endpoint.recovered`; `endpoint.disabled`
is sent by endpoints.mark_disabled for every way an endpoint is disabled).

The streak lives on the endpoint row, so every worker sees it and a worker killed half way
leaves nothing undone:

- `failing_since`: the first failed attempt since the endpoint last answered 2xx (NULL while
  it is healthy). Set and cleared by `after_batch`, in the transaction that records the attempts.
- `next_probe_at`, `probe_interval`: while failing with nothing pending or retrying, the
  sweeper retries the oldest failed delivery of the streak PROBE_FIRST seconds after the last
  failure, then at doubling intervals up to PROBE_MAX, so a receiver that comes back during
  a quiet hour is noticed without new traffic.
- `recovering_until`: after a 2xx ends a streak, its failed deliveries are redelivered oldest
  first, RECOVERY_PER_SECOND of them due each second; the endpoint shows as recovering until
  the last of them was due and nothing is left pending.

Every write to `deliveries` is delivery_states.py's; this module writes only the endpoint's own columns.
"""

from __future__ import annotations

import os
import time

from gateway.delivery import delivery_states, endpoints, outbox
from gateway.intake.event_catalog import iso
from gateway.net import address_rules
from gateway.storage import db
from gateway.storage.db import transaction

PROBE_FIRST = float(os.environ.get("WAHOOK_PROBE_FIRST") or 10.0)  # seconds after the last failure; tests shorten it
PROBE_MAX = 600.0
RECOVERY_PER_SECOND = 20
# Never sent for a failure to deliver these, so two failing endpoints that each select
# delivery.failed cannot feed each other events for as long as both are down.
NO_FAILED_EVENT = frozenset({"webhook.test", *outbox.OPERATIONAL})


def endpoint_state(row: db.Row) -> str:
    """`failing`, `recovering` or `healthy`: where an enabled endpoint stands in an outage."""
    if row["failing_since"] is not None:
        return "failing"
    if row["recovering_until"] is not None:
        return "recovering"
    return "healthy"


def after_batch(conn: db.Connection, config, endpoint_id: int | None, finished: list, now: float) -> None:
    """Act on a recorded batch of one endpoint: `finished` holds (delivery row, outcome, new state,
    attempts in the cycle). Call inside the transaction that records them.

    A delivery that used up its retries sends `delivery.failed`, once per retry cycle given by
    hand (probes and automatic redeliveries do not start one). A 2xx ends the streak and starts
    the recovery; a batch that failed throughout starts the streak or moves the next probe.
    """
    for delivery, outcome, state, attempts in finished:
        if state == "failed" and delivery["event_name"] not in NO_FAILED_EVENT:
            outbox.publish(
                conn,
                "delivery.failed",
                {
                    "endpoint_id": delivery["endpoint_id"],
                    "url": address_rules.shown_url(delivery["endpoint_url"]),
                    "failed_event_id": delivery["message_id"],
                    "failed_event": delivery["event_name"],
                    "attempts": attempts,
                    "last_error": outcome.error,
                },
                dedupe_key=f"delivery.failed:{delivery['id']}:{delivery['cycle']}",
                exclude_endpoint=delivery["endpoint_id"],
            )
    row = endpoints.get(conn, endpoint_id) if endpoint_id is not None and finished else None
    if row is None or not row["enabled"]:
        return
    if any(outcome.ok for _, outcome, _, _ in finished):
        recover(conn, config, row, now)
    elif row["failing_since"] is None:
        started = min(now - outcome.duration_ms / 1000 for _, outcome, _, _ in finished)
        conn.execute(
            "UPDATE endpoints SET failing_since = ?, probe_interval = ?, next_probe_at = ?, recovering_until = NULL"
            " WHERE id = ?",
            (started, PROBE_FIRST, now + PROBE_FIRST, row["id"]),
        )
    else:
        conn.execute(
            "UPDATE endpoints SET next_probe_at = ? WHERE id = ?",
            (now + (row["probe_interval"] or PROBE_FIRST), row["id"]),
        )


def recover(conn: db.Connection, config, row: db.Row, now: float) -> None:
    """A 2xx from a failing endpoint: end the streak, redeliver what it left failed (with
    `auto_recover`) and send `endpoint.recovered` when it had left any. Call inside a transaction."""
    since = row["failing_since"]
    if since is None:
        return
    left_failed = delivery_states.count_streak_failed(conn, row["id"], since)
    last_due = None
    if left_failed and config["delivery"]["auto_recover"]:
        last_due = delivery_states.redeliver_streak(conn, row["id"], since, RECOVERY_PER_SECOND)
    conn.execute(
        "UPDATE endpoints SET failing_since = NULL, next_probe_at = NULL, probe_interval = NULL,"
        " recovering_until = ? WHERE id = ?",
        (last_due, row["id"]),
    )
    if left_failed:
        # A blip that its retries got over is not an outage a receiver needs to hear about.
        outbox.publish(
            conn,
            "endpoint.recovered",
            {
                "endpoint_id": row["id"],
                "url": address_rules.shown_url(row["url"]),
                "failing_since": iso(since),
                "redelivering": left_failed if last_due is not None else 0,
            },
            dedupe_key=f"endpoint.recovered:{row['id']}:{since!r}",
            exclude_endpoint=row["id"],
        )


def sweep(conn: db.Connection, config) -> None:
    """The sweeper's part, every second: disable endpoints failing for `disable_after_hours`,
    probe failing ones that are due, and end recoveries that are over."""
    now = time.time()
    hours = config["delivery"]["disable_after_hours"]
    auto = config["delivery"]["auto_recover"]
    rows = conn.execute(
        "SELECT id FROM endpoints WHERE enabled = 1 AND (failing_since <= ? OR (? = 1 AND next_probe_at <= ?)"
        " OR recovering_until < ?)",
        (now - hours * 3600 if hours else -1, auto, now, now),
    ).fetchall()
    if not rows:
        return  # the usual case: no write lock taken
    last_attempt = len(config["delivery"]["retry_schedule"])
    with transaction(conn):
        for seen in rows:
            row = endpoints.get(conn, seen["id"])  # again, under the write lock
            if row is None or not row["enabled"]:
                continue
            since = row["failing_since"]
            if since is not None and hours and since <= now - hours * 3600:
                reason = f"every attempt failed for {hours:g} hours (failing since {iso(since)})"
                endpoints.mark_disabled(conn, row["id"], reason)
            elif since is not None and auto and (row["next_probe_at"] or 0) <= now:
                probe(conn, config, row, last_attempt, now)
            elif (row["recovering_until"] or now) < now and not delivery_states.has_active(conn, row["id"]):
                conn.execute("UPDATE endpoints SET recovering_until = NULL WHERE id = ?", (row["id"],))


def probe(conn: db.Connection, config, row: db.Row, last_attempt: int, now: float) -> None:
    """Retry the oldest failed delivery of a failing endpoint's streak, unless deliveries are on
    their way already (their attempts tell as much), and double the wait for the next probe."""
    interval = row["probe_interval"] or PROBE_FIRST
    if (
        delivery_states.has_active(conn, row["id"])
        or delivery_states.start_probe(conn, row["id"], row["failing_since"], last_attempt) is None
    ):
        conn.execute("UPDATE endpoints SET next_probe_at = ? WHERE id = ?", (now + interval, row["id"]))
        return
    interval = min(interval * 2, PROBE_MAX)
    # Its failure sets the next probe from then; this covers a probe whose worker died.
    wait = interval + float(config["delivery"]["timeout"])
    conn.execute(
        "UPDATE endpoints SET probe_interval = ?, next_probe_at = ? WHERE id = ?", (interval, now + wait, row["id"])
    )
