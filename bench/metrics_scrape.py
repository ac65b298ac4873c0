"""The /metrics measure: one scrape against a database holding 1,000,000 deliveries.

The database is filled with SQL alone (a recursive CTE, a few tens of seconds) through the
same triggers intake and delivery use, so the running totals are the ones production keeps.
Scrapes go through the Flask app (test client: no network), alternating with the naive
query a scrape would need without the totals (GROUP BY over every delivery), so both sides
see the same load on the machine.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from stack import ROOT  # noqa: F401 (puts the checkout on sys.path)

from gateway.storage import db

ENDPOINTS = 20


def fill(path: Path, deliveries: int) -> float:
    """Store `deliveries` deliveries (and as many attempts) over ENDPOINTS endpoints; seconds taken."""
    started = time.monotonic()
    conn = db.connect(path)
    db.migrate(conn)
    now = time.time()
    with db.transaction(conn):
        conn.executemany(
            "INSERT INTO endpoints (url, secret, created_at, updated_at) VALUES (?, 'whsec_x', ?, ?)",
            [(f"https://receiver{i}.example/hook", now, now) for i in range(ENDPOINTS)],
        )
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO webhooks (webhook_id, received_at, body) SELECT 'whk_' || i, ? - i, x'7b7d' FROM n",
            (deliveries // 10, now),
        )
        # 1 in 100 waiting, 2 in 100 failed, the rest delivered; created over the last 30 days.
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO deliveries (endpoint_id, endpoint_url, event_name, message_id, state, attempts,"
            " next_attempt_at, created_at, updated_at)"
            " SELECT 1 + i % ?, 'u', 'message.received', 'evt_' || i,"
            " CASE WHEN i % 100 = 0 THEN 'pending' WHEN i % 100 < 3 THEN 'failed' ELSE 'delivered' END,"
            " 1, ? - i * 2.5, ? - i * 2.5, ? FROM n",
            (deliveries, ENDPOINTS, now, now, now),
        )
        conn.execute(
            "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, status_code, ok)"
            " SELECT id, endpoint_id, created_at, 12, 200, state != 'failed' FROM deliveries"
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.monotonic() - started


def measure(workdir: Path, deliveries: int, rounds: int) -> dict:
    """Median and worst scrape time (ms), the naive count's median, and how long the fill took."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "wahook.db"
    filled = fill(path, deliveries)
    from app import create_app

    app = create_app({"config_path": str(workdir / "none.toml"), "storage": {"database": str(path)}})
    client = app.test_client()
    conn = db.connect(path)
    ours, naive = [], []
    body = b""
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get("/metrics")
        ours.append((time.perf_counter() - started) * 1000)
        body = response.data
        started = time.perf_counter()
        conn.execute("SELECT endpoint_id, state, count(*) FROM deliveries GROUP BY 1, 2").fetchall()
        naive.append((time.perf_counter() - started) * 1000)
    conn.close()
    db.close_all()
    return {
        "ours_ms": statistics.median(ours),
        "worst_ms": max(ours),
        "naive_ms": statistics.median(naive),
        "fill_s": filled,
        "series": body.count(b"\nwahook_"),
        "stored": deliveries,
    }
