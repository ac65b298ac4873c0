"""The database: pragmas, per-thread connection reuse, and numbered migrations applied in one
transaction each, together with their version."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import sign, text_message
from gateway.storage import db, sqlite_open


def test_fresh_database_gets_the_schema_and_version(tmp_path):
    conn = db.connect(tmp_path / "w.db")
    latest = db.migrations()[-1][0]
    assert db.migrate(conn) == latest
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"webhooks", "events", "endpoints", "deliveries", "attempts", "rejections", "workers"} <= tables
    assert db.migrate(conn) == latest  # idempotent


def test_an_old_database_is_brought_up_to_date(tmp_path):
    conn = db.connect(tmp_path / "w.db")
    assert db.migrate(conn, db.migrations()[:1]) == 1
    # Version 1 as it shipped also had this index; 0001_schema.sql no longer makes it, since
    # migration 2 drops it again.
    conn.execute("CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state IN ('pending', 'retrying')")
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "deliveries_due" in indexes and "deliveries_lane" not in indexes
    assert db.migrate(conn) == db.migrations()[-1][0]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "deliveries_lane" in indexes and "attempts_endpoint" in indexes and "deliveries_due" not in indexes


def test_pragmas(tmp_path):
    conn = db.connect(tmp_path / "w.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == db.BUSY_TIMEOUT_MS


def test_migrations_apply_in_order_with_their_version(tmp_path):
    conn = db.connect(tmp_path / "w.db")
    base = db.migrate(conn)
    steps = db.migrations() + [
        (base + 1, "ALTER TABLE endpoints ADD COLUMN note TEXT NOT NULL DEFAULT '';"),
        (base + 2, "CREATE TABLE extra (id INTEGER PRIMARY KEY);\nCREATE INDEX extra_id ON extra (id);"),
    ]
    assert db.migrate(conn, steps) == base + 2
    assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(endpoints)")]
    assert db.migrate(conn, steps) == base + 2  # nothing applied twice


def test_a_failing_migration_changes_nothing(tmp_path):
    conn = db.connect(tmp_path / "w.db")
    base = db.migrate(conn)
    broken = db.migrations() + [(base + 1, "CREATE TABLE half (id INTEGER);\nTHIS IS NOT SQL;")]
    with pytest.raises(sqlite3.OperationalError):
        db.migrate(conn, broken)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == base
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


def test_connection_is_reused_per_thread(tmp_path):
    path = tmp_path / "w.db"
    first = db.connection(path)
    assert db.connection(path) is first
    other = []
    thread = threading.Thread(target=lambda: other.append(db.connection(path)))
    thread.start()
    thread.join()
    assert other[0] is not first


def test_transaction_rolls_back_on_error(tmp_path):
    conn = db.connection(tmp_path / "w.db")
    with pytest.raises(RuntimeError), db.transaction(conn):
        conn.execute("INSERT INTO rejections (minute, reason, count) VALUES (1, 'x', 1)")
        raise RuntimeError("boom")
    assert conn.execute("SELECT count(*) FROM rejections").fetchone()[0] == 0
    assert not conn.in_transaction


def test_init_db_command(runner, app):
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0
    assert f"schema version {db.migrations()[-1][0]}" in result.output


def test_a_process_starting_during_a_long_migration_waits_for_it(tmp_path, monkeypatch):
    """Another process holding the write lock longer than the busy timeout (building migration
    4's indexes on a big database) must not make a process starting alongside fail."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "w.db"
    db.migrate(db.connect(path), db.migrations()[:1])
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # released from a timer
    holder.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    releaser.start()
    try:
        started = time.monotonic()
        assert db.migrate(db.connect(path)) == db.migrations()[-1][0]
        assert time.monotonic() - started >= 0.4  # it did wait for the lock
    finally:
        releaser.cancel()
        releaser.join()
    with pytest.raises(sqlite3.OperationalError):  # an ordinary write still gives up after the busy timeout
        holder.execute("BEGIN IMMEDIATE")
        db.begin(db.connect(path))


def test_many_threads_of_one_process_write_without_a_lock_error(tmp_path):
    """gthread web workers: 32 threads, each its own connection, all commit (they queue on the
    process's write lock rather than time out polling SQLite's); another connection still
    cannot begin while one holds the write lock."""
    path = tmp_path / "w.db"
    setup = db.connect(path)
    setup.execute("CREATE TABLE t (n INTEGER)")
    errors: list[Exception] = []

    def write() -> None:
        conn = db.connect(path)
        try:
            for n in range(50):
                with db.transaction(conn):
                    conn.execute("INSERT INTO t VALUES (?)", (n,))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=write) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert setup.execute("SELECT count(*) FROM t").fetchone()[0] == 32 * 50

    other = db.connect(path)
    other.execute("PRAGMA busy_timeout = 0")
    with db.transaction(setup), pytest.raises(sqlite3.OperationalError):
        db.begin(other)


