"""GET /metrics: Prometheus text format, read from the database at scrape time.

Nothing is counted in process memory, so any number of web processes and workers agree and
a restart loses nothing: the totals are kept by triggers (migration 9) in the same
transaction as the rows they count, and the rest are single index look-ups. A scrape
therefore reads a few dozen rows however many deliveries are stored. The `endpoint` label
is the endpoint's id, never its URL (a URL can carry a token).

With `admin.metrics_token` set, a scrape needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.ops import heartbeats, silence
from gateway.storage import db
from gateway.storage.db import get_db

log = logging.getLogger("wahook.metrics")

bp = Blueprint("metrics", __name__)

# Names with a series of their own in wahook_events_total; new names an API client publishes past
# it are counted together as event="other" (kept by migration 13's trigger, so nothing is lost).
EVENT_SERIES_MAX = db.EVENT_SERIES_MAX
DELIVERY_STATES = ("pending", "retrying", "delivered", "failed")
ATTEMPT_RESULTS = ("success", "failure")


def totals(conn: db.Connection, kind: str) -> list[db.Row]:
    """(label, label2, value) of one series. On PostgreSQL a series has a row per database
    session (migration 10: no row every intake updates), so the rows are summed."""
    return conn.execute(
        "SELECT label, label2, sum(value) AS value FROM metric_totals WHERE kind = ? GROUP BY label, label2"
        " ORDER BY label, label2",
        (kind,),
    ).fetchall()


def collect(conn: db.Connection, config, now: float | None = None) -> Iterator[Metric]:
    """Every wahook series, as prometheus_client metric families."""
    now = time.time() if now is None else now
    endpoint_ids = [str(row[0]) for row in conn.execute("SELECT id FROM endpoints ORDER BY id")]

    received = CounterMetricFamily(
        "wahook_webhooks_received", "Meta POSTs: stored (received) or refused for their signature", labels=["outcome"]
    )
    found = {row["label"]: row["value"] for row in totals(conn, "webhooks")}
    for outcome in ("received", "rejected"):
        received.add_metric([outcome], found.get(outcome, 0))
    yield received

    events = CounterMetricFamily("wahook_events_total", "Events stored, by name", labels=["event"])
    for row in totals(conn, "events"):
        events.add_metric([row["label"]], row["value"])
    yield events

    attempts = CounterMetricFamily(
        "wahook_delivery_attempts", "Delivery attempts, by endpoint id and result", labels=["endpoint", "result"]
    )
    found = {(row["label"], row["label2"]): row["value"] for row in totals(conn, "attempts")}
    for endpoint, result in sorted(found.keys() | {(e, r) for e in endpoint_ids for r in ATTEMPT_RESULTS}):
        attempts.add_metric([endpoint, result], found.get((endpoint, result), 0))
    yield attempts

    # Deliveries of deleted endpoints are left out, as on the monitor.
    deliveries = GaugeMetricFamily(
        "wahook_deliveries", "Deliveries now in each state, by endpoint id", labels=["endpoint", "state"]
    )
    found = {(row["label"], row["label2"]): row["value"] for row in totals(conn, "deliveries")}
    for endpoint in endpoint_ids:
        for state in DELIVERY_STATES:
            deliveries.add_metric([endpoint, state], found.get((endpoint, state), 0))
    yield deliveries

    oldest = GaugeMetricFamily(
        "wahook_oldest_pending_seconds",
        "Age of the oldest pending or retrying delivery, by endpoint id",
        labels=["endpoint"],
    )
    for endpoint in endpoint_ids:
        created = conn.execute(
            "SELECT min(created_at) FROM deliveries WHERE endpoint_id = ? AND state IN ('pending', 'retrying')",
            (int(endpoint),),
        ).fetchone()[0]
        oldest.add_metric([endpoint], max(0.0, now - created) if created is not None else 0.0)
    yield oldest

    enabled = GaugeMetricFamily("wahook_endpoint_enabled", "1 when the endpoint is enabled", labels=["endpoint"])
    for row in conn.execute("SELECT id, enabled FROM endpoints ORDER BY id"):
        enabled.add_metric([str(row[0])], row[1])
    yield enabled

    last = silence.last_meta_webhook(conn)
    if last is not None:  # none yet: no sample, rather than a 1970 that looks like an outage
        yield GaugeMetricFamily(
            "wahook_last_meta_webhook_timestamp_seconds", "When the last Meta webhook was stored (unix)", value=last
        )

    quiet = silence.state(conn, config, now)
    yield GaugeMetricFamily(
        "wahook_meta_silent",
        "1 while Meta has been quiet for meta.silence_hours (0 when not watching)",
        value=quiet.silent,
    )

    workers, _ = heartbeats.recent(conn, now)
    yield GaugeMetricFamily("wahook_workers", "Delivery workers with a recent heartbeat", value=workers)


class _Scrape:
    """The one-off registry prometheus_client's writer asks for metric families."""

    def __init__(self, conn: db.Connection, config) -> None:
        self.conn, self.config = conn, config

    def collect(self) -> Iterator[Metric]:
        return collect(self.conn, self.config)


def render(conn: db.Connection, config) -> bytes:
    """The exposition text of every series, read in one snapshot of the database."""
    # One read transaction: the numbers agree with each other (on PostgreSQL, one snapshot
    # needs REPEATABLE READ; READ COMMITTED takes a new one per statement).
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ" if db.engine(conn) == "postgresql" else "BEGIN")
    try:
        return generate_latest(_Scrape(conn, config))  # type: ignore[arg-type]
    finally:
        db.rollback(conn)


def authorized(token: str) -> bool:
    """Whether the request carries `Authorization: Bearer <token>`; compared in constant time."""
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    presented = value.strip() if scheme.lower() == "bearer" else ""
    # Digests have one length, so not even the token's length leaks through timing.
    return hmac.compare_digest(
        hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest(),
        hashlib.sha256(token.encode("utf-8")).digest(),
    )


@bp.get("/metrics")
def scrape() -> Response:
    config = current_app.config["WAHOOK"]
    token = config["admin"]["metrics_token"]
    if token and not authorized(token):
        return Response(
            "metrics need Authorization: Bearer <admin.metrics_token>\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="wahook metrics"'},
        )
    try:
        body = render(get_db(), config)
    except db.Error as exc:
        log.error("metrics could not be read: %s", exc)
        return Response(f"database unavailable: {exc}\n", status=503, mimetype="text/plain")
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
