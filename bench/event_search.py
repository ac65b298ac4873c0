"""The event log's search on a big database: 1,000,000 stored webhooks, each with one event
and one delivery, filled straight through SQL in well under a minute.

The same database is searched twice in one run: first at schema version 3 with the naive
query (json_extract over every event, as a search without migration 4 would have to),
then after migration 4 with the queries the /events page makes (search.webhook_page, then
the page's events, deliveries and count; the count of every stored webhook is most of a
page's time at this size). Both are medians of repeated runs; the migration itself (its
indexes, built once on upgrade) is timed too.

    .venv/bin/python bench/event_search.py [WEBHOOKS]     (or BENCH_ONLY=search make bench)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.pages import event_log, event_search
from gateway.storage import db

CUSTOMERS = 50_000  # so a customer has about 20 events in a million
PAGE = event_log.PAGE_SIZE

# Webhook i: a text from customer i % CUSTOMERS (6 in 10), a status to them (3.5 in 10), a
# template update (1 in 20). One delivery in 1,000 failed (a status; customer 16500004007's
# all did); every 997th event is a text from a customer known only by a business-scoped
# user id (from_user_id, no phone).
FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO {table}
SELECT {columns} FROM (
    SELECT i,
        CASE WHEN i % 20 = 0 THEN 'template.status_changed'
             WHEN i % 20 < 8 THEN 'message.status_updated' ELSE 'message.received' END AS name,
        printf('1650%07d', i % :customers) AS phone
    FROM n)
"""
WEBHOOK_COLUMNS = (
    "i, 'whk_' || i, :t0 + i * 0.01, 'whatsapp_business_account', 'messages', 1,"
    ' CAST(\'{"object":"whatsapp_business_account","entry":[{"id":"\' || i || \'"}]}\' AS BLOB)'
)
EVENT_COLUMNS = (
    "i, 'evt_' || i, i, name, 'key' || i, :t0 + i * 0.01, json_object('event', name, 'event_id', 'evt_' || i,"
    " 'message_id', CASE WHEN name != 'template.status_changed' THEN 'wamid.' || i END,"
    " 'from', CASE WHEN name = 'message.received' AND i % 997 != 0 THEN phone END,"
    " 'from_user_id', CASE WHEN name = 'message.received' AND i % 997 = 0 THEN 'US.' || i END,"
    " 'recipient', CASE WHEN name = 'message.status_updated' THEN phone END,"
    " 'type', 'text', 'content', 'Hello number ' || i)"
)
DELIVERY_COLUMNS = (
    "i, 1, 'https://receiver.example/hook', i, i, name, 'evt_' || i,"
    " CASE WHEN i % 1000 = 7 THEN 'failed' ELSE 'delivered' END, 1, :t0, NULL, NULL, 200, '', 5, :t0, :t0"
)


def fill(path: Path, count: int) -> tuple[float, float]:
    """Make a database at schema version 3 holding `count` webhooks; returns (seconds, size in MB)."""
    conn = db.connect(path)
    db.migrate(conn, [m for m in db.migrations() if m[0] < 4])
    started = time.perf_counter()
    values = {"count": count, "customers": CUSTOMERS, "t0": time.time() - count * 0.01}
    with db.transaction(conn):
        conn.execute(
            "INSERT INTO endpoints (id, url, secret, created_at, updated_at)"
            " VALUES (1, 'https://receiver.example/hook', 'whsec_x', 0, 0)"
        )
        for table, columns in (
            ("webhooks", WEBHOOK_COLUMNS),
            ("events (id, event_id, webhook_id, name, dedupe_key, created_at, body)", EVENT_COLUMNS),
            ("deliveries", DELIVERY_COLUMNS),
        ):
            conn.execute(FILL.format(table=table, columns=columns), values)
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, path.stat().st_size / 1024 / 1024