OPEN_AT_ONCE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from gateway.storage import db
start = float(sys.argv[3])
while time.time() < start:
    pass
conn = db.connection(sys.argv[2])
print(conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA user_version").fetchone()[0])
"""


@pytest.mark.slow
def test_eight_processes_opening_a_new_database_at_once_all_start(tmp_path):
    """Switching a new file to WAL takes an exclusive lock that SQLite's busy handler does not
    wait for: a process that lost the race used to die with "database is locked"."""
    root = str(Path(db.__file__).parents[2])  # the checkout, where `gateway` is found
    latest = db.migrations()[-1][0]
    for round_ in range(4):
        path = tmp_path / f"new-{round_}" / "wahook.db"
        start = time.time() + 1.5  # every interpreter is up and spinning by then
        children = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AT_ONCE, root, str(path), str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            assert out.split() == ["wal", str(latest)]


def test_synchronous_follows_the_config(tmp_path):
    """FULL by default: a commit (a 200 to Meta, a delivery's new state) is on disk before it
    returns, so it survives power loss; NORMAL when the admin asks for speed instead."""
    full = db.connect(tmp_path / "a.db")
    assert full.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    sqlite_open.use_synchronous(tmp_path / "b.db", "normal")
    normal = db.connect(tmp_path / "b.db")
    assert normal.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with pytest.raises(ValueError):
        sqlite_open.use_synchronous(tmp_path / "c.db", "off")


def test_every_connection_of_an_app_uses_its_synchronous(tmp_path, redis_url):
    from app import create_app
    from conftest import instance_sections

    for level, expected in (("normal", 1), ("full", 2)):
        sections = instance_sections(tmp_path / level, redis_url)
        sections["storage"]["synchronous"] = level
        app = create_app({"TESTING": True, "config_path": str(tmp_path / "none.toml"), **sections})
        path = app.config["WAHOOK"].database_path
        assert db.connection(path).execute("PRAGMA synchronous").fetchone()[0] == expected
        seen = []

        def in_thread(path=path, seen=seen) -> None:
            seen.append(db.connection(path).execute("PRAGMA synchronous").fetchone()[0])

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        assert seen == [expected]


def test_the_database_and_its_wal_are_private(tmp_path):
    conn = db.connect(tmp_path / "data" / "w.db")
    db.migrate(conn)
    with db.transaction(conn):
        conn.execute("INSERT INTO rejections (minute, reason, count) VALUES (1, 'x', 1)")
    for name in ("w.db", "w.db-wal"):
        assert (tmp_path / "data" / name).stat().st_mode & 0o777 == 0o600, name


HOLD_UNTIL_TOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


@pytest.mark.parametrize("target", ["intake", "api"])
def test_every_post_gets_its_answer_within_the_busy_timeout_while_another_process_holds_the_lock(
    processes, tmp_path, make_key, target
):
    """Another program (a backup, the sqlite3 shell) holds the write lock longer than the busy
    timeout. Two POSTs sent together to one web process (Meta's, or two API publishes) must
    both be refused (503, the sender retries), not one refused while the other waits in line
    behind it for a second timeout. The lock is let go three seconds after the first answer: a
    POST still held by then is one that waited longer than the busy timeout, and gets its 2xx."""
    key = make_key("publish")
    base = processes.start_web(workers=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_UNTIL_TOLD, str(tmp_path / "data" / "wahook.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        answers: list[int] = []
        first = threading.Event()

        def post(n: int) -> None:
            if target == "intake":
                raw = json.dumps(text_message(wamid=f"wamid.locked{n}")).encode()
                headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
                url = base + "/api/webhooks/whatsapp"
            else:
                raw = json.dumps({"event": "campaign.completed", "data": {"n": n}}).encode()
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
                url = base + "/api/v1/events"
            response = requests.post(url, data=raw, headers=headers, timeout=60)
            answers.append(response.status_code)
            first.set()

        posts = [threading.Thread(target=post, args=(n,)) for n in range(2)]
        for thread in posts:
            thread.start()
        assert first.wait(60)
        time.sleep(3)  # long enough for a POST waiting in line to reach SQLite after the lock is gone
        holder.stdin.write("go\n")
        holder.stdin.flush()
        for thread in posts:
            thread.join(60)
        assert answers == [503, 503]
    finally:
        holder.kill()
        holder.wait()


def test_an_up_to_date_database_opens_while_another_program_holds_the_write_lock(tmp_path, monkeypatch):
    """A process starting (a web worker replaced, a CLI command) while a backup or the sqlite3
    shell holds the lock opens its connection at once: nothing to migrate needs no lock."""
    path = tmp_path / "w.db"
    latest = db.migrate(db.connect(path))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(db, "MIGRATION_WAIT_MS", 200)  # what would otherwise be ten minutes
    try:
        assert db.migrate(db.connect(path)) == latest
    finally:
        holder.execute("ROLLBACK")
