"""pg.py: the SQL wahook writes once, run on PostgreSQL with only its placeholders changed; its
migrations, its rows, and the one-line answer to a database that cannot be reached, on a real
PostgreSQL server."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import psycopg
import pytest
import requests

from conftest import ROOT, Processes, instance_sections, sign, text_message, wait_every_event_delivered, wait_until
from gateway.config import load_config
from gateway.delivery import endpoints
from gateway.storage import db, pg

TOTAL = 300
SQLITE_ONLY = ("CREATE TRIGGER IF", "INSERT OR IGNORE", "INSERT OR REPLACE", "PRAGMA", "AUTOINCREMENT", "WITHOUT ROWID")


@pytest.fixture
def pgconn(postgres_server):
    conn = db.connect(postgres_server.new_database())
    yield conn
    conn.close()


def test_translate_changes_placeholders_and_nothing_else():
    assert pg.translate("SELECT ? WHERE a = '?' AND b LIKE '5%'") == "SELECT %s WHERE a = '?' AND b LIKE '5%%'"
    assert pg.translate("SELECT 1 WHERE x IS NOT DISTINCT FROM ?") == "SELECT 1 WHERE x IS NOT DISTINCT FROM %s"
    # The statement is passed on as written: a rewrite of INSERT OR IGNORE used to put its
    # ON CONFLICT after a RETURNING clause, which PostgreSQL refuses.
    written = "INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING id"
    assert pg.translate(written) == "INSERT OR IGNORE INTO t (a) VALUES (%s) RETURNING id"
    assert pg.translate("SELECT 1 /* it's ? */, ?") == "SELECT 1 /* it's ? */, %s"


def test_every_migration_runs_on_postgresql_as_written():
    """A migration with SQLite-only SQL needs its own migrations/NNNN_*.postgresql.sql: this
    names the one that lacks it, rather than letting PostgreSQL installs fail at start."""
    for version, text in db.migrations("postgresql"):
        lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
        found = [word for word in SQLITE_ONLY if word in "\n".join(lines).upper()]
        assert not found, f"migration {version} uses {found}: add its migrations/NNNN_*.postgresql.sql"
        assert not any(word in line for line in lines for word in (" REAL", " BLOB")), version


def test_the_code_writes_no_sqlite_only_statement():
    """Nothing rewrites `INSERT OR IGNORE` or `IS ?` for PostgreSQL any more: a statement
    written so would work on SQLite and fail on PostgreSQL only."""
    assert sqlite3.sqlite_version_info >= (3, 35)  # RETURNING, which the code uses throughout
    sqlite_only = re.compile(r"\bOR\s+(IGNORE|REPLACE)\b|\bIS\s+(NOT\s+)?\?")
    for path in sorted(ROOT.glob("*.py")):
        found = sqlite_only.search(path.read_text(encoding="utf-8"))
        assert found is None, f"{path.name}: {found[0]!r} (write ON CONFLICT DO NOTHING; IS NULL or = ?)"


@pytest.mark.engines
def test_a_quote_in_a_comment_leaves_later_placeholders_working(storage_database, engine):
    """An apostrophe in a `--` comment used to open a "quote" that hid every later `?`."""
    conn = db.connect(storage_database)
    row = conn.execute("SELECT ? AS a -- the customer's phone\n, ? AS b", (1, 2)).fetchone()
    assert tuple(row) == (1, 2)
    conn.close()


@pytest.mark.engines
def test_the_sql_written_once_reads_alike_on_both_engines(storage_database, engine):
    """INSERT ... ON CONFLICT DO NOTHING, with RETURNING and from a SELECT, as the code writes it."""
    conn = db.connect(storage_database)
    db.migrate(conn)
    insert = (
        "INSERT INTO contacts (phone_number_id, wa_id, seen_ts, created_at, updated_at)"
        " VALUES ('1', ?, 0, 0, 0) ON CONFLICT DO NOTHING RETURNING id"
    )
    first = conn.execute(insert, ("31600",)).fetchone()[0]
    assert conn.execute(insert, ("31600",)).fetchone() is None  # the unique (phone_number_id, wa_id)
    copy = (
        "INSERT INTO contacts (phone_number_id, wa_id, seen_ts, created_at, updated_at)"
        " SELECT phone_number_id, wa_id, 0, 0, 0 FROM contacts WHERE id = ? ON CONFLICT DO NOTHING"
    )
    assert conn.execute(copy, (first,)).rowcount == 0
    assert [row[0] for row in conn.execute("SELECT id FROM contacts")] == [first]
    conn.close()


def test_schema_on_postgresql_keeps_times_double_and_ids_64_bit(pgconn):
    assert db.migrate(pgconn) == db.migrations("postgresql")[-1][0]
    types = {
        (row[0], row[1]): row[2]
        for row in pgconn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
        )
    }
    assert "real" not in types.values()  # 4 bytes: a unix time would lose its seconds
    assert types[("webhooks", "received_at")] == "double precision"
    assert types[("deliveries", "next_attempt_at")] == "double precision"
    assert types[("webhooks", "body")] == "bytea"
    assert types[("deliveries", "id")] == "bigint"
    assert set(db.tables(pgconn)) >= {"webhooks", "events", "endpoints", "deliveries", "attempts", "metric_totals"}
    assert db.migrate(pgconn) == db.migrations("postgresql")[-1][0]  # idempotent


def test_a_failing_migration_changes_nothing_on_postgresql(pgconn):
    base = db.migrate(pgconn)
    broken = db.migrations("postgresql") + [(base + 1, "CREATE TABLE half (id INTEGER);\nTHIS IS NOT SQL;")]
    with pytest.raises(psycopg.Error):
        db.migrate(pgconn, broken)
    assert pg.version(pgconn) == base
    assert "half" not in db.tables(pgconn)


def test_processes_migrating_at_once_apply_each_step_once(postgres_server):
    url = postgres_server.new_database()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            conn = db.connect(url)
            db.migrate(conn)
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    conn = db.connect(url)
    versions = [row[0] for row in conn.execute("SELECT version FROM wahook_schema ORDER BY version")]
    assert versions == [version for version, _ in db.migrations("postgresql")]


def test_rows_read_by_name_and_index_and_sums_are_ints(pgconn):
    row = pgconn.execute("SELECT 1 AS a, 'x' AS b, sum(v) AS s FROM (VALUES (2), (3)) AS t (v)").fetchone()
    assert row["a"] == row[0] == 1 and row["b"] == "x" and dict(row) == {"a": 1, "b": "x", "s": 5}
    assert type(row["s"]) is int
    assert pgconn.execute("SELECT ? + 1, ?", (True, "a\x00b")).fetchone()[:] == (2, "a\ufffdb")


def test_data_version_moves_when_another_connection_commits(postgres_server):
    url = postgres_server.new_database()
    watcher, writer = db.connect(url), db.connect(url)
    db.migrate(writer)
    before = db.data_version(watcher)
    assert db.data_version(watcher) == before  # nothing committed: the workers sleep
    with db.transaction(writer):
        writer.execute("INSERT INTO rejections (minute, reason, count) VALUES (1, 'x', 1)")
    assert db.data_version(watcher) != before


def test_a_lost_connection_is_replaced_on_next_use(postgres_server):
    url = postgres_server.new_database()
    first = db.connection(url)
    killer = db.connect(url)
    killer.execute("SELECT pg_terminate_backend(?)", (first.raw.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        first.execute("SELECT 1")
    second = db.connection(url)
    assert second is not first and second.execute("SELECT 1").fetchone()[0] == 1
    db.close_all()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://wahook:s3cret-pw@127.0.0.1:1/wahook",  # nobody listens
        "postgresql://wahook:s3cret-pw@/nosuchdb?host=/nonexistent",  # no such socket
    ],
)
def test_a_database_that_cannot_be_reached_stops_start_up_in_one_line(tmp_path, url):
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndatabase = "{url}"\n[redis]\nurl = "unix:///nonexistent.sock"\n')
    env = {"WAHOOK_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    gunicorn = [sys.executable, "-m", "gunicorn", "app:app", "-c", "gunicorn.conf.py"]
    for command in (
        [sys.executable, "worker.py"],
        [sys.executable, "-m", "flask", "--app", "app", "init-db"],
        gunicorn,  # the master checks before starting web processes that would fail in a loop
    ):
        env["WAHOOK_BIND"] = "127.0.0.1:0"
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        lines = [line for line in result.stderr.strip().splitlines() if "Starting gunicorn" not in line]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("wahook: storage.database: cannot connect to PostgreSQL at ")
        assert "s3cret-pw" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_a_wrong_password_is_named_without_the_password(postgres_server, tmp_path):
    """A server that asks for a password (scram over TCP), given a wrong one."""
    admin = db.connect(postgres_server.url())
    admin.execute("CREATE ROLE pwuser LOGIN PASSWORD 'right-pw'")
    postgres_server.require_password("pwuser")
    url = postgres_server.url().replace("postgres:@", "pwuser:wrong-pw-123@")
    with pytest.raises(pg.StorageError) as caught:
        db.connect(url)
    message = str(caught.value)
    assert message.startswith("storage.database: cannot connect to PostgreSQL at postgresql://pwuser:***@")
    assert "wrong-pw-123" not in message and "\n" not in message
    assert db.connect(url.replace("wrong-pw-123", "right-pw")).execute("SELECT 1").fetchone()[0] == 1


def with_endpoint(database: str, url: str):
    """A connection to a migrated database holding one endpoint to `url` for customers'
    messages, as a user would add it."""
    conn = db.connect(database)
    db.migrate(conn)
    config = load_config("/nonexistent/config.toml", {"delivery": {"allow_http": True, "allow_private_urls": True}})
    endpoints.create(conn, config, url, events="message.received")  # not contact.created
    return conn


@pytest.mark.slow
def test_two_machines_on_one_postgresql_lose_nothing_when_a_worker_is_killed(
    tmp_path, redis_url, postgres_server, make_receiver
):
    """Two "machines" (each its own config, data folder and process group: one gunicorn with
    two web processes, one worker) share one PostgreSQL and one Redis. Machine A's worker is
    SIGKILLed mid-flood: every event arrives, and the only repeats are of what that worker
    had sent before it died (at-least-once), never of anything the survivor sent."""
    url = postgres_server.new_database()
    receiver = make_receiver()
    machines = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        machines.append(Processes(folder, instance_sections(folder, redis_url, url)))
    try:
        conn = with_endpoint(url, receiver.url)
        bases = [m.start_web(workers=2, own_group=True) for m in machines]
        doomed = machines[0].start_worker(own_group=True)
        machines[1].start_worker(own_group=True)
        statuses: list[int] = []

        def post(offset: int) -> None:
            session = requests.Session()
            for n in range(offset, TOTAL, 4):
                raw = json.dumps(text_message(f"wamid.TWO{n}")).encode()
                statuses.append(
                    session.post(
                        bases[n % 2] + "/api/webhooks/whatsapp",
                        data=raw,
                        headers={"X-Hub-Signature-256": sign(raw)},
                        timeout=10,
                    ).status_code
                )

        posters = [threading.Thread(target=post, args=(k,)) for k in range(4)]
        for thread in posters:
            thread.start()
        wait_until(lambda: len(receiver.requests) >= 50, timeout=60, message="the flood to start arriving")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
        sent_before_kill = {r.headers["X-Webhook-Id"] for r in list(receiver.requests)}
        # What the killed worker had in hand: sent perhaps, never recorded. Its leases stand until
        # they run out, so read now; a request of these still on the wire may land after the
        # snapshot above, and the survivor then sends it again (at least once, as promised).
        held = {
            row[0]
            for row in conn.execute(
                "SELECT e.event_id FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.lease_owner LIKE ?",
                (f"%.{doomed.pid}.%",),
            )
        }
        for thread in posters:
            thread.join()
        assert statuses == [200] * TOTAL and len(sent_before_kill) < TOTAL
        wait_every_event_delivered(conn, receiver, TOTAL, timeout=90)
        arrivals = Counter(r.headers["X-Webhook-Id"] for r in list(receiver.requests))
        repeated = {event_id for event_id, n in arrivals.items() if n > 1}
        assert repeated <= sent_before_kill | held  # the survivor never sent a delivered event again
    finally:
        for machine in machines:
            machine.stop_all()


@pytest.mark.slow
@pytest.mark.engines("postgresql")
def test_postgresql_restarted_under_load(processes, storage_database, postgres_server, receiver, engine):
    """While PostgreSQL is down, Meta gets 503s (it retries); every webhook that got a 200 is
    kept and delivered; web processes and the worker reconnect by themselves."""
    with_endpoint(storage_database, receiver.url).close()
    base = processes.start_web()
    processes.start_worker()
    watch = db.connect(storage_database)
    wait_until(lambda: watch.execute("SELECT count(*) FROM workers").fetchone()[0], timeout=30, message="the worker")
    watch.close()
    answers: list[tuple[str, int]] = []
    stop = threading.Event()

    def post() -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            n += 1
            wamid = f"wamid.RESTART{threading.get_ident()}.{n}"
            raw = json.dumps(text_message(wamid)).encode()
            try:
                status = session.post(
                    base + "/api/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw)}, timeout=15
                ).status_code
            except requests.RequestException:
                status = 0
            answers.append((wamid, status))
            time.sleep(0.01)

    posters = [threading.Thread(target=post) for _ in range(2)]
    for thread in posters:
        thread.start()
    try:
        wait_until(lambda: sum(s == 200 for _, s in answers) >= 20, timeout=30, message="webhooks stored")
        postgres_server.stop_server()
        try:
            down_from = len(answers)
            wait_until(lambda: sum(s == 503 for _, s in answers[down_from:]) >= 5, timeout=30, message="503s")
        finally:
            postgres_server.start_server()
        up_from = len(answers)
        wait_until(lambda: sum(s == 200 for _, s in answers[up_from:]) >= 20, timeout=60, message="200s again")
    finally:
        stop.set()
        for thread in posters:
            thread.join()
    assert {s for _, s in answers} <= {200, 503}  # never a 500, never a dropped connection
    stored = db.connect(storage_database)
    messages = "SELECT body FROM events WHERE name = 'message.received'"
    kept = {json.loads(r[0])["message_id"] for r in stored.execute(messages)}
    accepted = {wamid for wamid, s in answers if s == 200}
    assert accepted <= kept
    wait_until(
        lambda: stored.execute("SELECT count(*) FROM deliveries WHERE state <> 'delivered'").fetchone()[0] == 0,
        timeout=60,
        message="the worker to deliver everything after the restart",
    )
    assert len({r.headers["X-Webhook-Id"] for r in list(receiver.requests)}) >= len(accepted)
