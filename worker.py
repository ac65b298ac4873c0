"""The delivery worker: `python worker.py`. Several may run at once against one database.

Inside one worker:
- an RQ `SimpleWorker` (no fork per job) runs `drain` jobs, which the web process queues
  after a commit when no worker is awake; a drain job wakes this worker's dispatcher;
- the dispatcher finds the endpoints that have due deliveries and tells their lanes; while
  awake it keeps watching the database (a few microseconds every few milliseconds) and
  does the same on every change, so steady traffic needs no RQ job at all (see doorbell.py);
- a lane per endpoint, with a few threads and keep-alive connections of its own, claims
  that endpoint's due deliveries in batches and sends them, so an endpoint that hangs or
  fails holds up nobody else's deliveries;
- a media lane (downloads.py), with threads of its own, downloads media files when
  `meta.access_token` is set, so downloads and deliveries never wait for each other;
- a sweeper thread does the same every second without Redis, which is what makes
  retries happen on time and makes a lost job, a flushed Redis or a dead worker harmless;
  it also probes failing endpoints and disables those failing for too long (outages.py),
  writes the heartbeat /healthz reads, and prunes old history.
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
from pathlib import Path

import redis
from rq import SimpleWorker

from gateway.config import ConfigError, load_config
from gateway.delivery import delivery_states, doorbell, embedded_redis, lanes, outages, send
from gateway.media import downloads, store
from gateway.net import safe_http
from gateway.ops import heartbeats, logs, silence
from gateway.storage import concurrency, db, private_paths, sqlite_open

log = logging.getLogger("wahook.worker")

LANE_THREADS = 4  # concurrent sends per endpoint
FAST_BATCH = 32  # deliveries claimed at once by a lane whose receiver answers quickly
SLOW_SECONDS = 0.5  # an attempt slower than this makes its lane claim one at a time
SWEEP_INTERVAL = float(os.environ.get("WAHOOK_SWEEP_INTERVAL") or 1.0)  # tests shorten it
PRUNE_INTERVAL = 3600.0
WATCH_INTERVAL = 0.003  # while awake, how often to look for new commits
AWAKE_IDLE = 2.0  # renew the wake key until this long after the last due delivery was found
AWAKE_RENEW = 1.0
WATCH_MARGIN = 0.5  # watch this much past the wake key's expiry


class Lane(lanes.Lane):
    """One endpoint's sending in this process: threads that claim its due deliveries and send them.

    A round claims a batch; when the batch comes back full there is probably more, and it
    calls in the next thread (see lanes.py). The very first batch is sent alone, so an
    endpoint that answers 410 Gone gets one request, not one per thread.
    """

    def __init__(self, dispatcher: Dispatcher, endpoint_id: int | None) -> None:
        self.dispatcher = dispatcher
        self.endpoint_id = endpoint_id
        self.failure = f"delivery batch failed for endpoint {endpoint_id}"
        self.slow = True  # until an attempt shows otherwise, claim one at a time
        self.known = False  # no attempt yet: one thread probes before the others join in
        config = dispatcher.config["delivery"]
        self.lease = float(config["timeout"]) + send.LEASE_MARGIN
        self.sender = safe_http.Sender(
            allow_http=config["allow_http"], allow_private=config["allow_private_urls"], pool_size=LANE_THREADS
        )
        super().__init__(f"lane-{endpoint_id}", LANE_THREADS, dispatcher.stopping)

    def work(self) -> None:
        size = 1 if self.slow else FAST_BATCH
        conn = db.connection(self.dispatcher.config.database)
        claimed = delivery_states.claim_next(conn, self.endpoint_id, self.dispatcher.name, self.lease, size)
        # A full batch: there is likely more, for another thread, once an attempt has
        # shown the endpoint answers at all (a first 410 should end everything at once).
        full = len(claimed) == size
        if full and self.known:
            self.want()
        results = send.deliver_claimed(
            conn, self.dispatcher.config, self.sender, self.endpoint_id, claimed, self.dispatcher.name
        )
        if results:
            log_outcomes(self.endpoint_id, results)
            self.slow = any(o.duration_ms > SLOW_SECONDS * 1000 for _, o in results)
            if not self.known:
                self.known = True
                if full:
                    self.want()

    def close(self, grace: float = 1.0) -> None:
        super().close(grace)
        self.sender.close()


def log_outcomes(endpoint_id: int | None, results: list) -> None:
    """One line per attempt with the ids involved: a failure at warning, a success at debug."""
    for row, outcome in results:
        public_id = row["message_id"]  # an event's id, or the Meta webhook's for the meta format
        ids = {
            "delivery_id": row["id"],
            "endpoint_id": endpoint_id,
            "event_id" if public_id.startswith("evt_") else "webhook_id": public_id,
            "status_code": outcome.status_code,
        }
        if outcome.ok:
            log.debug("delivered %s", row["event_name"], extra=ids)
        else:
            log.warning(
                "delivery attempt failed: %s", row["event_name"], extra={**ids, "attempts": row["attempts"] + 1}
            )


class Dispatcher:
    """Tells lanes when their endpoint has due deliveries. `pump` is what drain jobs, the awake
    watcher and the sweeper call."""

    def __init__(self, config, name: str | None = None) -> None:
        self.config = config
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self.lanes: dict[int | None, Lane] = {}
        self.stopping = threading.Event()
        self.pump_lock = threading.Lock()
        self.awake = threading.Event()
        self.awake_lock = threading.RLock()
        self.watcher: threading.Thread | None = None
        self.watch_until = 0.0  # monotonic time until which commits may rely on the watcher
        self.media = downloads.MediaLane(config, self.name, self.stopping) if config["meta"]["access_token"] else None

    def pump(self) -> int:
        """Wake the lane of every endpoint with a due delivery nobody holds. Returns how many lanes."""
        with self.pump_lock:
            if self.stopping.is_set():
                return 0
            conn = db.connection(self.config.database)
            found = delivery_states.due_endpoints(conn)
            if self.media is not None and store.any_due(conn):
                self.media.want()
            for endpoint_id in found:
                lane = self.lanes.get(endpoint_id)
                if lane is None:
                    lane = self.lanes[endpoint_id] = Lane(self, endpoint_id)
                lane.want()
            return len(found)

    def on_drain_job(self) -> int:
        """A drain job: mark this worker awake before reading SQLite, so every commit from now
        until the wake key expires is seen by the watcher (see doorbell.py)."""
        self.hold_awake()
        return self.pump()

    def hold_awake(self) -> None:
        with self.awake_lock:
            # Until Redis answers, assume the key may live a whole WAKE_TTL from now.
            self.watch_until = max(self.watch_until, time.monotonic() + doorbell.WAKE_TTL_MS / 1000)
            try:
                self.watch_until = max(self.watch_until, doorbell.hold_awake(self.config))
            except Exception as exc:
                log.warning("could not mark the worker awake: %s", exc)
            self.awake.set()
            if self.watcher is None:
                self.watcher = threading.Thread(target=self.watch, name="watcher", daemon=True)
                self.watcher.start()

    def watch(self) -> None:
        """While awake: pump whenever the database changed. Renew the wake key while there is
        work; once there has been none for AWAKE_IDLE, stop renewing, and stop watching only
        when the key has surely expired, since until then commits rely on this watch."""
        conn = db.connect(self.config.database)  # its own: data_version counts others' commits
        try:
            while not self.stopping.is_set():
                if not self.awake.wait(0.5):
                    continue
                commits = db.CommitWatch(conn, seen=False)
                last_found = renewed = time.monotonic()
                while not self.stopping.wait(WATCH_INTERVAL):
                    now = time.monotonic()
                    if commits.changed() and self.pump():
                        last_found = now
                    if now - last_found < AWAKE_IDLE and now - renewed > AWAKE_RENEW:
                        self.hold_awake()
                        renewed = now
                    with self.awake_lock:
                        if now > self.watch_until + WATCH_MARGIN:
                            self.awake.clear()
                            break
                self.pump()
        except Exception:
            log.exception("the watcher stopped; the sweeper goes on delivering")
        finally:
            conn.close()
            with self.awake_lock:
                self.watcher = None

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
        if self.awake.is_set():
            try:
                doorbell.forget_awake(self.config)
            except Exception as exc:
                log.warning("could not clear the wake key: %s", exc)
        deadline = time.monotonic() + grace
        for lane in self.lanes.values():
            for thread in lane.threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            lane.close()
        if self.media is not None:
            self.media.close(max(0.0, deadline - time.monotonic()))


def prune(conn, retention_days: int, media_folder: Path | None = None) -> int:
    """Delete history older than the retention period, in small transactions. Returns rows deleted.

    Media rows and files go with the last webhook that refers to them (media_store.prune);
    files are removed only when `media_folder` is given."""
    cutoff = time.time() - retention_days * 86400
    deleted = 0
    with db.transaction(conn):
        # Failed logins only matter for the rate limit's minute; keep an hour for the curious.
        deleted += conn.execute("DELETE FROM login_failures WHERE at < ?", (time.time() - 3600,)).rowcount
    for table, where in (
        ("webhooks", "received_at < ?"),
        ("events", "webhook_id IS NULL AND created_at < ?"),
        ("attempts", "attempted_at < ?"),
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
    deleted += store.prune(conn, media_folder)
    concurrency.fold_counter_shards(conn)  # PostgreSQL: the counter rows of sessions that ended, into one
    return deleted


def sweep(dispatcher: Dispatcher) -> None:
    """Every second: probe or disable failing endpoints, pump what is due and look for a silent
    Meta; every few seconds: heartbeat; every hour: prune."""
    started = time.time()
    last_beat = last_prune = 0.0
    while not dispatcher.stopping.is_set():
        try:
            conn = db.connection(dispatcher.config.database)
            now = time.monotonic()
            if now - last_beat >= heartbeats.INTERVAL:
                heartbeats.beat(conn, dispatcher.name, started)
                last_beat = now
            outages.sweep(conn, dispatcher.config)  # may make a probe due: before the pump
            dispatcher.pump()
            silence.check(conn, dispatcher.config)
            if now - last_prune >= PRUNE_INTERVAL:
                config = dispatcher.config
                prune(conn, config["storage"]["retention_days"], store.media_dir(config))
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
            SimpleWorker([doorbell.QUEUE_NAME], connection=doorbell.redis_connection(config)).work(
                logging_level="WARNING", with_scheduler=False
            )
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("redis unavailable (%s); delivering from the database meanwhile", exc)
            stop.wait(2)


def main() -> int:
    # make run sets WAHOOK_LOG_LEVEL=warning so its own output stays short.
    logs.configure("worker")
    private_paths.tighten_umask()
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"wahook: configuration error: {exc}", file=sys.stderr)
        return 2
    sqlite_open.use_synchronous(config.database, config["storage"]["synchronous"])
    try:
        db.connection(config.database)
    except db.StorageError as exc:
        print(f"wahook: {exc}", file=sys.stderr)
        return 2
    if config.redis_embedded:
        embedded_redis.ensure_running(config.data_dir)
    dispatcher = Dispatcher(config)
    doorbell.set_drain_handler(dispatcher.on_drain_job)
    sweeper = threading.Thread(target=sweep, args=(dispatcher,), name="sweeper", daemon=True)
    sweeper.start()
    log.info("worker %s started", dispatcher.name)
    run_rq(config)
    dispatcher.stop()
    try:
        heartbeats.forget(db.connection(config.database), dispatcher.name)
    except Exception as exc:
        log.warning("could not remove the heartbeat: %s", exc)
    log.info("worker %s stopped", dispatcher.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
