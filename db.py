"""Database access: one reused connection per thread, explicit transactions, and migrations.

`storage.database` is a SQLite file (the default) or a PostgreSQL URL. Everything above
this module writes SQLite's SQL and calls `connection`, `transaction` and `Error` here;
pg.py translates for PostgreSQL in one place. The few questions whose SQL cannot be
shared (the database's change counter, JSON paths) are functions here with one answer
per engine.

`schema.sql` is version 1. Each later change is appended to `MIGRATIONS` with the next
number and is applied in one transaction together with the version (`PRAGMA user_version`,
or the `wahook_schema` table on PostgreSQL), so a crash half way leaves the old version,
never a mix. Every process migrates at start.
"""

from __future__ import annotations

import contextlib
import os
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

import pg
from config import POSTGRES_SCHEMES
from pg import StorageError

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
    (
        5,
        """
-- Secret rotation: the secret a rotation replaced keeps signing alongside the new one until
-- previous_secret_until, so receivers can switch without losing a delivery.
ALTER TABLE endpoints ADD COLUMN previous_secret TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN previous_secret_until REAL;
-- An endpoint's failing streak (see outages.py): when its attempts started failing (NULL while
-- it is healthy), when it is next probed and the probe interval, and until when deliveries of
-- the outage are being redelivered to it after it came back.
ALTER TABLE endpoints ADD COLUMN failing_since REAL;
ALTER TABLE endpoints ADD COLUMN next_probe_at REAL;
ALTER TABLE endpoints ADD COLUMN probe_interval REAL;
ALTER TABLE endpoints ADD COLUMN recovering_until REAL;
-- Retry cycles a delivery was given by hand (delivery.failed is sent once per cycle), and how
-- often automatic recovery redelivered it in this cycle (a few times at most: an event the
-- receiver refuses must not be sent again after every outage).
ALTER TABLE deliveries ADD COLUMN cycle INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN auto_redelivered INTEGER NOT NULL DEFAULT 0;
-- The oldest failed deliveries of an endpoint, for its probe and its recovery.
CREATE INDEX IF NOT EXISTS deliveries_failed ON deliveries (endpoint_id, id) WHERE state = 'failed';
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
    (
        7,
        """
-- Keys for the publish, pull and stream API. Only a SHA-256 of the key is kept; `prefix`
-- (its random first part, not secret) finds the row, so the hash is compared in constant time.
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,                     -- comma separated: publish, read
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);

-- Idempotency-Key of a publish -> the answer it got, per API key, for 24 hours. Written in
-- the transaction that publishes, so a repeat either sees the event or publishes it itself.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    api_key_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    created_at REAL NOT NULL,
    status INTEGER NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency_keys (created_at);
""",
    ),
    (
        8,
        """
-- Media custody (media_store.py): one row per Meta media id, downloaded by the worker and
-- kept in the data folder under the file's sha256, so a file sent twice is kept once.
CREATE TABLE IF NOT EXISTS media (
    id INTEGER PRIMARY KEY,
    media_id TEXT NOT NULL UNIQUE,            -- Meta's id, checked against media_links.SAFE_ID
    mime_type TEXT NOT NULL DEFAULT '',
    sha256 TEXT NOT NULL DEFAULT '',          -- Meta's hash as sent (hex or base64)
    filename TEXT NOT NULL DEFAULT '',        -- a document's name, as the customer sent it
    file TEXT,                                -- hex sha256 naming the kept file, once downloaded
    size INTEGER,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'retrying', 'downloaded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS media_due ON media (next_attempt_at) WHERE state IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS media_file ON media (file);
-- The webhooks that carried each media id: the file goes when the last of them is pruned.
CREATE TABLE IF NOT EXISTS media_refs (
    media INTEGER NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    webhook_id INTEGER NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    PRIMARY KEY (media, webhook_id)
);
CREATE INDEX IF NOT EXISTS media_refs_webhook ON media_refs (webhook_id);
""",
    ),
    (
        9,
        """
-- Running totals for GET /metrics (metrics.py), kept by triggers in the very transaction
-- that changes the rows, so every web process and worker adds to the same numbers and a
-- scrape reads a few dozen rows instead of counting a million. `kind` names the series;
-- a counter's row is only ever added to (pruning history does not take from it).
CREATE TABLE IF NOT EXISTS metric_totals (
    kind TEXT NOT NULL,                       -- webhooks, events, attempts, deliveries
    label TEXT NOT NULL DEFAULT '',           -- outcome, event name, or endpoint id
    label2 TEXT NOT NULL DEFAULT '',          -- result or state
    value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, label, label2)
);
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'webhooks', 'received', '', count(*) FROM webhooks;
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'webhooks', 'rejected', '', coalesce(sum(count), 0) FROM rejections;
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'events', name, '', count(*) FROM events GROUP BY name;
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'attempts', coalesce(endpoint_id, 0), CASE WHEN ok THEN 'success' ELSE 'failure' END, count(*)
    FROM attempts GROUP BY 2, 3;
