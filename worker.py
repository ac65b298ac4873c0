"""The delivery worker: `python worker.py`. Several may run at once against one database.

Inside one worker:
- an RQ `SimpleWorker` (no fork per job) runs `drain` jobs, which the web process queues
  after each commit; a drain job only reads which deliveries are due and hands them on;
- a lane per endpoint, with a few threads and keep-alive connections of its own, sends
  them, so an endpoint that hangs or fails holds up nobody else's deliveries;
- a sweeper thread does the same every second without Redis, which is what makes
  retries happen on time and makes a lost job, a flushed Redis or a dead worker harmless;
  it also writes the heartbeat /healthz reads, and prunes old history.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque

import redis
from rq import SimpleWorker

import db
import delivery
import embedded_redis
import jobs
import safe_http
from config import ConfigError, load_config

log = logging.getLogger("wahook.worker")

LANE_THREADS = 4  # concurrent sends per endpoint
FAST_BATCH = 32  # deliveries claimed at once by a lane whose receiver answers quickly
SLOW_SECONDS = 0.5  # an attempt slower than this (or failing) makes its lane claim one at a time
LANE_BACKLOG = 2000  # deliveries queued in memory per lane; the rest wait in SQLite
PUMP_LIMIT = 5000
SWEEP_INTERVAL = 1.0
HEARTBEAT_INTERVAL = 5.0
PRUNE_INTERVAL = 3600.0


class Lane:
    """The deliveries of one endpoint waiting in this process, and the threads sending them."""

    def __init__(self, dispatcher: Dispatcher, endpoint_id: int | None) -> None:
        self.dispatcher = dispatcher
        self.endpoint_id = endpoint_id
        self.waiting: deque[int] = deque()
        self.held: set[int] = set()  # waiting or being sent: the pump must not offer them again
        self.ready = threading.Condition()
        self.busy = 0
        self.slow = True  # until an attempt shows otherwise, claim one at a time
        config = dispatcher.config["delivery"]
        self.sender = safe_http.Sender(
            allow_http=config["allow_http"], allow_private=config["allow_private_urls"], pool_size=LANE_THREADS
        )
        self.threads = [
            threading.Thread(target=self.run, name=f"lane-{endpoint_id}-{n}", daemon=True) for n in range(LANE_THREADS)
        ]
        for thread in self.threads:
            thread.start()

    def offer(self, ids: list[int]) -> int:
        """Queue the ids not already held here; returns how many were taken."""
        taken = 0
        with self.ready:
            for delivery_id in ids:
                if delivery_id in self.held or len(self.held) >= LANE_BACKLOG:
                    continue
                self.held.add(delivery_id)
                self.waiting.append(delivery_id)
                taken += 1
            if taken:
                self.ready.notify_all()
        return taken

    def idle(self) -> bool:
        with self.ready:
            return not self.held

    def run(self) -> None:
        stopping = self.dispatcher.stopping
        while not stopping.is_set():
            with self.ready:
                if not self.waiting:
                    self.ready.wait(0.5)
                    continue
                size = 1 if self.slow else FAST_BATCH
                batch = [self.waiting.popleft() for _ in range(min(size, len(self.waiting)))]
            try:
                conn = db.connection(self.dispatcher.config.database_path)
                results = delivery.deliver_batch(
                    conn, self.dispatcher.config, self.sender, self.endpoint_id, batch, self.dispatcher.name
                )
                if results:
                    self.slow = any(not o.ok or o.duration_ms > SLOW_SECONDS * 1000 for _, o in results)
            except Exception:
                # Leases we took run out and the sweeper offers the deliveries again.
                log.exception("delivery batch failed for endpoint %s", self.endpoint_id)
                stopping.wait(1)
            finally:
                with self.ready:
                    self.held.difference_update(batch)

    def close(self) -> None:
        with self.ready:
            self.ready.notify_all()
        for thread in self.threads:
            thread.join(timeout=1)
        self.sender.close()


class Dispatcher:
    """Routes due deliveries to per-endpoint lanes. `pump` is what drain jobs and the sweeper call."""

    def __init__(self, config, name: str | None = None) -> None:
        self.config = config
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self.lanes: dict[int | None, Lane] = {}
        self.stopping = threading.Event()
        self.pump_lock = threading.Lock()

    def pump(self) -> int:
        """Offer every due, unleased delivery to its endpoint's lane. Returns how many were new here."""
        with self.pump_lock:
            if self.stopping.is_set():
                return 0
            conn = db.connection(self.config.database_path)
            by_endpoint: dict[int | None, list[int]] = {}
            for row in delivery.due(conn, PUMP_LIMIT):
                by_endpoint.setdefault(row["endpoint_id"], []).append(row["id"])
            offered = 0
            for endpoint_id, ids in by_endpoint.items():
                lane = self.lanes.get(endpoint_id)
                if lane is None:
                    lane = self.lanes[endpoint_id] = Lane(self, endpoint_id)
                offered += lane.offer(ids)
            return offered

    def on_drain_job(self) -> int:
        # Clear the wake flag before reading SQLite, so a commit landing after this point
        # queues a new job instead of relying on this one to have seen it.
        try:
            jobs.redis_connection(self.config).delete(jobs.WAKE_KEY)
        except Exception as exc:
            log.warning("could not clear the wake flag: %s", exc)
        return self.pump()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every lane has sent what it holds (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(lane.idle() for lane in list(self.lanes.values())):
                return True
            time.sleep(0.01)
        return False

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking work, let sends in flight finish for `grace` seconds, close connections."""
        self.stopping.set()
        deadline = time.monotonic() + grace
        for lane in self.lanes.values():
            for thread in lane.threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            lane.close()


def heartbeat(conn, name: str, started_at: float) -> None:
    with db.transaction(conn):
        conn.execute(
            "INSERT INTO workers (name, pid, host, started_at, seen_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
            (name, os.getpid(), socket.gethostname(), started_at, time.time()),
        )


def prune(conn, retention_days: int) -> int:
    """Delete history older than the retention period, in small transactions. Returns rows deleted."""
    cutoff = time.time() - retention_days * 86400
    deleted = 0
    for table, where in (
        ("webhooks", "received_at < ?"),
        ("events", "webhook_id IS NULL AND created_at < ?"),
        ("attempts", "attempted_at < ?"),
        ("login_failures", "at < ?"),
        ("workers", "seen_at < ?"),
    ):
        while True:
            with db.transaction(conn):
                count = conn.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} LIMIT 500)"  # noqa: S608
                    if table != "workers"
                    else f"DELETE FROM workers WHERE {where}",  # noqa: S608
                    (cutoff,),
                ).rowcount
            deleted += count
            if count < 500 or table == "workers":
                break
    with db.transaction(conn):
        deleted += conn.execute("DELETE FROM rejections WHERE minute < ?", (int(cutoff // 60),)).rowcount
    return deleted


def sweep(dispatcher: Dispatcher) -> None:
    """Every second: pump what is due; every few seconds: heartbeat; every hour: prune."""
    started = time.time()
    last_beat = last_prune = 0.0
    while not dispatcher.stopping.is_set():
        try:
            conn = db.connection(dispatcher.config.database_path)
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_INTERVAL:
                heartbeat(conn, dispatcher.name, started)
                last_beat = now
            dispatcher.pump()
            if now - last_prune >= PRUNE_INTERVAL:
                prune(conn, dispatcher.config["storage"]["retention_days"])
                last_prune = now
        except Exception:
            log.exception("sweep failed; trying again")
        dispatcher.stopping.wait(SWEEP_INTERVAL)


def run_rq(config) -> None:
    """Run RQ's worker loop until SIGINT or SIGTERM, waiting out a Redis that is down.

    RQ handles the signals itself while it works (a warm shutdown) and reconnects when
    Redis goes away mid-run; only a Redis that is down at start makes it raise, and then
    the sweeper goes on delivering from SQLite while we wait.
    """
    stop = threading.Event()
    while not stop.is_set():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            SimpleWorker([jobs.QUEUE_NAME], connection=jobs.redis_connection(config)).work(
                logging_level="WARNING", with_scheduler=False
            )
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("redis unavailable (%s); delivering from the database meanwhile", exc)
            stop.wait(2)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"wahook: configuration error: {exc}", file=sys.stderr)
        return 2
    db.connection(config.database_path)
    if config.redis_embedded:
        embedded_redis.ensure_running(config.data_dir)
    dispatcher = Dispatcher(config)
    jobs.set_drain_handler(dispatcher.on_drain_job)
    sweeper = threading.Thread(target=sweep, args=(dispatcher,), name="sweeper", daemon=True)
    sweeper.start()
    log.info("worker %s started", dispatcher.name)
    run_rq(config)
    dispatcher.stop()
    try:
        conn = db.connection(config.database_path)
        with db.transaction(conn):
            conn.execute("DELETE FROM workers WHERE name = ?", (dispatcher.name,))
    except Exception as exc:
        log.warning("could not remove the heartbeat: %s", exc)
    log.info("worker %s stopped", dispatcher.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
