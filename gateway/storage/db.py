"""Database access: one reused connection per thread (or request, task_local.py), explicit transactions, and migrations.

`storage.database` is a SQLite file (the default) or a PostgreSQL URL. Everything above
this module writes SQLite's SQL and calls `connection`, `transaction` and `Error` here;
pg.py translates for PostgreSQL in one place. The few questions whose SQL cannot be
shared (the database's change counter, JSON paths) are functions here with one answer
per engine.

Migrations are the numbered files in migrations/ (0001 is the schema as it first shipped;
one file per engine where PostgreSQL's text differs). Each is applied in one transaction
together with the version (`PRAGMA user_version`, or the `wahook_schema` table on
PostgreSQL), so a crash half way leaves the old version, never a mix. Every process
migrates at start. schema.sql is the whole current schema in one readable file.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import psycopg
from flask import Flask, current_app
from flask.cli import with_appcontext

from gateway.config import POSTGRES_SCHEMES
from gateway.storage import pg, task_local
from gateway.storage.pg import StorageError
from gateway.storage.sqlite_open import (
    BUSY_FIRST_PAUSE,
    BUSY_MAX_PAUSE,
    BUSY_TIMEOUT_MS,
    connect_sqlite,
    retry_while_busy,
)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# NNNN_what.sql, and NNNN_what.postgresql.sql beside it where PostgreSQL's text differs.
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+(\.postgresql)?\.sql$")

# Event names with a series of their own in /metrics, as migration 13's trigger holds it (written
# out there, with wahook's own prefixes, names.RESERVED_PREFIXES): past it, names an API client
# publishes are counted together as "other" (metrics.py).
EVENT_SERIES_MAX = 200
MIGRATION_WAIT_MS = 600_000

# What a failed statement raises on either engine, and what callers answer 503 for.
Error = (sqlite3.Error, psycopg.Error, StorageError)
Connection = sqlite3.Connection | pg.Connection
Row = sqlite3.Row | pg.Row

_shared: dict[str, sqlite3.Connection] = {}  # see shared_connection
_shared_pid: dict[str, int] = {}  # the process each was opened in: a forked child opens its own
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def is_postgres(database: str | os.PathLike) -> bool:
    return str(database).startswith(POSTGRES_SCHEMES)


def engine(conn: Connection) -> str:
    """The engine's name, "postgresql" or "sqlite", for the few places whose SQL differs."""
    return getattr(conn, "engine", "sqlite")


def connect(database: str | os.PathLike) -> Connection:
    """Open a new connection: PostgreSQL for a URL, else SQLite (see connect_sqlite)."""
    if is_postgres(database):
        return pg.connect(str(database))
    return connect_sqlite(database)


def transaction_memo(conn: Connection) -> dict | None:
    """A dict that lives as long as the transaction `conn` is in, when that transaction holds a
    group commit's batch (groupcommit.py): the batch holds SQLite's write lock throughout, so
    nothing another connection writes can change what was read into it. None elsewhere."""
    return getattr(conn, "memo", None)


def connection(database: str | os.PathLike) -> Connection:
    """This task's connection to `database` (its thread's, or its request's under the gevent
    workers: task_local.py), opened and migrated on first use.

    Reused across requests and jobs: opening a connection and setting its pragmas on
    every request costs more than the request's own work. A forked child opens its own,
    and a PostgreSQL connection the server dropped is replaced on the next call.
    """
    key = str(database)
    conn = _conns.get(key, lambda: _connect_as(key))
    if not getattr(conn, "usable", True):
        _close_quietly(conn)
        _conns.forget(key)
        conn = _conns.get(key, lambda: _connect_as(key))
    if key not in _migrated:
        with _migrate_lock:
            if key not in _migrated:
                migrate(conn)
                _migrated.add(key)
    return conn


def _connect_as(key: str) -> Connection:
    """A new connection to the database `key` names, which remembers that name (read_aside)."""
    conn = connect(key)
    conn.database_key = key
    return conn


