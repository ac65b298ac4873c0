"""Reading stored events back in the order they were committed: pull, stream and `listen`.

The cursor is an `event_id` the reader already has; it is looked up to its row id, and the
next page is the rows after it. That is commit order because of how SQLite writes:

- Every write in wahook is `BEGIN IMMEDIATE ... COMMIT` (db.transaction), and SQLite lets one
  writer hold the write lock at a time, across every process on the database. Two web
  processes cannot interleave transactions, so they cannot commit out of id order.
- A new row id is max(id) + 1, taken inside the write lock. A transaction that starts after
  another committed sees its rows, so it takes higher ids; one that rolled back took ids
  no reader ever saw, and the next writer may take them again.
- So when a reader sees row N committed, every row below N that will ever be committed
  already is: a cursor at N never skips an event that a slower process commits later.

One gap: ids are max(id) + 1, so if pruning ever emptied the table (no event for a whole
retention period), ids would start again at 1 and a stream open through all of that would
wait for ids above its old cursor. A pull cursor then is unknown (422), which says so.

This holds for SQLite only. A database with concurrent writers (sequences handed out
before commit) would need its own commit sequence for the same promise.

New events are noticed cheaply with `PRAGMA data_version` (db.data_version), which changes on a connection
when any other connection commits, and is read without touching a table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import accounts
import db
import names
from outbox import OPERATIONAL, selects

# Events a bare filter leaves out: operational ones (as for endpoints) and test sends, which
# belong to the one endpoint they were sent to.
HIDDEN_BY_DEFAULT = sorted(OPERATIONAL | {"webhook.test"})
MAX_LIMIT = 1000


class UnknownCursor(LookupError):
    """The `after` event_id is not stored: never was, or pruned with its retention."""


def filter_sql(wanted: Iterable[str]) -> tuple[str, list]:
    """An SQL condition on `name` picking what the filter `wanted` picks (see outbox.selects)."""
    wanted = list(wanted)
    if not wanted:
        marks = ",".join("?" for _ in HIDDEN_BY_DEFAULT)
        return f"name NOT IN ({marks})", list(HIDDEN_BY_DEFAULT)
    clauses, params = [], []
    exact = [w for w in wanted if not w.endswith(".*")]
    if exact:
        clauses.append(f"name IN ({','.join('?' for _ in exact)})")
        params += exact
    for entry in wanted:
        if entry.endswith(".*"):
            # substr, not LIKE: `_` in a name would be a LIKE wildcard.
            clauses.append("substr(name, 1, ?) = ?")
            params += [len(entry) - 1, entry[:-1]]
    return "(" + " OR ".join(clauses) + ")", params


def picks(wanted: Iterable[str], name: str) -> bool:
    """What filter_sql picks, for one event name (the WebSocket hub filters rows itself)."""
    wanted = list(wanted)
    return name not in HIDDEN_BY_DEFAULT if not wanted else selects(wanted, name)


def parse_filter(text: str | None) -> list[str]:
    """`events=a,b` as filter entries; raises ValueError on an entry no event could match."""
    return names.clean_filter(text or "")


def cursor_row(conn: db.Connection, event_id: str) -> int:
    """The row id of the event `event_id`; raises UnknownCursor when it is not stored."""
    row = conn.execute("SELECT id FROM events WHERE event_id = ?", (event_id,)).fetchone()
    if row is None:
        raise UnknownCursor(event_id)
    return row[0]


def latest_row(conn: db.Connection) -> int:
    """The newest committed event's row id (0 when there is none): "from now on" as a cursor."""
    return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]


def page(
    conn: db.Connection, after_row: int, limit: int, wanted: Iterable[str], account_ids: Iterable[str] = ()
) -> list[db.Row]:
    """Up to `limit` events after row `after_row` that the filters pick, oldest first: rows of
    (id, event_id, name, body as stored)."""
    condition, params = filter_sql(wanted)
    account_ids = list(account_ids)
    if account_ids:
        extra, more = accounts.sql(account_ids)
        condition, params = f"{condition} AND {extra}", [*params, *more]
    return conn.execute(
        f"SELECT id, event_id, name, body FROM events WHERE id > ? AND {condition} ORDER BY id LIMIT ?",  # noqa: S608
        (after_row, *params, limit),
    ).fetchall()


class Watcher:
    """Tells whether anything was committed to the database since the last look."""

    def __init__(self, conn: db.Connection) -> None:
        self.conn = conn
        self.version = self._read()

    def _read(self) -> int:
        return db.data_version(self.conn)

    def changed(self) -> bool:
        now = self._read()
        if now != self.version:
            self.version = now
            return True
        return False


def follow(
    conn: db.Connection,
    after_row: int,
    wanted: list[str],
    poll_seconds: float,
    page_size: int = 200,
    keep_going: Callable[[], bool] = lambda: True,
    account_ids: Iterable[str] = (),
) -> Iterator[list[db.Row]]:
    """Each batch of events committed after row `after_row`, oldest first, as they come; an
    empty batch after every look that found nothing (then it waits `poll_seconds`), so the
    caller can send a keep-alive or stop. Reads a page only when something was committed."""
    watcher = Watcher(conn)
    more = True  # read once at the start: events may have come after the cursor already
    while keep_going():
        if more or watcher.changed():
            rows = page(conn, after_row, page_size, wanted, account_ids)
            more = len(rows) == page_size
            if rows:
                after_row = rows[-1]["id"]
                yield rows
                continue
        yield []
        time.sleep(poll_seconds)
