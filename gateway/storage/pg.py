"""PostgreSQL for db.py: a connection that runs the SQL the rest of wahook writes once for both.

Statements in the code are written in the SQL both engines read alike (`ON CONFLICT DO
NOTHING`, `RETURNING`, `IS NULL`), with `?` placeholders. What this module
changes, and nothing more:

- `?` placeholders become `%s`, and a literal `%` becomes `%%` (psycopg's escape); a `?` or
  `'` in quoted text or in a comment is left as written;
- rows can be read by name and by index, like sqlite3.Row; `sum()` of integers comes back
  as an int (PostgreSQL's numeric would be a Decimal), a Python bool goes in as 0 or 1,
  and a NUL character in text (which PostgreSQL cannot store) as U+FFFD.

Migrations are run as written: migrations/NNNN_*.postgresql.sql where PostgreSQL's text
differs (types, triggers), else the one .sql file. The schema version is kept in `wahook_schema`.

Lost connections are not retried here: the statement fails with psycopg.OperationalError,
the caller answers as it does for a locked SQLite (503, retry later), and db.connection
opens a fresh connection on the next use.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.adapt import Loader
from psycopg.pq import TransactionStatus

CONNECT_TIMEOUT = 5  # seconds; a start-up against a wrong host fails fast and says so
MIGRATION_LOCK = 0x7761686F6F6B  # pg_advisory_xact_lock key ("wahook"): one migrator at a time

# Quoted text and comments (kept as they are, `%` doubled), else a placeholder or a `%`.
_SQL_TOKENS = re.compile(r"'[^']*'|\"[^\"]*\"|--[^\n]*|/\*.*?\*/|[?%]", re.DOTALL)


class StorageError(Exception):
    """The database named by storage.database cannot be used; the message is one line for a person."""


class Row:
    """A result row read by index or by column name, like sqlite3.Row."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: tuple) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and self._values == other._values and self._names == other._names

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=True))!r})"


def _row_factory(cursor: psycopg.Cursor):
    names = {column.name: i for i, column in enumerate(cursor.description or [])}
    return lambda values: Row(names, values)


class _NumberLoader(Loader):
    """numeric as int when whole (sum of integers), else float, as SQLite returns them."""

    def load(self, data) -> int | float:
        value = Decimal(bytes(data).decode("ascii"))
        return int(value) if value == value.to_integral_value() else float(value)


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """The statement as psycopg takes it: `?` placeholders as `%s`, `%` as `%%`, nothing else."""
    return _SQL_TOKENS.sub(lambda m: "%s" if m[0] == "?" else m[0].replace("%", "%%"), sql)


def _param(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and "\x00" in value:
        # PostgreSQL's text cannot hold NUL, SQLite's can. Such text only comes from a
        # client (JSON bodies keep it escaped): a look-up with it finds nothing either way.
        return value.replace("\x00", "\ufffd")
    return value


def row_values(params) -> tuple:
    """Values as PostgreSQL takes them (see _param): statement parameters, or a row to COPY."""
    return tuple(_param(p) for p in params)


class Connection:
    """The part of sqlite3.Connection wahook uses, on a psycopg connection in autocommit mode
    (transactions are the explicit BEGIN/COMMIT of db.transaction)."""

    engine = "postgresql"

    def __init__(self, raw: psycopg.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params=()) -> psycopg.Cursor:
        return self.raw.execute(translate(sql), row_values(params))

    def executemany(self, sql: str, seq) -> psycopg.Cursor:
        cursor = self.raw.cursor()
        cursor.executemany(translate(sql), [row_values(p) for p in seq])
        return cursor

    def script(self, sql: str) -> None:
        """Run several statements as written (no placeholders): a schema or a migration."""
        self.raw.execute(sql.encode("utf-8"))

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    @property
    def usable(self) -> bool:
        """False once the server went away: db.connection then opens a new one."""
        return not (self.raw.closed or self.raw.broken)

    def close(self) -> None:
        self.raw.close()


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        if not parts.password:
            return url
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
    except ValueError:
        return "postgresql://…"


def connect(url: str) -> Connection:
    """A new connection, or StorageError saying in one line why not (never the password)."""
    try:
        raw = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, row_factory=_row_factory)
    except (psycopg.Error, ValueError) as exc:
        reason = " ".join(str(exc).replace(url, redacted(url)).split()) or type(exc).__name__
        raise StorageError(f"storage.database: cannot connect to PostgreSQL at {redacted(url)}: {reason}") from None
    raw.adapters.register_loader("numeric", _NumberLoader)
    return Connection(raw)


def version(conn: Connection) -> int:
    row = conn.execute("SELECT max(version) FROM wahook_schema").fetchone()
    return row[0] or 0


def migrate(conn: Connection, steps: list[tuple[int, str]]) -> int:
    """Apply the steps above the stored version, each in one transaction with its new version.

    An advisory lock makes processes starting together take turns; PostgreSQL's DDL is
    transactional, so a failed step leaves the previous version whole.
    """
    for number, sql in [(0, "")] + steps:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            conn.script("CREATE TABLE IF NOT EXISTS wahook_schema (version INTEGER NOT NULL)")
            if number and version(conn) < number:
                conn.script(sql)
                conn.execute("INSERT INTO wahook_schema (version) VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.usable:
                conn.execute("ROLLBACK")
            raise
    return version(conn)


def data_version(conn: Connection) -> int:
    """Changes when any transaction on the server has committed since the last call: the
    first transaction id not yet seen as finished, plus the oldest still running (which moves
    when a transaction that held back pull and stream ends, even after a later one did; see
    event_reader.py). Neither ever goes down, so their sum changes whenever either does. No table is
    read, so polling it is as cheap as SQLite's PRAGMA data_version (which it stands in for)."""
    row = conn.execute(
        "SELECT pg_snapshot_xmax(s)::text, pg_snapshot_xmin(s)::text FROM pg_current_snapshot() AS s"
    ).fetchone()
    return int(row[0]) + int(row[1])


def json_values(column: str, paths: list[str]) -> str:
    """SQL for a JSON array text of these dotted paths' values in a JSON text column."""
    items = ", ".join(f"wahook_json({column}) #> '{{{','.join(p.split('.'))}}}'" for p in paths)
    return f"json_build_array({items})::text"
