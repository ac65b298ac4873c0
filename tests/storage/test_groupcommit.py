"""Group commit on SQLite: webhooks that arrive together share one transaction and one fsync,
each is answered only after the commit that holds it, and one that cannot be stored does not
fail the others stored with it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import sign, status_update, wait_until
from gateway.delivery import outbox
from gateway.storage import db, groupcommit

URL = "/api/webhooks/whatsapp"
POISON = "wamid.POISON"
# A webhook this trigger refuses cannot be stored, as a full disk or a broken row would refuse it.
REFUSE_POISON = (
    "CREATE TRIGGER refuse_poison BEFORE INSERT ON events WHEN NEW.body LIKE '%POISON%'"
    " BEGIN SELECT RAISE(ABORT, 'this webhook cannot be stored'); END"
)


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "group.db"
    conn = db.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, writer TEXT NOT NULL, part INTEGER NOT NULL)")
    conn.execute(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON notes WHEN NEW.writer LIKE 'poison%'"
        " BEGIN SELECT RAISE(ABORT, 'this write cannot be stored'); END"
    )
    conn.close()
    yield path
    db.close_all()


def stored(path) -> list[tuple[str, int]]:
    """What another connection sees committed: (writer, part) rows, in order."""
    reader = sqlite3.connect(path)
    try:
        return reader.execute("SELECT writer, part FROM notes ORDER BY id").fetchall()
    finally:
        reader.close()


def writer(name: str, then=None):
    """A write of two rows for `name`; `then(conn)` runs between them (to fail half way)."""

    def write(conn):
        conn.execute("INSERT INTO notes (writer, part) VALUES (?, 1)", (name.replace("poison", "ok"),))
        if then is not None:
            then(conn)
        conn.execute("INSERT INTO notes (writer, part) VALUES (?, 2)", (name,))
        return name

    return write


def submit_together(path, writes: dict) -> dict:
    """Run `writes` (name -> write) from one thread each while another connection holds the write
    lock, release it once all of them wait, and return name -> ("ok", result, committed rows seen
    right after) or ("error", the exception)."""
    blocker = db.connect(path)
    blocker.execute("BEGIN IMMEDIATE")
    group = groupcommit.group_for(path)
    commits_before = group.commits
    outcomes: dict = {}

    def one(name: str, write) -> None:
        together = None
        if isinstance(write, tuple):  # (write, (write_all, item)): it may be written with others
            write, together = write
        try:
            result = groupcommit.run(path, write, together)
        except Exception as exc:  # noqa: BLE001 - the test reads which error each write got
            outcomes[name] = ("error", exc)
        else:
            # Whatever is returned must already be committed: another connection sees it now.
            outcomes[name] = ("ok", result, stored(path))

    threads = [threading.Thread(target=one, args=item) for item in writes.items()]
    for thread in threads:
        thread.start()
    # One thread leads and waits for the lock; every other one waits in the queue behind it.
    wait_until(lambda: len(group.waiting) == len(writes), message="every write to be queued")
    blocker.execute("COMMIT")
    blocker.close()
    for thread in threads:
        thread.join(timeout=30)
    outcomes["commits"] = group.commits - commits_before
    return outcomes


def test_writes_that_arrive_together_share_one_commit_and_return_after_it(database):
    names = [f"w{n}" for n in range(8)]
    outcomes = submit_together(database, {name: writer(name) for name in names})
    assert outcomes.pop("commits") == 1
    for name in names:
        kind, result, seen = outcomes[name]
        assert (kind, result) == ("ok", name)
        assert (name, 1) in seen and (name, 2) in seen
    rows = stored(database)
    assert sorted(rows) == sorted((name, part) for name in names for part in (1, 2))
    # Each write's rows are together: the writes ran one after another, not interleaved.
    assert [rows[i][0] for i in range(0, len(rows), 2)] == [rows[i][0] for i in range(1, len(rows), 2)]


def test_a_write_that_fails_is_undone_alone_and_the_others_are_committed(database):
    writes = {f"w{n}": writer(f"w{n}") for n in range(6)}
    writes["poison"] = writer("poison")  # its first row is stored, then its second is refused
    outcomes = submit_together(database, writes)
    assert outcomes.pop("commits") == 1
    kind, error = outcomes.pop("poison")
    assert kind == "error" and isinstance(error, sqlite3.IntegrityError)
    assert "cannot be stored" in str(error)
    assert all(outcome[0] == "ok" for outcome in outcomes.values())
    rows = stored(database)
    assert sorted(rows) == sorted((f"w{n}", part) for n in range(6) for part in (1, 2))
    assert ("ok", 1) not in rows  # the refused write's first row went with it


def test_a_write_that_costs_the_whole_transaction_fails_alone_and_the_rest_are_written_again(database):
    def lose_everything(conn):
        # As SQLite does after a full disk or an I/O error: the whole transaction is gone.
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    writes = {f"w{n}": writer(f"w{n}") for n in range(4)}
    writes["lost"] = writer("lost", then=lose_everything)
    writes.update({f"v{n}": writer(f"v{n}") for n in range(3)})
    outcomes = submit_together(database, writes)
    assert outcomes.pop("commits") == 1
    kind, error = outcomes.pop("lost")
    assert kind == "error" and "disk is full" in str(error)
    assert {name: outcome[0] for name, outcome in outcomes.items()} == dict.fromkeys(outcomes, "ok")
    assert sorted(stored(database)) == sorted((name, part) for name in outcomes for part in (1, 2))


def test_a_write_that_raises_outside_the_database_gets_its_error_and_the_others_are_committed(database):
    def bug(conn):
        raise KeyError("a parser bug")

    writes = {"w0": writer("w0"), "buggy": writer("buggy", then=bug), "w1": writer("w1")}
    outcomes = submit_together(database, writes)
    kind, error = outcomes.pop("buggy")
    assert kind == "error" and isinstance(error, KeyError)
    assert sorted(stored(database)) == [("w0", 1), ("w0", 2), ("w1", 1), ("w1", 2)]


def write_all(conn, names: list[str]) -> list[str]:
    """Every named write's two rows in one statement: what `writer` does for each, one after the other."""
    write_all.calls.append(list(names))
    rows = [value for name in names for value in (name.replace("poison", "ok"), 1, name, 2)]
    marks = ",".join("(?, ?)" for _ in range(len(rows) // 2))
    conn.execute(f"INSERT INTO notes (writer, part) VALUES {marks}", rows)  # noqa: S608
    return [f"{name} together" for name in names]


def test_writes_that_go_together_are_written_by_one_call(database):
    write_all.calls = []
    outcomes = submit_together(database, {f"t{n}": (writer(f"t{n}"), (write_all, f"t{n}")) for n in range(5)})
    assert outcomes.pop("commits") == 1
    assert {name: outcome[:2] for name, outcome in outcomes.items()} == {
        name: ("ok", f"{name} together") for name in outcomes
    }
    assert [sorted(call) for call in write_all.calls] == [sorted(outcomes)]  # one call for the five
    assert sorted(stored(database)) == sorted((f"t{n}", part) for n in range(5) for part in (1, 2))


def test_the_quick_way_keeps_the_order_the_writes_arrived_in(database):
    """What a write reads (a status stored before it, say) must not depend on whether its batch was
    written quickly or with care: a write that cannot go together splits the run around it."""
    write_all.calls = []
    names = ["t0", "t1", "alone", "t2", "t3"]
    batch = [groupcommit.Write(writer(name), None if name == "alone" else (write_all, name)) for name in names]
    conn = db.shared_connection(database)
    with db.transaction(conn):
        groupcommit.write_quickly(conn, batch)
    assert write_all.calls == [["t0", "t1"], ["t2", "t3"]]
    assert [write.result for write in batch] == ["t0 together", "t1 together", "alone", "t2 together", "t3 together"]
    assert stored(database) == [(name, part) for name in names for part in (1, 2)]


def test_when_writing_together_fails_each_is_written_alone_and_only_the_bad_one_fails(database):
    write_all.calls = []
    writes = {name: (writer(name), (write_all, name)) for name in ("t0", "poison", "t1", "t2")}
    outcomes = submit_together(database, writes)
    assert outcomes.pop("commits") == 1
    kind, error = outcomes.pop("poison")
    assert kind == "error" and "cannot be stored" in str(error)
    # Written again one by one, with care: each result is its own write's, not write_all's.
    assert {name: outcome[:2] for name, outcome in outcomes.items()} == {name: ("ok", name) for name in outcomes}
    assert len(write_all.calls) == 1
    assert sorted(stored(database)) == sorted((name, part) for name in ("t0", "t1", "t2") for part in (1, 2))


def test_one_write_alone_is_committed_at_once(database):
    assert groupcommit.run(database, writer("alone")) == "alone"
    assert stored(database) == [("alone", 1), ("alone", 2)]
    assert not db.shared_connection(database).in_transaction


def test_a_write_alone_that_fails_is_undone_and_the_next_one_is_committed(database):
    with pytest.raises(sqlite3.IntegrityError, match="cannot be stored"):
        groupcommit.run(database, writer("poison"))
    assert stored(database) == []  # its first row went with it
    assert groupcommit.run(database, writer("after")) == "after"
    assert stored(database) == [("after", 1), ("after", 2)]


def test_a_webhook_that_cannot_be_stored_is_answered_503_and_the_others_200(processes, tmp_path):
    """Over HTTP, many webhooks at once into one web process: only the one the database
    refuses gets a 503 (Meta retries it), every other is answered 200 and stored."""
    base = processes.start_web(workers=1)
    conn = db.connect(tmp_path / "data" / "wahook.db")
    conn.execute(REFUSE_POISON)
    bodies = [json.dumps(status_update(f"wamid.GROUP{n}")).encode() for n in range(60)]
    bodies.insert(30, json.dumps(status_update(POISON)).encode())

    def post(raw: bytes) -> int:
        return requests.post(base + URL, data=raw, headers={"X-Hub-Signature-256": sign(raw)}, timeout=30).status_code

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, bodies))
    assert answers.count(503) == 1 and answers[30] == 503
    assert answers.count(200) == 60
    stored_ids = {row[0] for row in conn.execute("SELECT message_id FROM events")}
    assert stored_ids == {f"wamid.GROUP{n}" for n in range(60)}
    assert conn.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 60
    conn.close()


