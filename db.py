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
        4,
        """
-- Endpoint ids are never reused, so a new endpoint never inherits a deleted one's attempts.
-- INTEGER PRIMARY KEY hands out max(id) + 1, which is a deleted endpoint's id again; the
-- table cannot become AUTOINCREMENT without being rebuilt, and rebuilding it (DROP TABLE)
-- would null every delivery's endpoint through ON DELETE SET NULL. So the highest id ever
-- used is kept here, seeded from every place an old id survives.
CREATE TABLE IF NOT EXISTS endpoint_ids (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO endpoint_ids (one, last) VALUES (1, max(
    (SELECT coalesce(max(id), 0) FROM endpoints),
    (SELECT coalesce(max(endpoint_id), 0) FROM deliveries),
    (SELECT coalesce(max(endpoint_id), 0) FROM attempts)
));
-- An endpoint inserted with an explicit id (a restored backup, a script) raises the mark too.
CREATE TRIGGER IF NOT EXISTS endpoint_ids_seen AFTER INSERT ON endpoints BEGIN
    UPDATE endpoint_ids SET last = max(last, NEW.id);
END;

-- A failed delivery of a deleted endpoint can never be sent again; the admin dismisses it.
-- It then leaves the monitor's counts but keeps its row and attempts (the history).
ALTER TABLE deliveries ADD COLUMN dismissed_at REAL;

-- The event log's search. The customer (a phone number, or a business-scoped user id) and
-- the WhatsApp message id are read out of the event's JSON by generated columns: nothing at
-- intake has to fill them, old rows have them at once, and the indexes hold the values.
ALTER TABLE events ADD COLUMN customer TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(body) THEN coalesce(
        nullif(json_extract(body, '$.recipient'), ''),
        CASE WHEN name = 'message.echo' THEN nullif(json_extract(body, '$.to'), '') END,
        nullif(json_extract(body, '$.from'), ''),
        nullif(json_extract(body, '$.wa_id'), ''),
        nullif(json_extract(body, '$.user_phone'), '')
    ) END
) VIRTUAL;
ALTER TABLE events ADD COLUMN customer_user_id TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(body) THEN coalesce(
        nullif(json_extract(body, '$.recipient_user_id'), ''),
        CASE WHEN name = 'message.echo' THEN nullif(json_extract(body, '$.to_user_id'), '') END,
        nullif(json_extract(body, '$.from_user_id'), ''),
        nullif(json_extract(body, '$.user_id'), '')
    ) END
) VIRTUAL;
ALTER TABLE events ADD COLUMN message_id TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(body) THEN nullif(json_extract(body, '$.message_id'), '') END
) VIRTUAL;
-- Each search walks one index newest webhook first and stops after a page.
CREATE INDEX IF NOT EXISTS events_customer ON events (customer, webhook_id) WHERE customer IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_customer_user ON events (customer_user_id, webhook_id)
    WHERE customer_user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_message ON events (message_id, webhook_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_name ON events (name, webhook_id);
CREATE INDEX IF NOT EXISTS deliveries_state_webhook ON deliveries (state, webhook_id);
""",
    ),
]

BUSY_TIMEOUT_MS = 5000
MIGRATION_WAIT_MS = 600_000
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


def begin(conn: sqlite3.Connection, wait_ms: int | None = None) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in steps of a fraction of a millisecond.

    SQLite's own busy handler sleeps 1 ms, then 2, 5, 10...: several times what a
    transaction here holds the lock for, so two web processes that collide would both sit
    idle. So the first try does not wait, and then we poll, briefly at first, for at most
    as long as busy_timeout would have waited (or `wait_ms`).
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
            deadline = deadline or now + (wait_ms or BUSY_TIMEOUT_MS) / 1000
            if now >= deadline:
                raise sqlite3.OperationalError("database is locked")
            time.sleep(pause)
            pause = min(pause * 2, BUSY_MAX_PAUSE)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


@contextmanager
def transaction(conn: sqlite3.Connection, wait_ms: int | None = None) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the block raises."""
    begin(conn, wait_ms)
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
        # Processes started together all migrate; the first may hold the lock for a while (migration
        # 4 builds its indexes in about 10 s per million stored webhooks), so the others wait it out.
        with transaction(conn, MIGRATION_WAIT_MS):
            # Read inside the write lock: another process may have migrated meanwhile.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= version:
                continue
            for statement in statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(version)}")
    return conn.execute("PRAGMA user_version").fetchone()[0]


def row_id(text: str) -> int:
    """A row id given from outside (a page cursor): ValueError unless it is 1 to 2**63 - 1,
    so a huge one is refused rather than overflowing SQLite's integer."""
    value = int(text)
    if not 0 < value < 2**63:
        raise ValueError(f"not a row id: {text!r}")
    return value


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
