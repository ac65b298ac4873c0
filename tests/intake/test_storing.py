"""storing.py: the plain webhooks of a batch, written together with a few statements, leave the
database exactly as writing them one at a time does (rows, duplicates, stale statuses, the
deliveries of every kind of endpoint, the metric totals)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from functools import partial
from pathlib import Path

from gateway.delivery import endpoints
from gateway.intake import meta_parser, samples, storing, webhook
from gateway.storage import db, groupcommit

WAMID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI1RkM3NTE2QjVBQjY1NTRFRTQA"
OTHER = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJBMkI3RjYzOUQ1NkEwRTE5MTYA"
THIRD = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QzUxMzlDNzRBNUE1QjY4NDYA"
ANOTHER_ACCOUNT = "999999999999999"


def statuses(*pairs: tuple[str, str], waba: str = samples.WABA_ID) -> dict:
    body = samples.envelope([samples.statuses_change([samples.status(s, wamid_=w) for w, s in pairs])])
    body["entry"][0]["id"] = waba
    return body


def bodies() -> list[dict]:
    """Webhooks that exercise every rule write_together must keep, in the order they arrive."""
    return [
        statuses((WAMID, "read")),
        statuses((WAMID, "delivered")),  # behind `read`, a webhook earlier in the batch: stale
        statuses((WAMID, "read")),  # a retry of the first: a duplicate across webhooks
        statuses((OTHER, "sent"), (OTHER, "sent")),  # the same status twice in one body
        statuses((THIRD, "delivered"), (THIRD, "sent")),  # stale behind a status earlier in its body
        statuses((THIRD, "failed"), waba=ANOTHER_ACCOUNT),  # an account one endpoint does not take
        samples.envelope([samples.change("message_template_status_update", samples.template_value(event="APPROVED"))]),
        samples.envelope([samples.change("some_future_field", {"anything": [1, 2, 3]})]),  # a generic event
        statuses(("wamid.stored.before", "read")),  # a duplicate of one stored before the batch
    ]


def arrivals(items: list[dict], first: float = 1_750_000_000.0) -> list[storing.Arrival]:
    made = []
    for n, body in enumerate(items):
        raw = json.dumps(body).encode()
        arrival = webhook.arrival_of(raw, body, meta_parser.parse(body, first + n), first + n)
        arrival.public_id = f"whk_{int(first):012x}{n:012x}"  # the same in both databases
        made.append(arrival)
    return made


BEFORE = statuses(("wamid.stored.before", "read"))  # one body for every database: samples draw random times


def database(path: Path, config) -> sqlite3.Connection:
    """A migrated database with endpoints of every kind, and one status already stored."""
    conn = db.connect(path)
    db.migrate(conn)
    endpoints.create(conn, config, "http://127.0.0.1:9/all")
    endpoints.create(conn, config, "http://127.0.0.1:9/templates", events=["template.*"])
    endpoints.create(conn, config, "http://127.0.0.1:9/meta", format="meta", events=["message.status_updated"])
    endpoints.create(conn, config, "http://127.0.0.1:9/one-account", accounts=[samples.WABA_ID])
    endpoints.create(conn, config, "http://127.0.0.1:9/off", enabled=False)
    (before,) = arrivals([BEFORE], first=1_700_000_000.0)
    before.public_id = "whk_before"
    with db.transaction(conn):
        storing.write_one(before, conn)
    return conn


def contents(conn: sqlite3.Connection) -> dict[str, list]:
    """Everything the writes left, but the times a delivery is made at (each way reads the clock)."""
    found = {
        "webhooks": conn.execute(
            "SELECT id, webhook_id, received_at, object, fields, event_count, body, simulated FROM webhooks ORDER BY id"
        ).fetchall(),
        "events": conn.execute(
            "SELECT id, event_id, webhook_id, name, dedupe_key, created_at, body, customer, customer_user_id,"
            " message_id, waba_id, phone_number_id FROM events ORDER BY id"
        ).fetchall(),
        "deliveries": conn.execute(
            "SELECT endpoint_id, endpoint_url, event_id, webhook_id, event_name, message_id, state, attempts"
            " FROM deliveries ORDER BY endpoint_id, webhook_id, event_id"
        ).fetchall(),
        "metrics": conn.execute("SELECT kind, label, label2, value FROM metric_totals ORDER BY 1, 2, 3").fetchall(),
    }
    return {table: [tuple(row) for row in rows] for table, rows in found.items()}


def test_webhooks_written_together_are_stored_as_when_written_one_at_a_time(app, tmp_path):
    config = app.config["WAHOOK"]
    one_by_one, together = database(tmp_path / "one.db", config), database(tmp_path / "together.db", config)
    sent = bodies()  # made once: samples draw random timestamps and ids
    with db.transaction(one_by_one):
        expected = [storing.write_one(arrival, one_by_one) for arrival in arrivals(sent)]
    with db.transaction(together):
        got = storing.write_together(together, arrivals(sent))
    assert got == expected
    stored = contents(together)
    assert stored == contents(one_by_one)
    # What the rules above mean, seen in the rows: not only "the same as before".
    names = [json.loads(row[6]) for row in stored["events"]]
    behind = [(e["message_id"], e["status"]) for e in names if e.get("stale")]
    assert behind == [(WAMID, "delivered"), (THIRD, "sent")]
    assert [row[5] for row in stored["webhooks"]] == [1, 1, 1, 0, 1, 2, 1, 1, 1, 0]  # event counts
    assert {row[1] for row in stored["deliveries"]} == {
        "http://127.0.0.1:9/all",
        "http://127.0.0.1:9/templates",
        "http://127.0.0.1:9/meta",
        "http://127.0.0.1:9/one-account",
    }


class Counting:
    """A connection that keeps the statements run on it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, parameters=()):
        self.statements.append(sql)
        return self.conn.execute(sql, parameters)

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