def timed(action: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of `repeat` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def page(conn, chosen: dict[str, str]) -> list[int]:
    """The database work of one /events page: the search, then the page's events, deliveries and count."""
    ids, _ = event_search.webhook_page(conn, chosen, None, PAGE)
    event_log.events_of(conn, ids)
    event_log.deliveries_of(conn, ids) if ids else None
    conn.execute("SELECT count(*) FROM webhooks").fetchone()
    return ids


NAIVE = {  # what each search costs without migration 4: a walk through every event's JSON
    "customer": "json_extract(body, '$.from') = ? OR json_extract(body, '$.recipient') = ?",
    "message_id": "json_extract(body, '$.message_id') = ?",
    "event": "name = ?",
}


def naive(conn, field: str, value: str) -> list[int]:
    where = NAIVE[field]
    params = [value] * where.count("?")
    return [
        row[0]
        for row in conn.execute(
            f"SELECT DISTINCT webhook_id FROM events WHERE {where} ORDER BY webhook_id DESC LIMIT ?",  # noqa: S608
            (*params, PAGE + 1),
        )
    ]


def measure(count: int = 1_000_000, folder: Path | None = None) -> dict:
    """Fill, search naively, migrate, search with the indexes; every figure in one dict."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        path = Path(scratch) / "search.db"
        fill_s, size_mb = fill(path, count)
        conn = db.connect(path)
        customer = f"1650{4321:07d}"
        wamid = f"wamid.{count // 2 + 1}"
        before = {
            "customer": timed(lambda: naive(conn, "customer", customer), 3),
            "message_id": timed(lambda: naive(conn, "message_id", wamid), 3),
        }
        started = time.perf_counter()
        db.migrate(conn, [m for m in db.migrations() if m[0] <= 4])
        migrate_s = time.perf_counter() - started
        db.migrate(conn)  # the later ones, untimed
        searches = {
            "no filter (newest page)": {},
            "customer phone": {"customer": customer},
            "customer phone, typed +1 (650) …": {"customer": f"+1 (650) {customer[4:7]}-{customer[7:]}"},
            "customer user id": {"customer": "US.997"},
            "message id": {"message_id": wamid},
            "event name, common (message.received)": {"event": "message.received"},
            "event name, rare (template.status_changed)": {"event": "template.status_changed"},
            "delivery state, rare (failed)": {"state": "failed"},
            "delivery state, common (delivered)": {"state": "delivered"},
            "customer and state failed": {"customer": f"1650{4007:07d}", "state": "failed"},
            "event and state failed (none match)": {"event": "message.received", "state": "failed"},
            "event and state delivered": {"event": "message.status_updated", "state": "delivered"},
        }
        after, pages = {}, {}
        for label, chosen in searches.items():
            found = page(conn, chosen)
            assert found or "none match" in label, (label, found)
            after[label] = timed(lambda chosen=chosen: event_search.webhook_page(conn, chosen, None, PAGE), 15)
            pages[label] = timed(lambda chosen=chosen: page(conn, chosen), 15)
        conn.close()
        return {
            "webhooks": count,
            "fill_s": fill_s,
            "size_mb": size_mb,
            "migrate_s": migrate_s,
            "before": before,
            "after": after,
            "pages": pages,
        }


def report(result: dict) -> str:
    lines = [
        f"{result['webhooks']:,} webhooks + events + deliveries filled in {result['fill_s']:.0f} s"
        f" ({result['size_mb']:,.0f} MB); migration 4 (search indexes) took {result['migrate_s']:.1f} s",
        "median ms                                     search before (json scan)  search after  whole page's queries",
    ]
    pairs = {"customer phone": "customer", "message id": "message_id"}
    for label, ms in result["after"].items():
        old = result["before"].get(pairs.get(label, ""), None)
        old_text = "" if old is None else f"{old:,.0f}"
        lines.append(f"  {label:<44} {old_text:>24}  {ms:>12.2f}  {result['pages'][label]:>20.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)))
