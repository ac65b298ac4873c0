"""RQ glue: the Redis connection, waking a worker after a commit, and the job it runs.

Redis only carries a wake-up call. The job (`drain`) says "there are due deliveries";
the worker reads which ones from SQLite. So a lost job, a flushed or restarted Redis,
or a Redis that is down during intake delays a delivery until the worker's sweeper
finds it, and never loses it.

The wake key debounces the calls. While it exists, either a drain job is queued and has
not started (value "queued"), or a worker is awake (value "awake"): it watches the
database for new commits and, before it stops watching, deletes the key and looks once
more. Either way a commit that finds the key set will be seen, so it queues nothing.
Under steady traffic a worker stays awake and intake queues no jobs at all: an RQ job
costs the worker milliseconds, a look at the database microseconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

import embedded_redis

log = logging.getLogger("wahook.jobs")

QUEUE_NAME = "wahook"
# See the module docstring. The expiry covers a job lost, or a worker killed, with the key set.
WAKE_KEY = "wahook:wake"
WAKE_KEY_TTL = 5
AWAKE_TTL = 5  # a worker renews its "awake" every second or so
# After Redis fails, intake skips it this long instead of paying a failed connect per request.
REDIS_BACKOFF = 1.0

_connections: dict[tuple[int, str], redis.Redis] = {}
_queues: dict[tuple[int, str], Queue] = {}
_urls: dict[tuple[str, str], str] = {}  # (redis.url, data folder) -> URL; resolving a path costs syscalls
_down_until: dict[str, float] = {}  # per Redis URL
_lock = threading.Lock()
_local = threading.local()  # each thread's own connection for wake(), by URL


def fail_fast() -> Retry:
    """One immediate retry (a pooled connection may be stale after a Redis restart), no backoff:
    redis-py's default backs off for seconds, which would stall every intake while Redis is down."""
    return Retry(NoBackoff(), 1)


def redis_url(config) -> str:
    """The URL of the Redis `config` names, worked out once: intake asks for it on every POST."""
    key = (config["redis"]["url"], str(config.data_dir))
    url = _urls.get(key)
    if url is None:
        url = _urls[key] = embedded_redis.url_for(config.data_dir) if config.redis_embedded else key[0]
    return url


def redis_connection(config, url: str | None = None) -> redis.Redis:
    """A Redis client for this process (clients hold a pool, so one is enough)."""
    key = (os.getpid(), url or redis_url(config))
    conn = _connections.get(key)
    if conn is None:
        conn = redis.Redis.from_url(key[1], socket_connect_timeout=1, socket_timeout=5, retry=fail_fast())
        _connections[key] = conn
    return conn


def queue(config) -> Queue:
    url = redis_url(config)
    key = (os.getpid(), url)
    found = _queues.get(key)
    if found is None:
        found = _queues[key] = Queue(QUEUE_NAME, connection=redis_connection(config, url))
    return found


def _set_if_absent(config, url: str) -> bool:
    """SET wake-key "queued" NX EX on this thread's own connection, packed once: intake does this
    after every commit, and redis-py's general command path costs twice the round trip itself."""
    conns = getattr(_local, "conns", None)
    if conns is None or getattr(_local, "pid", None) != os.getpid():
        conns = _local.conns = {}
        _local.pid = os.getpid()
    found = conns.get(url)
    if found is None:
        conn = redis_connection(config, url).connection_pool.make_connection()
        command = conn.pack_command("SET", WAKE_KEY, "queued", "NX", "EX", WAKE_KEY_TTL)
        found = conns[url] = (conn, [b"".join(command)])
    conn, command = found
    for attempt in (1, 2):
        try:
            conn.send_packed_command(command, check_health=False)
            return conn.read_response() is not None
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            if attempt == 2:  # once more on a fresh connection: Redis may have restarted meanwhile
                raise
    return False


def wake(config) -> bool:
    """Make sure a drain job is queued or a worker is awake. Never raises: if Redis is down the
    sweeper catches up."""
    url = redis_url(config)
    if time.monotonic() < _down_until.get(url, 0.0):
        return False
    try:
        if _set_if_absent(config, url):
            queue(config).enqueue(drain, job_timeout=60, result_ttl=0, failure_ttl=3600)
        return True
    except (redis.RedisError, OSError) as exc:
        with _lock:
            _down_until[url] = time.monotonic() + REDIS_BACKOFF
        log.warning("redis unavailable, deliveries wait for the sweeper: %s", exc)
        return False


def hold_awake(config) -> None:
    """Mark a worker awake (see the module docstring); renew it at least every AWAKE_TTL seconds."""
    redis_connection(config).set(WAKE_KEY, b"awake", ex=AWAKE_TTL)


def release_awake(config) -> None:
    """The worker stops watching: from now on commits queue a job again. Look at the database
    once more after this, for commits that found the key still set."""
    redis_connection(config).delete(WAKE_KEY)


_drain_handler: Callable[[], int] | None = None


def set_drain_handler(handler: Callable[[], int] | None) -> None:
    """Called by the worker: what `drain` jobs do in this process."""
    global _drain_handler
    _drain_handler = handler


def drain() -> int:
    """The job: hand every due delivery to this worker's dispatcher. Returns how many."""
    if _drain_handler is None:
        raise RuntimeError("drain jobs run inside a wahook worker (python worker.py)")
    return _drain_handler()
