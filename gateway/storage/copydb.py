"""`copy-db URL`: the SQLite database storage.database names, copied into an empty PostgreSQL one.

The target gets the schema (every migration) first, then each table's rows in the order the
tables were created (parents before the tables that refer to them), all in one PostgreSQL
transaction: a copy that fails half way leaves the target as empty as it was. Each table's
row count is compared before the commit, and identity sequences are moved past the copied
ids so the next row inserted gets a fresh one. The running totals for /metrics and the
highest endpoint id ever used are copied as they were (pruned history counts in them).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.storage import db, pg

# Filled by their migrations (9, 4) even in an empty database, and kept up by triggers as
# the other tables are copied: emptied and copied whole, after the tables they follow.
SEEDED = ("metric_totals", "endpoint_ids")


class CopyError(Exception):
    """Why nothing was copied, in one line for the person who ran the command."""


def source_tables(source: sqlite3.Connection, target: pg.Connection) -> list[tuple[str, list[str]]]:
    """(table, columns both databases have) for every table of the source the target has."""
    present = set(db.tables(target))
    found = []
    for table in db.tables(source):
        if table not in present:
            continue
        wanted = {
            row[0]
            for row in target.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = ?",
                (table,),
            )
        }
        columns = [row[1] for row in source.execute(f"PRAGMA table_info({table})") if row[1] in wanted]
        found.append((table, columns))
    return found


def copy(sqlite_path: Path, url: str) -> dict[str, int]:
    """Copy every row; returns rows per table. Raises CopyError (target left unchanged)."""
    if not db.is_postgres(url):
        raise CopyError("the target must be a postgresql:// URL")
    if not sqlite_path.is_file():
        raise CopyError(f"there is no SQLite database at {sqlite_path}")
    try:
        target = pg.connect(url)
    except pg.StorageError as exc:
        raise CopyError(str(exc).removeprefix("storage.database: ")) from None
    source = db.connect_sqlite(sqlite_path)
    try:
        db.migrate(source)  # the same version on both sides
        db.migrate(target)
        tables = source_tables(source, target)
        busy = [t for t, _ in tables if t not in SEEDED and target.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]  # noqa: S608
        if busy:
            raise CopyError(f"the target database is not empty (rows in {', '.join(busy)}); give an empty one")
        source.execute("BEGIN")  # one snapshot of the source, even if something still writes to it
        with db.transaction(target):
            counts = {table: _copy_table(source, target, table, columns) for table, columns in tables}
            for table, expected in counts.items():
                got = target.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
                if got != expected:
                    raise CopyError(f"{table}: {expected} rows read, {got} in the target; nothing was copied")
            _reset_identities(target, [t for t, columns in tables if "id" in columns])
        return counts
    finally:
        db.rollback(source)
        source.close()
        target.close()


def _copy_table(source: sqlite3.Connection, target: pg.Connection, table: str, columns: list[str]) -> int:
    """COPY one table's rows; its triggers fire as for any insert, which is why a seeded table
    is emptied of what they added just before its own rows come (it was created after the
    tables whose triggers fill it)."""
    if table in SEEDED:
        target.execute(f"DELETE FROM {table}")  # noqa: S608 - one of SEEDED
    names = ", ".join(columns)
    count = 0
    with target.raw.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as stream:
        for row in source.execute(f"SELECT {names} FROM {table}"):  # noqa: S608
            stream.write_row(pg.row_values(row))
            count += 1
    return count


def _reset_identities(target: pg.Connection, tables: list[str]) -> None:
    for table in tables:
        target.execute(
            f"SELECT setval(pg_get_serial_sequence(?, 'id'), coalesce(max(id), 1), max(id) IS NOT NULL) FROM {table}",  # noqa: S608
            (table,),
        )
