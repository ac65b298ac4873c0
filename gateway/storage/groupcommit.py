"""Group commit: on SQLite, intakes that arrive together share one transaction and one fsync.

SQLite has one writer at a time, and with `storage.synchronous = "full"` every commit waits for
the disk. Committing each webhook on its own made the request threads of a web process queue
for the lock and pay a whole commit each (its WAL pages, its fsync). Here a thread hands its
writes to `run` and waits. The first waiting thread becomes the leader: it waits a moment for
webhooks still being read and checked (`coming`), takes the write lock, then takes every write
queued by then and runs them in one transaction (below: the quick way, or with care). After
COMMIT returns, every thread of the batch gets its own result, so an intake still answers 200 only
once the transaction holding its webhook is on disk (SPEC 2, 5).

A batch is first written the quick way, in the order its writes arrived: no savepoints, and
each run of writes that can be written together (`together`: plain webhooks, intake/storing.py)
in a few statements for all of them rather than several each. Each statement is a moment the
leader lets go of Python's lock for SQLite and must win it back from the threads reading
requests, all while holding the write lock the other web processes wait for: fewer statements
under it is what makes intake faster.
If anything fails that way, the transaction is rolled back and the batch written again with
care: each write on its own, inside its own SAVEPOINT. One write that fails then (a constraint,
a trigger, a bug) is rolled back to its savepoint and gets its own error (Meta gets a 503 for
that webhook alone); the others are committed. If SQLite rolls back the whole transaction
instead (disk full, an I/O error), the writes that had not failed are run again in a new
transaction. When BEGIN or COMMIT fails, nothing of the batch is stored and every write of it
gets that error.

Every batch of a process runs on one connection (db.shared_connection), whichever thread leads: SQLite
keeps a page cache per connection and empties it when another connection has written since,
so batches on the leaders' own connections would each start from an empty cache.

Across processes SQLite's write lock already serialises the transactions; each web process
groups its own threads. PostgreSQL locks rows, not the database: there each write runs in its
own transaction on the thread's connection, as before.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from gateway.storage import concurrency, db, task_local

log = logging.getLogger("wahook.intake")

T = TypeVar("T")
# A function that runs many writes of one kind in one go, and one write's part of it: see `run`.
Together = tuple[Callable[[db.Connection, list[Any]], list[Any]], Any]

# How long a leader waits at most for writes still being prepared: about what preparing one
# takes, a fraction of what a commit costs. Waiting costs no CPU, and a bigger batch saves a
# commit's CPU (and its fsync) for each write it adds.
GATHER_WAIT = 0.002


class Write:
    """One thread's writes, queued for the next group commit, with what became of them."""

    __slots__ = ("error", "finished", "result", "together", "turn", "write")

    def __init__(self, write: Callable[[db.Connection], Any], together: Together | None = None) -> None:
        self.write = write
        self.together = together
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False
        # Held from the start; released once, when the write is finished or its thread is to
        # lead the next batch. Its thread alone waits on it, so nobody else is woken for nothing.
        self.turn = threading.Lock()
        self.turn.acquire()

    def finish(self) -> None:
        self.finished = True
        self.turn.release()


class Group:
    """The writes to one database waiting in this process, those being prepared, and whether a
    thread is committing a batch now."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # a write was queued or given up: the leader looks
        self.waiting: list[Write] = []
        self.coming = 0  # threads inside `coming()` that have not queued their write yet
        self.leading = False
        self.commits = 0  # batches committed (tests read these two)
        self.written = 0  # writes those batches held


class WriteWithCare(Exception):
    """A write of the batch failed the quick way: roll back, and write each on its own."""


class WholeTransactionLost(Exception):
    """The whole transaction must go because of `failed`: SQLite rolled it back (not only the
    savepoint), or `failed` was alone in it."""

    def __init__(self, failed: Write) -> None:
        super().__init__("the transaction was rolled back")
        self.failed = failed


_groups: dict[str, Group] = {}
_groups_lock = threading.Lock()
_local = threading.local()


def _forget_groups() -> None:
    global _groups_lock
    _groups.clear()
    _groups_lock = threading.Lock()


# A forked child must not inherit a parent's queue, its leader flag or its connection.
os.register_at_fork(after_in_child=_forget_groups)


def group_for(database: str | os.PathLike) -> Group:
    """This process's group for the SQLite database at `database`."""
    key = str(database)
    found = _groups.get(key)
    if found is None:
        with _groups_lock:
            found = _groups.setdefault(key, Group(key))
    return found


@contextmanager
def coming(database: str | os.PathLike) -> Iterator[None]:
    """Around the work that prepares a write (reading and checking a webhook): a leader about to
    commit waits a moment (GATHER_WAIT at most) for writes being prepared, so requests that
    arrived together are committed together even while the CPU, not the disk, is the limit."""
    if db.is_postgres(database):
        yield
        return
    group = group_for(database)
    with group.lock:
        group.coming += 1
    _local.coming = group
    try:
        yield
    finally:
        if getattr(_local, "coming", None) is group:  # it never queued a write (a 401, a 400...)
            _local.coming = None
            with group.lock:
                group.coming -= 1
                group.arrived.notify()


