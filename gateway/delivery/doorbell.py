"""RQ glue: the Redis connection, waking a worker after a commit, and the job it runs.

Redis only carries a wake-up call. The job (`drain`) says "there are due deliveries";
the worker reads which ones from SQLite. So a lost job, a flushed or restarted Redis,
or a Redis that is down during intake delays a delivery until the worker's sweeper
finds it, and never loses it.

The wake key debounces the calls. It has an expiry, and until it expires every commit
is sure to be seen: either a drain job is queued and has not started (value "queued"),
or a worker is awake (value "awake"), watching the database for commits and looking at
every change. A worker renews the key while there is work, and once it stops renewing
it keeps watching until the key has expired. Every write of the key sets the same time
to live from now, so it never brings an expiry forward.

So a commit that finds the key set queues nothing, and the process that committed need
not ask Redis again until the expiry it was told: under steady traffic intake talks to
Redis once every few seconds, not once per webhook, and RQ runs no jobs at all (a job
costs the worker milliseconds; a look at the database costs microseconds). A flushed or
restarted Redis only means the sweeper finds the next deliveries, up to a second later.
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

from gateway.delivery import embedded_redis
from gateway.storage import task_local

log = logging.getLogger("wahook.jobs")

QUEUE_NAME = "wahook"
# See the module docstring. The expiry also bounds how long a job lost, or a worker killed,
# with the key set leaves commits to the sweeper.
WAKE_KEY = "wahook:wake"
WAKE_TTL_MS = 5000
# Intake trusts a key's expiry minus this, for the time between Redis's answer and the
# commits that rely on it (a process that stalls longer than this is slow, not wrong: the
# sweeper still finds its deliveries).
QUIET_MARGIN = 0.5
# After Redis fails, intake skips it this long instead of paying a failed connect per request.
REDIS_BACKOFF = 1.0
# The wake-up is one SET and one PTTL: microseconds when Redis is well. A Redis that accepts
# connections but does not answer (stopped, swapping) must not hold Meta's POST for seconds.
WAKE_TIMEOUT = 0.25

_connections: dict[tuple[int, str], redis.Redis] = {}
_queues: dict[tuple[int, str], Queue] = {}
_urls: dict[tuple[str, str], str] = {}  # (redis.url, database) -> URL; resolving a path costs syscalls
_down_until: dict[str, float] = {}  # per Redis URL
_lock = threading.Lock()
# Each task's own connection for wake(), by URL, with its packed commands (task_local.py).
_wakers = task_local.TaskLocal(lambda _found: True, lambda found: found[0].disconnect())
_quiet_until: dict[tuple[str, str], float] = {}  # (Redis URL, database): monotonic time


def fail_fast() -> Retry:
    """One immediate retry (a pooled connection may be stale after a Redis restart), no backoff:
    redis-py's default backs off for seconds, which would stall every intake while Redis is down."""
    return Retry(NoBackoff(), 1)


def redis_url(config) -> str:
    """The URL of the Redis `config` names, worked out once: intake asks for it on every POST."""
    # Keyed by the database's path, not the data folder it is in: working that folder out (a new
    # Path each time) cost more than the rest of the lookup.
    key = (config["redis"]["url"], config.database)
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


def _announce(config, url: str) -> tuple[bool, int]:
    """SET wake-key "queued" NX with the usual expiry, then PTTL, in one round trip on this
    task's own connection with the commands packed once (redis-py's general path costs
    more than the round trip). Returns (whether the key was new, its time to live in ms)."""
    conn, packed = _wakers.get(url, lambda: _waker(config, url))
    for attempt in (1, 2):
        try:
            conn.send_packed_command(packed, check_health=False)
            created = conn.read_response() is not None
            return created, int(conn.read_response())
        except redis.ResponseError:
            conn.disconnect()  # an error reply (OOM, READONLY) left the PTTL's unread: start afresh
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            conn.disconnect()
            # Once more on a fresh connection, as Redis may have restarted meanwhile; not after a
            # timeout, where a second try would only wait as long again.
            if attempt == 2 or isinstance(exc, redis.TimeoutError | TimeoutError):
                raise
    return False, -2


def _waker(config, url: str) -> tuple[redis.connection.Connection, list[bytes]]:
    """A connection of its own for `_announce`, and its two commands packed once."""
    conn = redis_connection(config, url).connection_pool.make_connection()
    conn.socket_timeout = conn.socket_connect_timeout = WAKE_TIMEOUT
    commands = conn.pack_commands([("SET", WAKE_KEY, "queued", "NX", "PX", WAKE_TTL_MS), ("PTTL", WAKE_KEY)])
    return conn, [b"".join(commands)]


def wake(config) -> bool:
    """Make sure a drain job is queued or a worker is awake, after a commit. Never raises: if
    Redis is down the sweeper catches up."""
    url = redis_url(config)
    started = time.monotonic()
    quiet = (url, config.database)
    if started < _quiet_until.get(quiet, 0.0):
        return True  # the key had not expired: whoever set it sees this commit
    if started < _down_until.get(url, 0.0):
        return False
    try:
        created, ttl_ms = _announce(config, url)
        if created:
            queue(config).enqueue(drain, job_timeout=60, result_ttl=0, failure_ttl=3600)
        if ttl_ms > 0:
            _quiet_until[quiet] = started + ttl_ms / 1000 - QUIET_MARGIN
        return True
    except (redis.RedisError, OSError) as exc:
        with _lock:
            _down_until[url] = time.monotonic() + REDIS_BACKOFF
        log.warning("redis unavailable, deliveries wait for the sweeper: %s", exc)
        return False


def hold_awake(config) -> float:
    """Mark a worker awake, or renew it. Returns the monotonic time by which the key will have
    expired unless renewed: the worker must watch the database until then."""
    pipe = redis_connection(config).pipeline(transaction=False)
    pipe.set(WAKE_KEY, b"awake", px=WAKE_TTL_MS)
    pipe.pttl(WAKE_KEY)
    ttl_ms = pipe.execute()[1]
    # Measured after the answer, so Redis's own expiry cannot be later than this.
    return time.monotonic() + max(ttl_ms, WAKE_TTL_MS) / 1000


def forget_awake(config) -> None:
    """A worker shutting down: commits from processes that have not yet been told the key
    exists queue a job again at once (those that have rely on the sweeper meanwhile)."""
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