def test_a_batch_of_status_webhooks_is_written_with_a_few_statements_for_all(app, tmp_path):
    """The point of writing together: each statement is a moment the leader must win Python's lock
    back while holding SQLite's write lock, so ten webhooks take as many statements as one."""
    conn = database(tmp_path / "few.db", app.config["WAHOOK"])
    for count in (1, 10):
        counting = Counting(conn)
        with db.transaction(conn):
            results = storing.write_together(
                counting, arrivals([statuses((f"wamid.{count}.{n}", "sent")) for n in range(count)], 1e9 * count)
            )
        assert [made for _, made in results] == [3] * count  # all, one-account and meta take each one
        # The stored keys, the next ids, the endpoints, and an insert into each table.
        assert [sql.split()[0] for sql in counting.statements] == ["SELECT"] * 3 + ["INSERT"] * 3
    assert conn.execute("SELECT count(*) FROM deliveries WHERE webhook_id > 1").fetchone()[0] == 33


def test_a_status_arriving_in_a_later_batch_is_still_found_stale(app, tmp_path):
    conn = database(tmp_path / "later.db", app.config["WAHOOK"])
    with db.transaction(conn):
        storing.write_together(conn, arrivals([statuses((WAMID, "read"))]))
    with db.transaction(conn):
        storing.write_together(conn, arrivals([statuses((WAMID, "delivered")), statuses((WAMID, "read"))], 2e9))
    rows = [json.loads(body) for (body,) in conn.execute("SELECT body FROM events WHERE message_id = ?", (WAMID,))]
    assert [(e["status"], e["stale"], e["current_status"]) for e in rows] == [
        ("read", False, "read"),
        ("delivered", True, "read"),
    ]


