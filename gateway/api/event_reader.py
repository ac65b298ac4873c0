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

PostgreSQL's writers do not take turns (several machines must not wait for each other), so
an id taken early may commit after a higher one. There each event also keeps the id of the
transaction that wrote it (`tx`, migration 10) and a position is (tx, id):

- a page reads only events whose transaction is below the oldest one still running
  (`pg_snapshot_xmin`): every transaction below it has ended, and every transaction that
  has not ended yet, or starts later, has a transaction id at or above it;
- so, in (tx, id) order, nothing can ever appear behind a position a reader has passed,
  and a reader waits at most as long as the oldest running transaction takes to end.

New events are noticed cheaply with db.CommitWatch (`PRAGMA data_version`), which changes on a
connection when any other connection commits, and is read without touching a table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from gateway.delivery import accounts
from gateway.delivery.outbox import OPERATIONAL, selects
from gateway.intake import event_names
from gateway.storage import db

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
    return event_names.clean_filter(text or "")


# Where a reader is: the row id on SQLite, (transaction id, row id) on PostgreSQL; 0 is the start.
Position = int | tuple[int, int]

_PG_PAGE = (
    "SELECT {columns}, tx::text AS tx FROM events"
    " WHERE (tx, id) > (CAST(? AS xid8), ?) AND tx < pg_snapshot_xmin(pg_current_snapshot()) AND {condition}"
    " ORDER BY events.tx, events.id LIMIT ?"
)
# ORDER BY names the table's column: a bare `tx` would be the text alias above, and as text
# 10 sorts before 9, so a page crossing such a boundary came out of order and the next repeated it.


def postgres(conn: db.Connection) -> bool:
    return db.engine(conn) == "postgresql"


def position(row: db.Row) -> Position:
    """The position just past this event, as `page` returned it."""
    return (int(row["tx"]), row["id"]) if "tx" in row.keys() else row["id"]  # noqa: SIM118 (sqlite3.Row)


def cursor_row(conn: db.Connection, event_id: str) -> Position:
    """The position of the event `event_id`; raises UnknownCursor when it is not stored."""
    if postgres(conn):
        row = conn.execute("SELECT id, tx::text AS tx FROM events WHERE event_id = ?", (event_id,)).fetchone()
    else:
        row = conn.execute("SELECT id FROM events WHERE event_id = ?", (event_id,)).fetchone()
    if row is None:
        raise UnknownCursor(event_id)
    return position(row)


def latest_row(conn: db.Connection) -> Position:
    """The newest committed event's position (0 when there is none): "from now on" as a cursor."""
    if postgres(conn):
        row = conn.execute(
            "SELECT id, tx::text AS tx FROM events WHERE tx < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY events.tx DESC, events.id DESC LIMIT 1"
        ).fetchone()
        return 0 if row is None else position(row)
    return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]


def page(
    conn: db.Connection, after_row: Position, limit: int, wanted: Iterable[str], account_ids: Iterable[str] = ()
) -> list[db.Row]:
    """Up to `limit` events after position `after_row` that the filters pick, oldest first: rows
    of (id, event_id, name, body as stored), and tx on PostgreSQL."""
    condition, params = filter_sql(wanted)
    account_ids = list(account_ids)
    if account_ids:
        extra, more = accounts.sql(account_ids)
        condition, params = f"{condition} AND {extra}", [*params, *more]
    return _read(conn, after_row, limit, "id, event_id, name, body", condition, params)


def page_of_all(conn: db.Connection, after_row: Position, limit: int) -> list[db.Row]:
    """Up to `limit` events after position `after_row`, whatever their name, with each one's
    waba_id and phone_number_id: for a reader that filters per client (the WebSocket hub)."""
    return _read(conn, after_row, limit, "id, event_id, name, body, waba_id, phone_number_id", "TRUE", [])


def _read(conn: db.Connection, after_row: Position, limit: int, columns: str, condition: str, params: list):
    """The page query of both engines: by id on SQLite, in commit order on PostgreSQL."""
    if postgres(conn):
        tx, row_id = after_row if isinstance(after_row, tuple) else (0, after_row or 0)
        sql = _PG_PAGE.format(columns=columns, condition=condition)
        return conn.execute(sql, (str(tx), row_id, *params, limit)).fetchall()
    return conn.execute(
        f"SELECT {columns} FROM events WHERE id > ? AND {condition} ORDER BY id LIMIT ?",  # noqa: S608 (our SQL)
        (after_row, *params, limit),
    ).fetchall()


def follow(
    conn: db.Connection,
    after_row: Position,
    wanted: list[str],
    poll_seconds: float,
    page_size: int = 200,
    keep_going: Callable[[], bool] = lambda: True,
    account_ids: Iterable[str] = (),
) -> Iterator[list[db.Row]]:
    """Each batch of events committed after position `after_row`, oldest first, as they come; an
    empty batch after every look that found nothing (then it waits `poll_seconds`), so the
    caller can send a keep-alive or stop. Reads a page only when something was committed."""
    watcher = db.CommitWatch(conn)
    more = True  # read once at the start: events may have come after the cursor already
    while keep_going():
        if more or watcher.changed():
            rows = page(conn, after_row, page_size, wanted, account_ids)
            more = len(rows) == page_size
            if rows:
                after_row = position(rows[-1])
                yield rows
                continue
        yield []
        time.sleep(poll_seconds)
