"""Noticing when Meta goes quiet: with `meta.silence_hours` > 0 and an enabled endpoint, no
Meta webhook for that long is an alarm, shown on the monitor, in /healthz and /metrics, and
sent once as a `gateway.silent` event, however long the silence outlasts retention_days.

A webhook stored by any web process ends the silent period at once, since everything here
is read from the database when asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.delivery import outbox
from gateway.intake.event_catalog import iso
from gateway.storage import db
from gateway.storage.db import transaction


@dataclass(frozen=True)
class Quiet:
    """Where the silence watch stands. `since` is the last Meta webhook, or when endpoints
    began to exist when that was later (a new install is not silent before it is set up)."""

    hours: float  # meta.silence_hours; 0 = not watching
    since: float | None
    silent: bool

    @property
    def period_key(self) -> str:
        """Names one silent period, so its event goes out once however often it is checked."""
        return f"gateway.silent:{self.since!r}"


def last_meta_webhook(conn: db.Connection) -> float | None:
    """When the newest webhook from Meta itself was stored; `simulate`'s do not count. Walks the
    received_at index from the newest down past the few simulated ones, adding nothing to intake."""
    row = conn.execute(
        "SELECT received_at FROM webhooks WHERE simulated = 0 ORDER BY received_at DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def state(conn: db.Connection, config, now: float | None = None) -> Quiet:
    """Whether Meta has been quiet for `meta.silence_hours` while an endpoint is enabled."""
    hours = float(config["meta"]["silence_hours"])
    if hours <= 0:
        return Quiet(hours, None, False)
    first_endpoint = conn.execute("SELECT min(created_at) FROM endpoints WHERE enabled = 1").fetchone()[0]
    if first_endpoint is None:
        return Quiet(hours, None, False)
    last = last_meta_webhook(conn)
    since = max(last or 0.0, first_endpoint)
    now = time.time() if now is None else now
    return Quiet(hours, since, now - since >= hours * 3600)


def check(conn: db.Connection, config, now: float | None = None) -> str | None:
    """Send `gateway.silent` once per silent period; the new event's id, or None.

    A period is named by the number of webhooks ever received (a counter pruning never lowers),
    recorded in `silence_announced`: pruning the webhook that began the silence, or the event
    that announced it, does not make the same silence new again. Reads first, so a gateway
    that stays silent for days does not take the write lock every time it looks.
    """
    quiet = state(conn, config, now)
    if not quiet.silent:
        return None
    if conn.execute("SELECT 1 FROM events WHERE dedupe_key = ?", (quiet.period_key,)).fetchone():
        return None  # announced before silence_announced existed
    announced = conn.execute("SELECT webhooks_seen FROM silence_announced").fetchone()
    if announced is not None and announced[0] == _webhooks_seen(conn):
        return None
    with transaction(conn):
        quiet = state(conn, config, now)  # again inside the lock: a webhook may just have come
        if not quiet.silent:
            return None
        # Claimed by the one process whose upsert changes the row: two workers looking at
        # once cannot both announce.
        claimed = conn.execute(
            "INSERT INTO silence_announced (one, webhooks_seen, since, announced_at) VALUES (1, ?, ?, ?)"
            " ON CONFLICT (one) DO UPDATE SET webhooks_seen = excluded.webhooks_seen, since = excluded.since,"
            " announced_at = excluded.announced_at WHERE silence_announced.webhooks_seen <> excluded.webhooks_seen",
            (_webhooks_seen(conn), quiet.since, time.time()),
        ).rowcount
        if not claimed:
            return None
        return outbox.publish(
            conn,
            "gateway.silent",
            {"since": iso(quiet.since), "hours": quiet.hours},
            dedupe_key=quiet.period_key,
        )


def _webhooks_seen(conn: db.Connection) -> int:
    """Webhooks ever received, kept by a trigger (migration 9; a row per session on PostgreSQL,
    migration 10) and never lowered by pruning."""
    row = conn.execute(
        "SELECT coalesce(sum(value), 0) FROM metric_totals WHERE kind = 'webhooks' AND label = 'received'"
    ).fetchone()
    return int(row[0])


def health_value(conn: db.Connection, config) -> str:
    """/healthz's "meta": "silent" or "ok" (a quiet Meta is an alarm, not an outage)."""
    return "silent" if state(conn, config).silent else "ok"