def test_a_batch_too_big_for_one_statement_is_split_and_stored_the_same(app, tmp_path):
    config = app.config["WAHOOK"]
    one_by_one, together = database(tmp_path / "one.db", config), database(tmp_path / "together.db", config)
    # 300 webhooks: more rows than one statement may bind values for, with retries among them.
    sent = [statuses((f"wamid.big.{n % 250}", ("sent", "delivered", "read")[n % 3])) for n in range(300)]
    with db.transaction(one_by_one):
        expected = [storing.write_one(arrival, one_by_one) for arrival in arrivals(sent)]
    counting = Counting(together)
    with db.transaction(together):
        got = storing.write_together(counting, arrivals(sent))
    assert got == expected
    assert contents(together) == contents(one_by_one)
    inserts = [sql.split()[2] for sql in counting.statements if sql.startswith("INSERT")]
    assert inserts.count("events") == 4  # 300 rows of 12 values, at most 999 values a statement


def test_a_batch_mixing_messages_and_statuses_is_stored_the_same_quickly_or_with_care(app, tmp_path):
    """Messages go one at a time and each run of statuses between them together (the quick way);
    written with care, every webhook goes one at a time. Both must leave the same rows: a status
    run reads what the message before it stored, and stale statuses follow arrival order."""
    config = app.config["WAHOOK"]
    message = samples.message("text", {"body": "hi"})
    other = samples.message("text", {"body": "again"})
    sent = [
        statuses((message["id"], "sent")),
        samples.incoming(message),  # contact events: one at a time
        statuses((message["id"], "read")),
        statuses((message["id"], "delivered")),  # behind `read`: stale
        samples.incoming(message),  # Meta's retry: a duplicate
        statuses((message["id"], "read")),  # a duplicate
        samples.incoming(other),
        statuses((other["id"], "delivered"), (message["id"], "sent")),
    ]
    outcome = {}
    for way, write in (("quick", groupcommit.write_quickly), ("careful", groupcommit.write_each)):
        conn = database(tmp_path / f"{way}.db", config)
        batch = [
            groupcommit.Write(partial(storing.write_one, a), (storing.write_together, a) if a.plain else None)
            for a in arrivals(sent)
        ]
        assert [w.together is not None for w in batch] == [True, False, True, True, False, True, False, True]
        with db.transaction(conn):
            write(conn, batch)
        outcome[way] = ([w.result for w in batch], contents(conn))
    assert outcome["quick"] == outcome["careful"]
    events = [json.loads(row[6]) for row in outcome["quick"][1]["events"]]
    about = [(e["status"], e["stale"]) for e in events if e.get("message_id") == message["id"] and "status" in e]
    assert about == [("sent", False), ("read", False), ("delivered", True)]  # retries and duplicates: nothing


def open_temporary_files() -> list[str]:
    """SQLite's temporary files this process holds open (named etilqs_*, deleted once opened)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if "etilqs_" in target:
                found.append(target)
    return found


class RollBack(Exception):
    """Raised inside db.transaction to undo it."""


def test_a_batch_into_a_full_database_makes_no_temporary_file_under_the_write_lock(app, tmp_path):
    """Each multi-row INSERT keeps a copy of the pages it changes. Once the indexes are a few pages
    deep that copy passed 64 KiB, and SQLite wrote it to a new temporary file on every batch, page
    by page, while holding the lock every other web process waits for. The group commit's
    connection keeps it in memory."""
    path = tmp_path / "full.db"
    database(path, app.config["WAHOOK"]).close()
    shared = db.shared_connection(path)
    for batch in range(40):  # 2,000 webhooks: every index is more than one page deep
        with db.transaction(shared):
            sent = [statuses((f"wamid.{batch}.{n}", "sent")) for n in range(50)]
            storing.write_together(shared, arrivals(sent, 1e9 + batch * 100))
    last = [statuses((f"wamid.last.{n}", "sent")) for n in range(8)]
    # Another connection keeps SQLite's default (a pruning DELETE's journal may be large): the
    # same batch there does make the file, so this database is full enough to show it.
    other = db.connect(path)
    with contextlib.suppress(RollBack), db.transaction(other):
        storing.write_together(other, arrivals(last, 2e9))
        assert open_temporary_files() != []
        raise RollBack
    other.close()
    with db.transaction(shared):
        storing.write_together(shared, arrivals(last, 2e9))
        assert open_temporary_files() == []  # the statement journal lives as long as the transaction
    assert shared.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 2_009