def test_every_webhook_answered_200_is_stored_when_the_server_dies_right_after(processes, tmp_path):
    """Post from 16 connections, kill every web process without warning as soon as a few hundred
    200s are in, then open the database: every webhook that got its 200 is there."""
    base = processes.start_web(workers=2, own_group=True)
    web = processes.children[-1]
    acknowledged: list[str] = []
    stop = threading.Event()

    def post_until_stopped(sender: int) -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            wamid = f"wamid.KILL{sender}x{n}"
            n += 1
            raw = json.dumps(status_update(wamid)).encode()
            try:
                answer = session.post(base + URL, data=raw, headers={"X-Hub-Signature-256": sign(raw)}, timeout=10)
            except requests.RequestException:
                return  # the server is gone
            if answer.status_code == 200:
                acknowledged.append(wamid)

    senders = [threading.Thread(target=post_until_stopped, args=(n,)) for n in range(16)]
    for sender in senders:
        sender.start()
    wait_until(lambda: len(acknowledged) >= 300, timeout=60, message="300 webhooks acknowledged")
    os.killpg(web.pid, signal.SIGKILL)  # the master and its workers at once, mid-flight
    stop.set()
    for sender in senders:
        sender.join(timeout=30)
    web.wait()
    conn = db.connect(tmp_path / "data" / "wahook.db")
    try:
        kept = {row[0] for row in conn.execute("SELECT message_id FROM events")}
    finally:
        conn.close()
    missing = set(acknowledged) - kept
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged webhooks were not stored"


