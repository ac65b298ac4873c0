"""Opening a SQLite connection: the file owner-only, WAL, the durability asked for, the pragmas
every wahook connection uses, and waiting for SQLite's lock in short steps.

db.py builds on these (connections per thread, the group commit's shared one, transactions);
nothing here knows about requests, threads or PostgreSQL.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from gateway.storage import private_paths

BUSY_TIMEOUT_MS = 5000
BUSY_FIRST_PAUSE = 0.00005  # seconds; doubled after each busy try
BUSY_MAX_PAUSE = 0.002
WAL_CHECKPOINT_PAGES = 4000  # 16 MB of WAL with 4 KiB pages
WAL_SWITCH_WAIT = 30.0  # seconds a process starting on a new database waits for the others

# storage.synchronous per database path, as FULL or NORMAL; FULL where nobody said otherwise.
_synchronous: dict[str, str] = {}


def create_private(path: str | os.PathLike) -> None:
    """Create the database file readable by its owner only, if it is not there yet: it holds
    endpoint secrets and customers' messages. SQLite gives its -wal and -shm files the same mode."""
    private_paths.private_dir(Path(path).parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


class SQLiteConnection(sqlite3.Connection):
    """A wahook SQLite connection. `polls_for_lock`: its busy_timeout is 0 for good, so `db.begin`
    need not switch it off and on around BEGIN (two statements per transaction saved).
    `memo`: while the group commit runs a batch on it, what the batch's writes read once for
    the whole transaction (see db.transaction_memo); None otherwise."""

    polls_for_lock = False
    memo: dict | None = None


def connect_sqlite(path: str | os.PathLike, shared: bool = False) -> sqlite3.Connection:
    """Open a new SQLite connection with the pragmas every wahook connection uses.

    isolation_level=None leaves transactions to `db.transaction()`, which takes the write
    lock up front (BEGIN IMMEDIATE): a deferred transaction that upgrades later can fail
    with "database is locked" without waiting for busy_timeout. `shared`: threads take turns
    with it (the group commit's connection), so it may be used from any of them.
    """
    if not Path(path).exists():
        create_private(path)
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=not shared,
        factory=SQLiteConnection,
    )
    conn.row_factory = sqlite3.Row
    use_wal(conn)
    # FULL: every commit is on disk before it returns, so a 200 to Meta and a delivery's new
    # state survive power loss. NORMAL in WAL mode survives any crash of our processes but
    # an OS crash or power loss can take back the last commits; it saves an fsync per commit.
    conn.execute(f"PRAGMA synchronous = {_synchronous.get(str(path), 'FULL')}")
    # The group commit's connection only ever runs BEGIN IMMEDIATE ... COMMIT, and BEGIN polls
    # for the lock (see db.begin): it never needs SQLite's busy handler, so it is off for good.
    conn.execute(f"PRAGMA busy_timeout = {0 if shared else BUSY_TIMEOUT_MS}")
    conn.polls_for_lock = shared
    if shared:
        # A multi-row INSERT keeps a copy of every page it changes (its statement journal) and
        # past 64 KiB, a batch of a few webhooks into a full database, SQLite put it in a new
        # temporary file: created, written page by page and deleted once a batch, under the
        # write lock. The batches' statements are bounded (write_together), so memory will do.
        conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA foreign_keys = ON")
    # A webhook's commit appends about 16 pages to the WAL; copying them back into the
    # database every 1,000 pages (the default) made every 60th webhook pay for a
    # checkpoint. Every WAL_CHECKPOINT_PAGES the same hot pages are copied once, not 4 times.
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    return conn


def use_synchronous(path: str | os.PathLike, level: str) -> None:
    """Make every connection to `path` opened from now on use `storage.synchronous` = level."""
    if level not in ("full", "normal"):
        raise ValueError(f"synchronous must be full or normal, not {level!r}")
    _synchronous[str(path)] = level.upper()


def use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting out other processes doing the same.

    On a brand-new file the switch needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, to every process that opens the file while
    another switches it: start-up must wait, not die.
    """
    retry_while_busy(conn, "PRAGMA journal_mode = WAL", WAL_SWITCH_WAIT, 0.001, 0.05)


def retry_while_busy(conn: sqlite3.Connection, statement: str, wait: float, pause: float, max_pause: float) -> None:
    """Run `statement`, trying again while another connection holds the lock, for `wait` seconds
    at most, pausing `pause` at first and doubling up to `max_pause`; then "database is locked"."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, max_pause)