def read_aside(conn: Connection, sql: str, params: tuple = ()) -> list[Row]:
    """`conn.execute(sql, params).fetchall()`, for a read that can take long (a summary over a
    day of attempts). Under the gevent workers a greenlet inside SQLite holds up every other
    request of its process, Meta's POSTs included; so there the read runs in a thread of
    gevent's pool, on that thread's own connection to the same database (task_local.in_thread),
    while the process goes on. Elsewhere, and on PostgreSQL (whose waits let others run), on `conn`."""
    key = getattr(conn, "database_key", None)
    if key is None or engine(conn) != "sqlite" or not task_local.greenlet_workers():
        return conn.execute(sql, params).fetchall()
    return task_local.in_thread(lambda: connection(key).execute(sql, params).fetchall())


def _close_quietly(conn: Connection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _reusable(conn: Connection) -> bool:
    """Whether a finished request's connection may serve the next: not inside a transaction
    (one left open by a request that failed half way), and not dropped by the server."""
    try:
        return getattr(conn, "usable", True) and not conn.in_transaction
    except Exception:
        return False


# Each task's connections by database (see connection); idle ones wait here between requests.
_conns = task_local.TaskLocal(_reusable, _close_quietly)


def shared_connection(path: str | os.PathLike) -> sqlite3.Connection:
    """This process's one connection to the SQLite file `path` that threads take turns with: the
    group commit (groupcommit.py) runs every batch on it, whichever thread leads, as a
    connection's page cache outlives only its own writes."""
    key = str(path)
    conn = _shared.get(key)
    if conn is None or _shared_pid.get(key) != os.getpid():
        conn = _shared[key] = connect_sqlite(path, shared=True)
        _shared_pid[key] = os.getpid()
    return conn


def close_all() -> None:
    """Close this task's connections, the idle ones and the process's shared ones (tests and shutdown)."""
    _conns.close_all()
    for conn in _shared.values():
        _close_quietly(conn)
    _shared.clear()


def begin(conn: Connection, wait_ms: int | None = None) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in steps of a fraction of a millisecond.

    SQLite's own busy handler sleeps 1 ms, then 2, 5, 10...: several times what a
    transaction here holds the lock for, so two web processes that collide would both sit
    idle. So the first try does not wait, and then we poll, briefly at first, for at most
    as long as busy_timeout would have waited (or `wait_ms`). PostgreSQL locks rows, not the
    database: a plain BEGIN, and each statement waits for the rows it needs.
    """
    if engine(conn) == "postgresql":
        conn.execute("BEGIN")
        return
    wait = (wait_ms or BUSY_TIMEOUT_MS) / 1000
    if getattr(conn, "polls_for_lock", False):
        retry_while_busy(conn, "BEGIN IMMEDIATE", wait, BUSY_FIRST_PAUSE, BUSY_MAX_PAUSE)
        return
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        retry_while_busy(conn, "BEGIN IMMEDIATE", wait, BUSY_FIRST_PAUSE, BUSY_MAX_PAUSE)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _new_write_lock() -> None:
    global _write_lock
    _write_lock = threading.RLock()


# The threads (or greenlets) of one process queue here for the write lock, in order
# and without waking, instead of all polling SQLite's lock; only the one holding this polls
# against other processes. Reentrant, so a transaction opened inside another on a second
# connection still reaches SQLite and fails there as before rather than hanging here.
_write_lock = threading.RLock()
os.register_at_fork(after_in_child=_new_write_lock)


@contextmanager
def transaction(conn: Connection, wait_ms: int | None = None) -> Iterator[Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the block raises. Waits for the write lock
    `wait_ms` (default busy_timeout) in all, however many threads of this process are ahead.

    On PostgreSQL, threads do not queue on the process's write lock: rows are locked, not
    the database, so transactions that touch different rows go on side by side.
    """
    wait = (wait_ms or BUSY_TIMEOUT_MS) / 1000
    ends = time.monotonic() + wait
    queue = engine(conn) == "sqlite"
    if queue and not _write_lock.acquire(timeout=wait):
        raise sqlite3.OperationalError("database is locked")
    try:
        # The time spent in line counts: a thread that queued behind one polling a lock held by
        # another process must not then poll for a whole busy timeout of its own (a POST held
        # twice as long as the others, answered after its sender may have given up).
        begin(conn, max(1, int((ends - time.monotonic()) * 1000)))
        try:
            yield conn
        except BaseException:
            rollback(conn)
            raise
        conn.execute("COMMIT")
    finally:
        if queue:
            _write_lock.release()


def rollback(conn: Connection) -> None:
    """End an open transaction; a connection that is gone has nothing left to end."""
    with contextlib.suppress(*Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


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


def migrations(engine_name: str = "sqlite") -> list[tuple[int, str]]:
    """(version, SQL) of every migration in migrations/ as `engine_name` runs it, by number:
    a version skipped or given twice would leave databases apart, so either refuses to start."""
    found: dict[int, dict[bool, str]] = {}
    for path in MIGRATIONS_DIR.iterdir():
        match = _MIGRATION_FILE.match(path.name)
        if match:
            own = found.setdefault(int(match[1]), {})
            if bool(match[2]) in own:
                raise RuntimeError(f"two migrations numbered {match[1]} in {MIGRATIONS_DIR}")
            own[bool(match[2])] = path.read_text(encoding="utf-8")
    if sorted(found) != list(range(1, len(found) + 1)) or not all(False in texts for texts in found.values()):
        raise RuntimeError(f"{MIGRATIONS_DIR}: migrations must be numbered 1, 2, 3... each with its .sql")
    postgres = engine_name == "postgresql"
    return [(number, texts.get(postgres, texts[False])) for number, texts in sorted(found.items())]


def migrate(conn: Connection, steps: list[tuple[int, str]] | None = None) -> int:
    """Bring the database to the newest version (or to the last of `steps`); return that
    version. Safe to repeat."""
    steps = sorted(migrations(engine(conn)) if steps is None else steps, key=lambda step: step[0])
    if engine(conn) == "postgresql":
        return pg.migrate(conn, steps)
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if not steps or current >= steps[-1][0]:
        # Up to date: no write lock needed, so a process starting while another program holds
        # the lock (a backup, the sqlite3 shell) is not held for MIGRATION_WAIT_MS.
        return current
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


def data_version(conn: Connection) -> int:
    """A number that changes when another connection commits (workers poll it to wake)."""
    if engine(conn) == "postgresql":
        return pg.data_version(conn)
    return conn.execute("PRAGMA data_version").fetchone()[0]


class CommitWatch:
    """Tells whether another connection committed since the last look (workers and streams
    poll it to wake): `data_version` of a connection of its own, no table read."""

    def __init__(self, conn: Connection, *, seen: bool = True) -> None:
        """seen=False: the first look reports a change, whatever happened before."""
        self.conn = conn
        self.version = data_version(conn) if seen else None

    def changed(self) -> bool:
        now = data_version(self.conn)
        if now != self.version:
            self.version = now
            return True
        return False


def tables(conn: Connection) -> list[str]:
    """wahook's tables, oldest first (parents before the tables that refer to them)."""
    if engine(conn) == "postgresql":
        sql = (
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace"
            " AND relname <> 'wahook_schema' ORDER BY oid"
        )
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
    return [row[0] for row in conn.execute(sql)]


def json_values(conn: Connection, column: str, paths: list[str]) -> str:
    """SQL for a JSON array text of the values at these dotted paths of a JSON text column
    (NULL on SQLite when the text is not JSON; wahook only stores JSON there)."""
    if engine(conn) == "postgresql":
        return pg.json_values(column, paths)
    listed = ", ".join(f"'$.{p}'" for p in paths)
    return f"CASE WHEN json_valid({column}) THEN json_extract({column}, {listed}) END"


def row_id(text: str) -> int:
    """A row id given from outside (a page cursor): ValueError unless it is 1 to 2**63 - 1,
    so a huge one is refused rather than overflowing SQLite's integer."""
    value = int(text)
    if not 0 < value < 2**63:
        raise ValueError(f"not a row id: {text!r}")
    return value


def get_db() -> Connection:
    """The current app's database connection for this thread."""
    return connection(current_app.config["WAHOOK"].database)


def _end_request(exc: BaseException | None) -> None:
    # The connection stays open for the next request; a transaction must not.
    conn = _conns.values().get(str(current_app.config["WAHOOK"].database))
    if conn is not None:
        rollback(conn)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database and apply every pending migration."""
    config = current_app.config["WAHOOK"]
    version = migrate(connection(config.database))
    shown = pg.redacted(config.database_url) if config.database_url else config.database_path
    click.echo(f"database {shown} at schema version {version}")


def init_app(app: Flask) -> None:
    app.teardown_appcontext(_end_request)
    app.cli.add_command(init_db_command)