def run(database: str | os.PathLike, write: Callable[[db.Connection], T], together: Together | None = None) -> T:
    """`write(conn)`'s result, once the transaction that ran it is committed; or what it raised.

    On SQLite `write` may run on another thread, on the group's connection: it must use only
    the connection it is given, and may run again when a batch is rolled back (so it must not
    change anything outside the database). On PostgreSQL it runs here, in a (pipelined)
    transaction of its own on this thread's connection.

    `together`, (write_all, item): on SQLite writes in a row of a batch that name the same
    `write_all` may be written by one call instead, `write_all(conn, items)`, whose list of
    results is theirs, in order. It must store what their `write`s would, one after the other.
    """
    if db.is_postgres(database):
        conn = db.connection(database)
        # Statements go in batches (psycopg's pipeline mode): a round trip per read that needs
        # an earlier answer, not one per statement, for a database on another machine.
        with concurrency.pipelined_transaction(conn):
            return write(conn)
    group = group_for(database)
    mine = Write(write, together)
    with group.lock:
        group.waiting.append(mine)
        if getattr(_local, "coming", None) is group:
            _local.coming = None
            group.coming -= 1
        group.arrived.notify()
        lead = not group.leading
        group.leading = True
    if not lead:
        mine.turn.acquire()  # until a leader finished it, or handed this thread the lead
    if not mine.finished:
        try:
            if task_local.greenlet_workers():
                # Under gevent the greenlets whose requests have arrived run only when this one
                # yields: one turn of the loop first lets them check theirs and queue it, so they
                # join this batch instead of waiting for the next (batches grew, about 10 % less
                # CPU per webhook). Threads run beside the leader and need no such turn.
                time.sleep(0)
            with group.lock:
                gather(group)
            commit_waiting(group)
        finally:
            with group.lock:
                # The first write that arrived meanwhile leads next; none: nobody leads.
                following = group.waiting[0] if group.waiting else None
                group.leading = following is not None
            if following is not None:
                following.turn.release()
    if mine.error is not None:
        raise mine.error
    return mine.result


def gather(group: Group) -> None:
    """Wait (holding the group's lock) while writes are still being prepared, GATHER_WAIT at most."""
    deadline = time.monotonic() + GATHER_WAIT
    while group.coming > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        group.arrived.wait(left)


def commit_waiting(group: Group) -> None:
    """Run every write waiting in `group` in one transaction (again, without the write that cost
    the whole transaction, when SQLite rolled it back) and mark each finished. The leader's job."""
    batch: list[Write] | None = None
    committed = False
    careful = False
    try:
        conn = db.shared_connection(group.database)
        while True:
            try:
                with db.transaction(conn):
                    if batch is None:
                        batch = take_waiting(group)  # once the lock is ours: all that queued meanwhile
                    conn.memo = {}  # db.transaction_memo: read once for the batch, not per write
                    try:
                        if careful:
                            write_each(conn, batch)
                        else:
                            write_quickly(conn, batch)
                    finally:
                        conn.memo = None
                committed = True
                group.commits += 1
                group.written += len(batch)
            except WriteWithCare:
                careful = True
                for write in batch or []:
                    write.result = None
                continue
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
            write.finish()


def take_waiting(group: Group) -> list[Write]:
    with group.lock:
        batch, group.waiting = group.waiting, []
    return batch


def write_quickly(conn: db.Connection, batch: list[Write]) -> None:
    """Run the batch in the order it arrived, without savepoints: each run of writes in a row that
    can go together (the same write_all) by one call, any other write on its own; the order, and
    so what each write sees, is the one write_each keeps. WriteWithCare if anything raised."""
    together: list[Write] = []  # the run being gathered

    def write_together() -> None:
        results = together[0].together[0](conn, [write.together[1] for write in together])
        for write, result in zip(together, results, strict=True):
            write.result = result
        together.clear()

    try:
        for write in batch:
            if together and (write.together is None or write.together[0] is not together[0].together[0]):
                write_together()
            if write.together is None:
                write.result = write.write(conn)
            else:
                together.append(write)
        if together:
            write_together()
    except Exception as exc:
        log.warning("a batch of %d writes failed the quick way, written again one by one: %r", len(batch), exc)
        raise WriteWithCare from exc


def write_each(conn: db.Connection, batch: list[Write]) -> None:
    """Run each write inside its own savepoint; one that raises is undone alone and keeps its error.

    A write alone in its batch (the usual case while traffic is light) needs no savepoint: if it
    raises, the transaction is rolled back, which undoes it alone.
    """
    alone = len(batch) == 1
    for write in batch:
        if not alone:
            conn.execute("SAVEPOINT intake")
        try:
            write.result = write.write(conn)
        except Exception as exc:
            if alone or not conn.in_transaction:
                write.error = exc
                write.finish()  # its answer is final; the others, if any, are written again
                raise WholeTransactionLost(write) from exc
            conn.execute("ROLLBACK TO intake")
            write.error = exc
        if not alone:
            conn.execute("RELEASE intake")
