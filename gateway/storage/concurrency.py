"""What lets writers on PostgreSQL go side by side (SPEC 9: several machines, no lock or row
that every transaction takes): a lock per customer or message instead of one for all,
statements sent in batches to a database on another machine, and counter rows per session.

On SQLite each of these is what it always was (one writer at a time needs none of them), so
callers use them whatever the engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from gateway.storage.db import Connection, engine, rollback, transaction


def lock_keys(conn: Connection, keys: Iterable[str]) -> None:
    """Until the commit, hold a lock on each of `keys` (a customer, a message): a transaction
    that names one of them too waits for this one to commit, then sees what it wrote; every
    other transaction goes on. Call inside a transaction, before reading what the keys guard.

    SQLite needs nothing: its write lock already makes every writer wait. On PostgreSQL each
    key is an advisory lock on a 64-bit hash of it (a collision only makes two transactions
    take turns), taken in one statement and in ascending order, so two transactions that
    share several keys cannot deadlock.
    """
    if engine(conn) != "postgresql":
        return
    hashed = sorted({key_hash(key) for key in keys})
    if hashed:
        conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(? AS bigint[])) AS k", (hashed,))


def key_hash(key: str) -> int:
    """A signed 64-bit hash of `key`, the same in every process (Python's hash() is not)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def pipelined_transaction(conn: Connection) -> Iterator[Connection]:
    """`transaction`, with PostgreSQL sent statements in batches (psycopg's pipeline mode).

    A statement waits for the server only when its result is read (fetchone, fetchall), and
    then everything sent before it comes back in the same round trip, BEGIN included; COMMIT
    goes with what is left. So a caller that sends first and reads late pays a round trip per
    read that needs an earlier answer, not one per statement: what costs when the database
    is on another machine. On SQLite (no network) it is `transaction` itself.
    """
    if engine(conn) != "postgresql":
        with transaction(conn) as same:
            yield same
        return
    try:
        with conn.raw.pipeline():
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
    except BaseException:
        rollback(conn)  # out of the pipeline now: the failed transaction is ended here
        raise


def fold_counter_shards(conn: Connection) -> int:
    """On PostgreSQL, fold the counter rows of database sessions that have ended into shard 0,
    so the rows a scrape sums stay about as many as the sessions alive. Returns rows folded.

    Each session adds to its own rows (migration 10), so no two intakes wait on one counter.
    A row of a live session is left alone: folding it would make that session wait.
    """
    if engine(conn) != "postgresql":
        return 0
    with transaction(conn):
        return conn.execute(
            "WITH gone AS (DELETE FROM metric_totals WHERE shard <> 0"
            " AND shard NOT IN (SELECT pid FROM pg_stat_activity) RETURNING kind, label, label2, value),"
            " summed AS (SELECT kind, label, label2, sum(value) AS value, count(*) AS n FROM gone"
            " GROUP BY kind, label, label2),"
            " added AS (INSERT INTO metric_totals (kind, label, label2, shard, value)"
            " SELECT kind, label, label2, 0, value FROM summed ON CONFLICT (kind, label, label2, shard)"
            " DO UPDATE SET value = metric_totals.value + excluded.value)"
            " SELECT coalesce(sum(n), 0) FROM summed"
        ).fetchone()[0]
