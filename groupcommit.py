"""Group commit: on SQLite, intakes that arrive together share one transaction and one fsync.

SQLite has one writer at a time, and with `storage.synchronous = "full"` every commit waits for
the disk. Committing each webhook on its own makes the request threads of a web process queue
for the lock and pay a commit (its WAL pages and its fsync) each. Here a thread hands its
writes to `run` and waits; the first waiting thread becomes the leader, takes the write lock,
then takes every write queued by then (those that arrived while the last batch was being
committed) and runs them in one transaction, each inside its own SAVEPOINT. After the COMMIT
returns, every thread of the batch gets its own result, so an intake still answers 200 only
once the transaction holding its webhook is on disk (SPEC 2, 5).

One write that fails (a constraint, a trigger, a bug) is rolled back to its savepoint and gets
its own error (Meta gets a 503 for that webhook alone); the others are committed. If SQLite
rolls back the whole transaction instead (disk full, an I/O error), the writes that had not
failed are run again in a new transaction. When BEGIN or COMMIT fails, nothing of the batch is
stored and every write of it gets that error.

Across processes SQLite's write lock already serialises the transactions; each web process
groups its own threads. PostgreSQL locks rows, not the database: there each write runs in its
own transaction, as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import db

T = TypeVar("T")


class Write:
    """One thread's writes, queued for the next group commit, with what became of them."""

    __slots__ = ("error", "finished", "result", "write")

    def __init__(self, write: Callable[[db.Connection], Any]) -> None:
        self.write = write
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False


class Group:
    """The writes waiting in this process, and whether a thread is committing a batch now."""

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.Lock())
        self.waiting: list[Write] = []
        self.leading = False
        self.commits = 0  # batches committed by this process (tests read it)


class WholeTransactionLost(Exception):
    """SQLite rolled back the whole transaction while `failed` ran (not only its savepoint)."""

    def __init__(self, failed: Write) -> None:
        super().__init__("the transaction was rolled back")
        self.failed = failed


_group = Group()


def _new_group() -> None:
    global _group
    _group = Group()


# A forked child must not inherit a parent's queue, or a leader flag no thread of its own will clear.
os.register_at_fork(after_in_child=_new_group)


def current() -> Group:
    return _group


def run(conn: db.Connection, write: Callable[[db.Connection], T]) -> T:
    """`write(conn)`'s result, once the transaction that ran it is committed; or what it raised.

    On SQLite `write` may run on another thread, with that thread's connection (it is passed
    in): it must use only the connection it is given, and may run again when SQLite rolled back a
    whole batch (it must not change anything of its own outside the database). On PostgreSQL it
    runs here, in a transaction of its own.
    """
    if db.engine(conn) != "sqlite":
        with db.transaction(conn):
            return write(conn)
    group = _group
    mine = Write(write)
    with group.changed:
        group.waiting.append(mine)
        while group.leading and not mine.finished:
            group.changed.wait()
        lead = not mine.finished
        if lead:
            group.leading = True
    if lead:
        try:
            commit_waiting(conn, group)
        finally:
            with group.changed:
                group.leading = False
                group.changed.notify_all()
    if mine.error is not None:
        raise mine.error
    return mine.result


def commit_waiting(conn: db.Connection, group: Group) -> None:
    """Run every write waiting in `group` in one transaction (again, without the write that cost
    the whole transaction, when SQLite rolled it back) and mark each finished. The leader's job."""
    batch: list[Write] | None = None
    committed = False
    try:
        while True:
            try:
                with db.transaction(conn):
                    if batch is None:
                        batch = take_waiting(group)  # once the lock is ours: all that queued meanwhile
                    write_each(conn, batch)
                committed = True
                group.commits += 1
            except WholeTransactionLost as lost:
                batch = [write for write in batch or [] if write is not lost.failed]
                for write in batch:
                    write.result = write.error = None
                if batch:
                    continue
            except db.Error as exc:
                # BEGIN found the database locked past the wait, or COMMIT failed: nothing is stored.
                if batch is None:
                    batch = take_waiting(group)
                for write in batch:
                    write.error = exc
            break
    finally:
        if batch is None:
            batch = take_waiting(group)
        for write in batch:
            # Nothing uncommitted counts as done, and no thread of the batch may wait for ever.
            if not committed and write.error is None:
                write.error = db.StorageError("the group commit was interrupted")
            write.finished = True


def take_waiting(group: Group) -> list[Write]:
    with group.changed:
        batch, group.waiting = group.waiting, []
    return batch


def write_each(conn: db.Connection, batch: list[Write]) -> None:
    """Run each write inside its own savepoint; one that raises is undone alone and keeps its error."""
    for write in batch:
        conn.execute("SAVEPOINT intake")
        try:
            write.result = write.write(conn)
        except Exception as exc:
            if not conn.in_transaction:
                write.error, write.finished = exc, True
                raise WholeTransactionLost(write) from exc
            conn.execute("ROLLBACK TO intake")
            write.error = exc
        conn.execute("RELEASE intake")
