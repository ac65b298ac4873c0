"""pg.py: SQLite's SQL translated for PostgreSQL, its schema and migrations, its rows, and the
one-line answer to a database that cannot be reached, on a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
import threading

import psycopg
import pytest

import db
import pg
import pg_migrations
from conftest import ROOT

SQLITE_ONLY = ("CREATE TRIGGER IF", "INSERT OR IGNORE", "INSERT OR REPLACE", "PRAGMA", "AUTOINCREMENT", "WITHOUT ROWID")


@pytest.fixture
def pgconn(postgres_server):
    conn = db.connect(postgres_server.new_database())
    yield conn
    conn.close()


def test_translate_placeholders_but_not_quoted_text():
    assert pg.translate("SELECT ? WHERE a = '?' AND b LIKE '5%'") == "SELECT %s WHERE a = '?' AND b LIKE '5%%'"
    assert pg.translate("SELECT 1 WHERE x IS ? AND y IS NOT ?") == (
        "SELECT 1 WHERE x IS NOT DISTINCT FROM %s AND y IS DISTINCT FROM %s"
    )
    assert pg.translate("SELECT 1 WHERE x IS NULL") == "SELECT 1 WHERE x IS NULL"
    assert pg.translate("BEGIN IMMEDIATE") == "BEGIN"
    assert (
        pg.translate("INSERT OR IGNORE INTO t (a) VALUES (?)") == "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    )


def test_every_migration_runs_on_postgresql_as_written_or_by_its_own_text():
    """A migration with SQLite-only SQL needs its text in pg_migrations.py: this names the one
    that lacks it, rather than letting PostgreSQL installs fail at start."""
    for version, sql in db.steps():
        text = pg.schema_text(version, sql)
        lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
        found = [word for word in SQLITE_ONLY if word in "\n".join(lines).upper()]
        assert not found, f"migration {version} uses {found}: add its PostgreSQL text to pg_migrations.TEXT"
    assert set(pg_migrations.TEXT) <= {version for version, _ in db.steps()}


def test_schema_on_postgresql_keeps_times_double_and_ids_64_bit(pgconn):
    assert db.migrate(pgconn) == db.steps()[-1][0]
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
    assert db.migrate(pgconn) == db.steps()[-1][0]  # idempotent


def test_a_failing_migration_changes_nothing_on_postgresql(pgconn):
    base = db.migrate(pgconn)
    broken = db.MIGRATIONS + [(base + 1, "CREATE TABLE half (id INTEGER);\nTHIS IS NOT SQL;")]
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
    assert versions == [version for version, _ in db.steps()]


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
    for command in ([sys.executable, "worker.py"], [sys.executable, "-m", "flask", "--app", "app", "init-db"]):
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "storage.database" in lines[0] and "cannot connect to PostgreSQL" in lines[0]
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