def test_webhooks_refused_or_stored_leave_nobody_expected(app, post_webhook):
    """A leader waits for webhooks still being checked; one refused before it was stored (a bad
    signature, a body that is not JSON) must not stay expected, or every later commit would wait."""
    group = groupcommit.group_for(app.config["WAHOOK"].database)
    assert post_webhook(status_update("wamid.COUNTED")).status_code == 200
    assert post_webhook(status_update("wamid.REFUSED"), secret="not-the-secret").status_code == 401
    assert post_webhook(b"not json").status_code == 400
    assert group.coming == 0
    assert group.waiting == [] and not group.leading
    assert group.written >= 1


def test_a_batch_reads_the_endpoints_once_and_the_next_batch_reads_them_again(tmp_path):
    path = tmp_path / "wahook.db"
    conn = db.connect(path)
    db.migrate(conn)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, writer TEXT NOT NULL, part INTEGER NOT NULL)")
    conn.execute("INSERT INTO endpoints (url, secret, created_at, updated_at) VALUES ('https://a.example/', 's', 1, 1)")
    reads: list[str] = []
    db.shared_connection(path).set_trace_callback(lambda sql: reads.append(sql) if "FROM endpoints" in sql else None)

    def fan_out(conn):
        return [target.url for target in outbox.targets(conn)]

    first = submit_together(path, {f"w{n}": fan_out for n in range(6)})
    assert first.pop("commits") == 1 and len(first) == 6
    assert all(outcome[:2] == ("ok", ["https://a.example/"]) for outcome in first.values())
    assert len(reads) == 1
    # An endpoint changed between two batches: the next batch sees it, whatever the last one read.
    conn.execute("UPDATE endpoints SET url = 'https://b.example/'")
    second = submit_together(path, {f"w{n}": fan_out for n in range(3)})
    assert second.pop("commits") == 1 and len(second) == 3
    assert all(outcome[:2] == ("ok", ["https://b.example/"]) for outcome in second.values())
    assert len(reads) == 2
    # Outside a batch (a transaction of a thread's own) every call reads them.
    own = db.connect(path)
    with db.transaction(own):
        assert db.transaction_memo(own) is None
        assert [t.url for t in outbox.targets(own)] == ["https://b.example/"]
    own.close()
    conn.close()
