"""SQLite access: one reused connection per thread, explicit transactions, and migrations.

`schema.sql` is version 1. Each later change is appended to `MIGRATIONS` with the next
number and is applied in one transaction together with `PRAGMA user_version`, so a crash
half way leaves the old version, never a mix. Every process migrates at start.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

SCHEMA_PATH = Path(__file__).with_name("schema.sql")

# (version, SQL). Append only; never edit a migration that has shipped.
MIGRATIONS: list[tuple[int, str]] = [
    (
        2,
        """
-- Each lane claims its own endpoint's due deliveries, oldest first, and the worker asks
-- which endpoints have any: both are one index look-up with this index, however many
-- deliveries other endpoints have waiting. It replaces the index on next_attempt_at alone,
-- with which a dead endpoint's backlog had to be read past to find anyone else's.
CREATE INDEX IF NOT EXISTS deliveries_lane ON deliveries (endpoint_id, next_attempt_at)
    WHERE state IN ('pending', 'retrying');
DROP INDEX IF EXISTS deliveries_due;
""",
    ),
    (
        3,
        """
-- The monitor's last attempt and failure streak per endpoint: without this they walk back
-- through every endpoint's attempts, which is slow for one that has been quiet for long.
CREATE INDEX IF NOT EXISTS attempts_endpoint ON attempts (endpoint_id, id);
""",
    ),
    (
        6,
        """
-- Customers per business phone number, for contact.created / contact.updated (contacts.py).
-- Found by wa_id (their phone), else by user_id (the business-scoped id of a customer who
-- hides the phone behind a username). seen_ts is the newest message's own time: an older
-- message arriving late never renames anyone.
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY,
    phone_number_id TEXT NOT NULL,
    wa_id TEXT,
    user_id TEXT,
    name TEXT,
    seen_ts REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS contacts_wa_id ON contacts (phone_number_id, wa_id);
CREATE INDEX IF NOT EXISTS contacts_user_id ON contacts (phone_number_id, user_id);
""",
    ),
]

BUSY_TIMEOUT_MS = 5000
BUSY_FIRST_PAUSE = 0.00005  # seconds; doubled after each busy try
BUSY_MAX_PAUSE = 0.002
WAL_CHECKPOINT_PAGES = 4000  # 16 MB of WAL with 4 KiB pages

_local = threading.local()
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """Open a new connection with the pragmas every wahook connection uses.

    isolation_level=None leaves transactions to `transaction()`, which takes the write
    lock up front (BEGIN IMMEDIATE): a deferred transaction that upgrades later can fail
    with "database is locked" without waiting for busy_timeout.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode: a commit survives any crash of our processes; only an OS crash
    # or power loss can take back the last moments. FULL costs an fsync per webhook.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # A webhook's commit appends about 16 pages to the WAL; copying them back into the
    # database every 1,000 pages (the default) made every 60th webhook pay for a
    # checkpoint. Every WAL_CHECKPOINT_PAGES the same hot pages are copied once, not 4 times.
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    return conn


def connection(path: str | os.PathLike) -> sqlite3.Connection:
    """This thread's connection to `path`, opened and migrated on first use.

    Reused across requests and jobs: opening a connection and setting its pragmas on
    every request costs more than the request's own work. A forked child opens its own.
    """
    key = str(path)
    cache = getattr(_local, "conns", None)
    if cache is None or getattr(_local, "pid", None) != os.getpid():
        cache = _local.conns = {}
        _local.pid = os.getpid()
    conn = cache.get(key)
    if conn is None:
        conn = cache[key] = connect(path)
        with _migrate_lock:
            if key not in _migrated:
                migrate(conn)
                _migrated.add(key)
    return conn


def close_all() -> None:
    """Close this thread's connections (tests and shutdown)."""
    for conn in getattr(_local, "conns", {}).values():
        conn.close()
    _local.conns = {}


def begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in steps of a fraction of a millisecond.

    SQLite's own busy handler sleeps 1 ms, then 2, 5, 10...: several times what a
    transaction here holds the lock for, so two web processes that collide would both sit
    idle. So the first try does not wait, and then we poll, briefly at first, for at most
    as long as busy_timeout would have waited.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = None
        pause = BUSY_FIRST_PAUSE
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
            now = time.monotonic()
            deadline = deadline or now + BUSY_TIMEOUT_MS / 1000
            if now >= deadline:
                raise sqlite3.OperationalError("database is locked")
            time.sleep(pause)
            pause = min(pause * 2, BUSY_MAX_PAUSE)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the block raises."""
    begin(conn)
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def statements(script: str) -> Iterator[str]:
    """Split an SQL script into statements (executescript would commit our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""
    if buffer.strip() and not buffer.strip().startswith("--"):
        yield buffer


def migrate(conn: sqlite3.Connection, migrations: list[tuple[int, str]] | None = None) -> int:
    """Bring the database to the newest version; return that version. Safe to repeat."""
    steps = [(1, SCHEMA_PATH.read_text(encoding="utf-8"))] + (MIGRATIONS if migrations is None else migrations)
    for version, script in steps:
        with transaction(conn):
            # Read inside the write lock: another process may have migrated meanwhile.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= version:
                continue
            for statement in statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(version)}")
    return conn.execute("PRAGMA user_version").fetchone()[0]


def get_db() -> sqlite3.Connection:
    """The current app's database connection for this thread."""
    return connection(current_app.config["WAHOOK"].database_path)


def _end_request(exc: BaseException | None) -> None:
    # The connection stays open for the next request; a transaction must not.
    conns = getattr(_local, "conns", {})
    conn = conns.get(str(current_app.config["WAHOOK"].database_path))
    if conn is not None and conn.in_transaction:
        conn.execute("ROLLBACK")


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database and apply every pending migration."""
    path = current_app.config["WAHOOK"].database_path
    version = migrate(connection(path))
    click.echo(f"database {path} at schema version {version}")


def init_app(app: Flask) -> None:
    app.teardown_appcontext(_end_request)
    app.cli.add_command(init_db_command)
