"""Start and stop a whole wahook installation for a benchmark, the way `make run` does.

A `Stack` owns one folder: its config.toml, database and embedded Redis. The web server is
gunicorn with gunicorn.conf.py (the `make run` settings), and workers are `python worker.py`,
both started with the same environment `make run` gives them. `Memory` samples the resident
memory of every process of the stack while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.api import api_keys
from gateway.config import load_config
from gateway.delivery import embedded_redis, endpoints
from gateway.storage import db

APP_SECRET = "bench-app-secret"
VERIFY_TOKEN = "bench-verify-token"
INTAKE_PATH = "/api/webhooks/whatsapp"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def config_text(database: Path | str, workers: int, retry_schedule: list[int], synchronous: str = "full") -> str:
    return "\n".join(
        [
            "[meta]",
            f'app_secret = "{APP_SECRET}"',
            f'verify_token = "{VERIFY_TOKEN}"',
            "[storage]",
            f"database = {json.dumps(str(database))}",
            f"synchronous = {json.dumps(synchronous)}",
            "[delivery]",
            "allow_http = true",
            "allow_private_urls = true",
            f"workers = {workers}",
            f"retry_schedule = {json.dumps(retry_schedule)}",
            "",
        ]
    )


class Stack:
    """One wahook installation in `folder`: config, database, Redis, web server, workers."""

    def __init__(
        self,
        folder: Path,
        *,
        workers: int = 1,
        retry_schedule: list[int] | None = None,
        root: Path = ROOT,
        synchronous: str = "full",
        database: str | None = None,
    ) -> None:
        """`database`: a PostgreSQL URL to use instead of a SQLite file in the folder."""
        self.root = root  # the wahook checkout to run (another one can be compared against this one)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data = folder / "data"
        self.config_path = folder / "config.toml"
        self.config_path.write_text(
            config_text(database or self.data / "wahook.db", workers, retry_schedule or [10, 10, 10], synchronous)
        )
        self.config = load_config(self.config_path)
        self.workers = workers
        self.web: subprocess.Popen | None = None
        self.worker_processes: list[subprocess.Popen] = []
        self.base = ""
        self._reader = None
        self.env = {
            **os.environ,
            "WAHOOK_CONFIG": str(self.config_path),
            "PYTHONUNBUFFERED": "1",
            "WAHOOK_LOG_LEVEL": "warning",
        }

    # -- pieces

    def start_redis(self) -> None:
        embedded_redis.ensure_running(self.data)

    def add_endpoint(self, url: str) -> int:
        """Create the database (if new) and one endpoint; returns its id."""
        conn = db.connect(self.config.database)
        try:
            db.migrate(conn)
            return endpoints.create(conn, self.config, url)["id"]
        finally:
            conn.close()

    def add_api_key(self, scopes: str = "publish,read") -> str:
        """Create the database (if new) and an API key; returns the full key."""
        conn = db.connect(self.config.database)
        try:
            db.migrate(conn)
            return api_keys.create(conn, "bench", scopes)[1]
        finally:
            conn.close()

    def adopt_database(self, template: Path) -> None:
        """Start from a copy of a prepared database (its -wal folded in first)."""
        self.data.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, self.config.database_path)

    def start_web(self, app: str = "app:app") -> str:
        """gunicorn as `make run` starts it; `app` may name another WSGI app (the bare baseline)."""
        port = free_port()
        log = open(self.folder / "gunicorn.log", "ab")  # noqa: SIM115 - closed with the process
        command = [sys.executable, "-m", "gunicorn", app, "-c", str(self.root / "gunicorn.conf.py")]
        env = {**self.env, "WAHOOK_BIND": f"127.0.0.1:{port}"}
        self.web = subprocess.Popen(command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            if self.web.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.folder / 'gunicorn.log'}")
            try:
                return requests.get(self.base + INTAKE_PATH, timeout=1).status_code in (200, 400)
            except requests.RequestException:
                return False

        wait_until(answers, 30, "gunicorn to answer")
        # Wait for every web worker to have booted, not just the first.
        wanted = int(self.env.get("WAHOOK_WEB_WORKERS") or 2)
        wait_until(lambda: len(psutil.Process(self.web.pid).children()) >= wanted, 30, "web workers")
        return self.base

    def start_workers(self, count: int | None = None) -> None:
        for n in range(count or self.workers):
            log = open(self.folder / f"worker-{n}.log", "ab")  # noqa: SIM115
            self.worker_processes.append(
                subprocess.Popen(
                    [sys.executable, str(self.root / "worker.py")],
                    cwd=self.root,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def stop_workers(self) -> None:
        _stop(self.worker_processes)
        self.worker_processes = []

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.stop_workers()
        if self.web is not None:
            _stop([self.web])
            self.web = None
        embedded_redis.stop(self.data)

    def processes(self) -> dict[str, list[int]]:
        """Process ids by role, for memory sampling."""
        roles: dict[str, list[int]] = {"web master": [], "web worker": [], "delivery worker": [], "redis": []}
        if self.web is not None and self.web.poll() is None:
            roles["web master"].append(self.web.pid)
            with contextlib.suppress(psutil.Error):
                roles["web worker"] += [c.pid for c in psutil.Process(self.web.pid).children()]
        roles["delivery worker"] += [p.pid for p in self.worker_processes if p.poll() is None]
        with contextlib.suppress(OSError, ValueError):
            roles["redis"].append(int((self.data / "redis.pid").read_text().strip()))
        return roles

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the stack's web, worker and Redis processes."""
        total = 0.0
        for pids in self.processes().values():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(pid).cpu_times()
                    total += times.user + times.system
        return total

    # -- state

    def stored(self) -> int:
        """How many Meta webhooks the database holds (max id: cheap to ask while under load)."""
        if self._reader is None and self.config.database_url:
            self._reader = db.connect(self.config.database_url)
        if self._reader is None:
            self._reader = sqlite3.connect(f"file:{self.config.database_path}?mode=ro", uri=True, timeout=10)
        return self._reader.execute("SELECT coalesce(max(id), 0) FROM webhooks").fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Rows by delivery state, read straight from the database."""
        conn = db.connect(self.config.database_url) if self.config.database_url else None
        conn = conn or sqlite3.connect(self.config.database_path, timeout=10)
        try:
            rows = conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
            found = dict(rows)
            found["events"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            return found
        finally:
            conn.close()


def _stop(processes: list[subprocess.Popen], grace: float = 15.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Memory:
    """Samples the resident memory of a stack's processes every 0.1 s; keeps each role's peak."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak: dict[str, int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Memory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()

    def run(self) -> None:
        handles: dict[int, psutil.Process] = {}
        while not self.stopping.is_set():
            for role, pids in self.stack.processes().items():
                for pid in pids:
                    try:
                        process = handles.get(pid) or handles.setdefault(pid, psutil.Process(pid))
                        rss = process.memory_info().rss
                    except psutil.Error:
                        continue
                    self.peak[role] = max(self.peak.get(role, 0), rss)
            self.stopping.wait(0.1)
