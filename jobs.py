"""RQ glue: the Redis connection, waking a worker after a commit, and the job it runs.

Redis only carries a wake-up call. The job (`drain`) says "there are due deliveries";
the worker reads which ones from SQLite. So a lost job, a flushed or restarted Redis,
or a Redis that is down during intake delays a delivery until the worker's sweeper
finds it, and never loses it.
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
# While this key exists a drain job is queued and not yet started, so further commits
# need not queue another: one job serves any number of webhooks. The worker deletes it
# before it reads SQLite, and the expiry covers a job lost with the key still set.
WAKE_KEY = "wahook:wake"
WAKE_KEY_TTL = 5
# After Redis fails, intake skips it this long instead of paying a failed connect per request.
REDIS_BACKOFF = 1.0

_connections: dict[tuple[int, str], redis.Redis] = {}
_urls: dict[tuple[str, str], str] = {}  # (redis.url, data folder) -> URL; resolving a path costs syscalls
_down_until: dict[str, float] = {}  # per Redis URL
_lock = threading.Lock()


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
    return Queue(QUEUE_NAME, connection=redis_connection(config))


def wake(config) -> bool:
    """Make sure a drain job is queued. Never raises: if Redis is down the sweeper catches up."""
    url = redis_url(config)
    if time.monotonic() < _down_until.get(url, 0.0):
        return False
    try:
        conn = redis_connection(config, url)
        if conn.set(WAKE_KEY, b"1", nx=True, ex=WAKE_KEY_TTL):
            queue(config).enqueue(drain, job_timeout=60, result_ttl=0, failure_ttl=3600)
        return True
    except (redis.RedisError, OSError) as exc:
        with _lock:
            _down_until[url] = time.monotonic() + REDIS_BACKOFF
        log.warning("redis unavailable, deliveries wait for the sweeper: %s", exc)
        return False


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