INSERT OR IGNORE INTO metric_totals (kind, label, label2, value)
    SELECT 'deliveries', coalesce(endpoint_id, 0), state, count(*) FROM deliveries GROUP BY 2, 3;
CREATE TRIGGER IF NOT EXISTS metric_webhook AFTER INSERT ON webhooks BEGIN
    INSERT INTO metric_totals (kind, label, label2, value) VALUES ('webhooks', 'received', '', 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS metric_rejection_new AFTER INSERT ON rejections BEGIN
    INSERT INTO metric_totals (kind, label, label2, value) VALUES ('webhooks', 'rejected', '', NEW.count)
        ON CONFLICT DO UPDATE SET value = value + NEW.count;
END;
CREATE TRIGGER IF NOT EXISTS metric_rejection_more AFTER UPDATE OF count ON rejections
    WHEN NEW.count > OLD.count BEGIN
    INSERT INTO metric_totals (kind, label, label2, value)
        VALUES ('webhooks', 'rejected', '', NEW.count - OLD.count)
        ON CONFLICT DO UPDATE SET value = value + NEW.count - OLD.count;
END;
CREATE TRIGGER IF NOT EXISTS metric_event AFTER INSERT ON events BEGIN
    INSERT INTO metric_totals (kind, label, label2, value) VALUES ('events', NEW.name, '', 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS metric_attempt AFTER INSERT ON attempts BEGIN
    INSERT INTO metric_totals (kind, label, label2, value)
        VALUES ('attempts', coalesce(NEW.endpoint_id, 0), CASE WHEN NEW.ok THEN 'success' ELSE 'failure' END, 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
-- Deliveries are a gauge (how many are in each state now): added on insert, moved on a
-- change of state or endpoint (a deleted endpoint sets it NULL), taken away on delete.
CREATE TRIGGER IF NOT EXISTS metric_delivery_new AFTER INSERT ON deliveries BEGIN
    INSERT INTO metric_totals (kind, label, label2, value)
        VALUES ('deliveries', coalesce(NEW.endpoint_id, 0), NEW.state, 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS metric_delivery_moved AFTER UPDATE OF state, endpoint_id ON deliveries
    WHEN OLD.state IS NOT NEW.state OR OLD.endpoint_id IS NOT NEW.endpoint_id BEGIN
    UPDATE metric_totals SET value = value - 1
        WHERE kind = 'deliveries' AND label = CAST(coalesce(OLD.endpoint_id, 0) AS TEXT) AND label2 = OLD.state;
    INSERT INTO metric_totals (kind, label, label2, value)
        VALUES ('deliveries', coalesce(NEW.endpoint_id, 0), NEW.state, 1)
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS metric_delivery_gone AFTER DELETE ON deliveries BEGIN
    UPDATE metric_totals SET value = value - 1
        WHERE kind = 'deliveries' AND label = CAST(coalesce(OLD.endpoint_id, 0) AS TEXT) AND label2 = OLD.state;
END;
-- The oldest delivery still on its way, per endpoint, in one index look-up each.
CREATE INDEX IF NOT EXISTS deliveries_waiting_since ON deliveries (endpoint_id, created_at)
    WHERE state IN ('pending', 'retrying');
""",
    ),
    (
        10,
        """
-- A local endpoint (SPEC 4 `local`): a receiver on the same machine or network, which alone
-- may use http:// and loopback or private addresses whatever delivery.allow_http and
-- delivery.allow_private_urls say (never link-local, multicast or reserved ones).
ALTER TABLE endpoints ADD COLUMN local INTEGER NOT NULL DEFAULT 0;
-- A webhook signed with the install's local simulate key (`simulate`), not by Meta: the
-- monitor's "Last Meta webhook", the metric and gateway.silent count Meta's own only.
ALTER TABLE webhooks ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0;
""",
    ),
]

BUSY_TIMEOUT_MS = 5000
MIGRATION_WAIT_MS = 600_000
BUSY_FIRST_PAUSE = 0.00005  # seconds; doubled after each busy try
BUSY_MAX_PAUSE = 0.002
WAL_CHECKPOINT_PAGES = 4000  # 16 MB of WAL with 4 KiB pages
WAL_SWITCH_WAIT = 30.0  # seconds a process starting on a new database waits for the others

# storage.synchronous per database path, as FULL or NORMAL; FULL where nobody said otherwise.
_synchronous: dict[str, str] = {}

# What a failed statement raises on either engine, and what callers answer 503 for.
Error = (sqlite3.Error, psycopg.Error, StorageError)
Connection = sqlite3.Connection | pg.Connection
Row = sqlite3.Row | pg.Row

_local = threading.local()
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


def create_private(path: str | os.PathLike) -> None:
    """Create the database file readable by its owner only, if it is not there yet: it holds
    endpoint secrets and customers' messages. SQLite gives its -wal and -shm files the same mode."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def connect_sqlite(path: str | os.PathLike) -> sqlite3.Connection:
    """Open a new SQLite connection with the pragmas every wahook connection uses.

    isolation_level=None leaves transactions to `transaction()`, which takes the write
    lock up front (BEGIN IMMEDIATE): a deferred transaction that upgrades later can fail
    with "database is locked" without waiting for busy_timeout.
    """
    if not Path(path).exists():
        create_private(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    use_wal(conn)
    # FULL: every commit is on disk before it returns, so a 200 to Meta and a delivery's new
    # state survive power loss. NORMAL in WAL mode survives any crash of our processes but
    # an OS crash or power loss can take back the last commits; it saves an fsync per commit.
    conn.execute(f"PRAGMA synchronous = {_synchronous.get(str(path), 'FULL')}")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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


def connection(database: str | os.PathLike) -> Connection:
    """This thread's connection to `database`, opened and migrated on first use.

    Reused across requests and jobs: opening a connection and setting its pragmas on
    every request costs more than the request's own work. A forked child opens its own,
    and a PostgreSQL connection the server dropped is replaced on the next call.
    """
    key = str(database)
    cache = getattr(_local, "conns", None)
    if cache is None or getattr(_local, "pid", None) != os.getpid():
        cache = _local.conns = {}
        _local.pid = os.getpid()
    conn = cache.get(key)
    if conn is not None and not getattr(conn, "usable", True):
        with contextlib.suppress(Exception):
            conn.close()
        conn = None
    if conn is None:
        conn = cache[key] = connect(database)
        with _migrate_lock:
            if key not in _migrated:
                migrate(conn)
                _migrated.add(key)
    return conn


def close_all() -> None:
    """Close this thread's connections (tests and shutdown)."""
    for conn in getattr(_local, "conns", {}).values():
        with contextlib.suppress(Exception):
            conn.close()
    _local.conns = {}


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
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        retry_while_busy(conn, "BEGIN IMMEDIATE", (wait_ms or BUSY_TIMEOUT_MS) / 1000, BUSY_FIRST_PAUSE, BUSY_MAX_PAUSE)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _new_write_lock() -> None:
    global _write_lock
    _write_lock = threading.RLock()


# The threads of one process (gthread web workers) queue here for the write lock, in order
# and without waking, instead of all polling SQLite's lock; only the one holding this polls
# against other processes. Reentrant, so a transaction opened inside another on a second
# connection still reaches SQLite and fails there as before rather than hanging here.
_write_lock = threading.RLock()
os.register_at_fork(after_in_child=_new_write_lock)


@contextmanager
def transaction(conn: Connection, wait_ms: int | None = None) -> Iterator[Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the block raises.

    On PostgreSQL, threads do not queue on the process's write lock: rows are locked, not
    the database, so transactions that touch different rows go on side by side.
    """
    wait = (wait_ms or BUSY_TIMEOUT_MS) / 1000
    queue = engine(conn) == "sqlite"
    if queue and not _write_lock.acquire(timeout=wait):
        raise sqlite3.OperationalError("database is locked")
    try:
        begin(conn, wait_ms)
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


def steps(migrations: list[tuple[int, str]] | None = None) -> list[tuple[int, str]]:
    """(version, SQLite SQL) from schema.sql up, by number, whatever order the list was
    written in: a version skipped here would never run."""
    return [(1, SCHEMA_PATH.read_text(encoding="utf-8"))] + sorted(
        MIGRATIONS if migrations is None else migrations, key=lambda step: step[0]
    )


def migrate(conn: Connection, migrations: list[tuple[int, str]] | None = None) -> int:
    """Bring the database to the newest version; return that version. Safe to repeat."""
    if engine(conn) == "postgresql":
        return pg.migrate(conn, steps(migrations))
    for version, script in steps(migrations):
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


def skip_locked(conn: Connection) -> str:
    """What to append to a SELECT that picks rows to claim in the same transaction: on
    PostgreSQL, lock them and pass over rows another worker is claiming right now. SQLite
    needs nothing: its write transaction already excludes every other writer."""
    return " FOR UPDATE SKIP LOCKED" if engine(conn) == "postgresql" else ""


def ids_in_commit_order(conn: Connection, table: str) -> None:
    """From here to the commit, hold the right to add rows to `table`, so its ids become
    visible in increasing order: pull and stream read events by id and must never find a
    smaller one appear behind a larger one already read. SQLite commits one transaction at a
    time anyway; PostgreSQL would let a later id commit first. Call inside a transaction."""
    if engine(conn) == "postgresql":
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"wahook.{table}",))


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
    conns = getattr(_local, "conns", {})
    conn = conns.get(current_app.config["WAHOOK"].database)
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
