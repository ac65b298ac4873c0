"""gunicorn settings for the web process; `gunicorn app:app` reads this file by itself
when started from this folder (`make run` passes it with -c).

Environment: WAHOOK_BIND (default 127.0.0.1:8000), WAHOOK_WEB_WORKERS (default 2),
WAHOOK_WEB_THREADS (requests each web process serves at once, default 64; open streams use all
but 8), WAHOOK_WEB_WORKER_CLASS (gevent or gthread; by default gevent on SQLite, gthread on PostgreSQL),
WAHOOK_ACCESS_LOG=1 to log every request, WAHOOK_LOG_LEVEL (default info),
WAHOOK_LOG_FORMAT=json for JSON lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.ops import logs
from gateway.storage import private_paths

wsgi_app = "app:app"

# What the web processes write (media files, keys, a new database) is owner-only, whatever the
# umask gunicorn was started with (see private_paths.py).
private_paths.tighten_umask()
bind = [os.environ.get("WAHOOK_BIND") or "127.0.0.1:8000"]

# gevent workers on SQLite: each request is a greenlet, not a thread. Intake requests are short
# (check a signature, one SQLite commit) and the slow part, delivery, happens in worker.py. Threads
# made them slow: a webhook's group commit hands its write from thread to thread, and every
# hand-over is a fight for Python's lock, which cost more than the writing itself; greenlets hand
# over in the same thread, and the intake takes about a quarter less CPU (docs/benchmarks.md).
# On PostgreSQL there is no group commit to hand over to, and waiting for the server through
# gevent's loop costs more CPU per round trip than psycopg's own wait: threads (gthread) there.
# WAHOOK_WEB_WORKER_CLASS (gevent or gthread) overrides either.
#
# An event stream (GET /api/v1/stream) stays open for hours: it holds one request slot, and each
# process serves at most `threads - stream.RESERVED_THREADS` streams, so the reserved slots always
# take Meta's POSTs (see stream.py and docs/api.md, "Streams and intake"). `threads`
# (WAHOOK_WEB_THREADS) is how many requests a process serves at once, a thread or a greenlet each
# (intake/wsgi.py); up to worker_connections clients, idle kept-alive ones included, wait their
# turn. Two processes match the 2-core box wahook targets; more mostly queue up behind SQLite's
# single writer.


def default_worker_class() -> str:
    """gevent for a SQLite database, gthread for PostgreSQL (see above), as the config file named
    by WAHOOK_CONFIG in gunicorn's environment says (one given with `gunicorn -e` is read too late
    for this: set WAHOOK_WEB_WORKER_CLASS with it)."""
    from gateway.config import ConfigError, load_config

    try:
        return "gthread" if load_config().database_url else "gevent"
    except ConfigError:
        return "gevent"  # on_starting names the problem and stops


workers = int(os.environ.get("WAHOOK_WEB_WORKERS") or 2)
# "gevent" is gunicorn's gevent worker with new connections shared evenly between the processes
# (gateway/web_worker.py).
worker_class = os.environ.get("WAHOOK_WEB_WORKER_CLASS") or default_worker_class()
if worker_class == "gevent":
    worker_class = "gateway.web_worker.GeventWorker"
threads = int(os.environ.get("WAHOOK_WEB_THREADS") or 64)
worker_connections = 1000

# The app is built in each worker after the fork (not preloaded), so no SQLite
# connection or Redis socket is ever shared between processes.
preload_app = False

# A worker whose main loop has not checked in for this long is stuck and is replaced. Its
# main loop runs beside the requests, so a long stream does not count.
timeout = 30
# Time in-flight requests get to finish on shutdown or reload (streams end at once).
graceful_timeout = 10
# Meta and reverse proxies reuse connections; a short keep-alive saves a TCP handshake.
# (An idle kept-alive connection takes no request slot, with gevent or gthread.)
keepalive = 5

# Errors to stderr (the terminal, or the journal under systemd). No access log by
# default: writing a line per webhook costs throughput, and the monitor page and the
# database already record every webhook.
errorlog = "-"
accesslog = "-" if os.environ.get("WAHOOK_ACCESS_LOG") in ("1", "true", "yes") else None
loglevel = os.environ.get("WAHOOK_LOG_LEVEL") or "info"
# WAHOOK_LOG_FORMAT=json: one JSON object per line from gunicorn and the app (see logs.py).
logconfig_dict = logs.gunicorn_logconfig()
# Tokens in request lines (media links, hub.verify_token, ?token=) are masked in every line.
logger_class = logs.MaskingGunicornLogger

# gunicorn's runtime control socket defaults to one shared path in $HOME; two instances
# on one machine (or a test run next to a live one) would fight over it. Signals suffice.
control_socket_disable = True

# Heartbeat files in memory: on a busy or slow disk, a worker blocked writing its
# heartbeat would be taken for a hung one and killed.
if os.path.isdir("/dev/shm"):  # noqa: S108 - gunicorn's documented choice; it makes its own files
    worker_tmp_dir = "/dev/shm"  # noqa: S108


def on_starting(server) -> None:
    """Check the configuration once in the master, before any worker starts: a bad file
    then stops gunicorn with one line naming the key, instead of workers failing in a loop."""
    from gateway.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        sys.exit(f"wahook: configuration error: {exc}")
    if config.database_url:  # likewise a PostgreSQL that cannot be reached, or a wrong password
        check_postgres()


def check_postgres() -> None:
    """Connect once, in a child process: psycopg picks how it waits for the server when it is
    first imported, and a master that imported it before the workers patch for gevent would
    hand them a wait that holds up every other request of the process."""
    root = str(Path(logs.__file__).resolve().parents[2])  # the folder that holds gateway/
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    found = subprocess.run([sys.executable, "-c", POSTGRES_CHECK], env=env, capture_output=True, text=True, check=False)
    if found.returncode != 0:
        sys.exit(f"wahook: {found.stderr.strip() or 'PostgreSQL could not be checked'}")


POSTGRES_CHECK = """
import sys
from gateway.config import load_config
from gateway.storage import pg
try:
    pg.connect(load_config().database_url).close()
except pg.StorageError as exc:
    sys.exit(str(exc))
"""


def post_worker_init(worker) -> None:
    """Size this process's request and stream slots to `threads`, and let streams end when it stops."""
    from gateway.api import stream
    from gateway.intake import wsgi

    wsgi.configure(worker.cfg.threads)
    stream.configure(worker.cfg.threads, lambda: worker.alive)


def balancing(worker):
    """gateway.web_worker when `worker` is its gevent worker (gunicorn loaded the module for it),
    else None: other workers, gthread on PostgreSQL, keep no connection slots."""
    return sys.modules["gateway.web_worker"] if type(worker).__module__ == "gateway.web_worker" else None


def pre_fork(server, worker) -> None:
    """A gevent process about to be forked gets a slot where it counts its open connections."""
    if slots := balancing(worker):
        slots.pre_fork(worker)


def child_exit(server, worker) -> None:
    if slots := balancing(worker):
        slots.gone(worker)


def worker_exit(server, worker) -> None:
    """Say goodbye (1001) on every open WebSocket, so clients reconnect at once. (gunicorn also
    calls this in the master for a process it found already gone: then only its slot is freed.)"""
    if os.getpid() == server.pid:
        child_exit(server, worker)
        return
    from gateway.api import ws_hub

    ws_hub.stop()
