"""schema.sql and migrations/: the whole schema in one readable file is exactly what the numbered
migrations build, and both engines' migrations build the same tables, columns and indexes."""

from __future__ import annotations

import re
import sqlite3

import pytest

from conftest import ROOT
from gateway.storage import db

SCHEMA = ROOT / "schema.sql"


def normalized(sql: str | None) -> str:
    """A CREATE statement without comments and layout: the same text written two ways compares equal."""
    text = re.sub(r"--[^\n]*", " ", sql or "")
    text = " ".join(text.replace("IF NOT EXISTS ", "").split())
    return re.sub(r"\s*([(),])\s*", r"\1", text)


def shape(conn: sqlite3.Connection) -> dict:
    """Every table, index and trigger as created, and the rows a fresh database starts with."""
    objects = {
        (row["type"], row["name"], row["tbl_name"]): normalized(row["sql"])
        for row in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
    }
    rows = {table: sorted(map(tuple, conn.execute(f"SELECT * FROM {table}"))) for table in db.tables(conn)}  # noqa: S608
    return {"objects": objects, "columns": {t: columns(conn, t) for t in db.tables(conn)}, "rows": rows}


def columns(conn: sqlite3.Connection, table: str) -> list[tuple]:
    """(name, type, not null, default, primary key, hidden) of each column, in order."""
    return [tuple(row)[1:] for row in conn.execute(f"PRAGMA table_xinfo({table})")]


def test_schema_sql_is_what_the_migrations_build(tmp_path):
    migrated = db.connect(tmp_path / "migrated.db")
    db.migrate(migrated)
    written = db.connect(tmp_path / "written.db")
    written.executescript(SCHEMA.read_text(encoding="utf-8"))
    expected, found = shape(migrated), shape(written)
    assert found["columns"] == expected["columns"], "schema.sql's columns differ from the migrations'"
    assert found["objects"] == expected["objects"], "schema.sql's tables, indexes or triggers differ"
    assert found["rows"] == expected["rows"], "schema.sql's first rows differ from the migrations'"


def test_the_comparison_notices_a_change(tmp_path):
    """A schema.sql one index short, or with a column's default changed, is told apart."""
    migrated = db.connect(tmp_path / "migrated.db")
    db.migrate(migrated)
    text = SCHEMA.read_text(encoding="utf-8")
    for changed in (
        text.replace("CREATE INDEX IF NOT EXISTS events_name ON events (name, webhook_id);", ""),
        text.replace("cycle INTEGER NOT NULL DEFAULT 0", "cycle INTEGER NOT NULL DEFAULT 1"),
    ):
        assert changed != text
        written = sqlite3.connect(":memory:")
        written.row_factory = sqlite3.Row
        written.executescript(changed)
        assert shape(written) != shape(migrated)


def test_every_migration_file_is_numbered_and_named_for_its_engine():
    names = sorted(path.name for path in db.MIGRATIONS_DIR.iterdir())
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+(\.postgresql)?\.sql", name) for name in names), names
    versions = [version for version, _ in db.migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert [v for v, _ in db.migrations("postgresql")] == versions


# What PostgreSQL alone has (migration 10): each event's transaction id, read to keep pull and
# stream in commit order without writers taking turns, and counter rows per database session.
# SQLite's single writer needs neither.
POSTGRES_ONLY_COLUMNS = {"events": ["tx"], "metric_totals": ["shard"]}
POSTGRES_ONLY_INDEXES = {"events_commit_order"}


@pytest.mark.engines("postgresql")
def test_both_engines_build_the_same_tables_columns_and_indexes(tmp_path, storage_database, engine):
    sqlite = db.connect(tmp_path / "migrated.db")
    db.migrate(sqlite)
    postgres = db.connect(storage_database)
    db.migrate(postgres)
    assert db.tables(postgres) == db.tables(sqlite)
    for table in db.tables(sqlite):
        found = [
            row[0]
            for row in postgres.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
                (table,),
            )
        ]
        found = [name for name in found if name not in POSTGRES_ONLY_COLUMNS.get(table, [])]
        assert found == [column[0] for column in columns(sqlite, table)], table
    sqlite_indexes = {
        row[0] for row in sqlite.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    }
    postgres_indexes = {
        row[0]
        for row in postgres.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid::regclass::text IN"
            " (SELECT tablename FROM pg_tables WHERE schemaname = current_schema())"
            " AND indexrelid NOT IN (SELECT conindid FROM pg_constraint)"
        )
    }
    assert postgres_indexes - POSTGRES_ONLY_INDEXES == sqlite_indexes
    postgres.close()
