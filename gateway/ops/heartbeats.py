"""Worker heartbeats (the `workers` table): how /healthz, /metrics and the monitor know a worker runs.

Each worker writes its row every INTERVAL seconds and removes it when it stops; a worker
silent for SILENCE_LIMIT seconds (killed, or its machine gone) is taken for gone.
"""

from __future__ import annotations

import os
import socket
import time

from gateway.storage import db

INTERVAL = 5.0
SILENCE_LIMIT = 30  # several missed beats: a busy moment is not mistaken for a dead worker


def beat(conn: db.Connection, name: str, started_at: float) -> None:
    """Record that worker `name` (started at `started_at`) is alive now."""
    with db.transaction(conn):
        conn.execute(
            "INSERT INTO workers (name, pid, host, started_at, seen_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
            (name, os.getpid(), socket.gethostname(), started_at, time.time()),
        )


def forget(conn: db.Connection, name: str) -> None:
    """Remove a stopping worker's row, so it is not counted for the next SILENCE_LIMIT seconds."""
    with db.transaction(conn):
        conn.execute("DELETE FROM workers WHERE name = ?", (name,))


def last_seen(conn: db.Connection) -> float | None:
    """When any worker last wrote its heartbeat; None when none ever has (or all stopped)."""
    return conn.execute("SELECT max(seen_at) FROM workers").fetchone()[0]


def recent(conn: db.Connection, now: float) -> tuple[int, float | None]:
    """(workers heard from within SILENCE_LIMIT, when the latest of them was)."""
    row = conn.execute("SELECT count(*), max(seen_at) FROM workers WHERE seen_at >= ?", (now - SILENCE_LIMIT,))
    count, latest = row.fetchone()
    return count, latest
