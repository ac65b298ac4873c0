"""The web processes' gevent workers (gunicorn.conf.py): what a greenlet per request must not
change for a user. A flood of new client connections opens no more database connections than
WAHOOK_WEB_THREADS, connections go from one request to the next, PostgreSQL's waits let the
other requests of a process go on, and threads (gthread, PostgreSQL's default) still serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from gateway.storage import db
from tests.conftest import ROOT, sign, status_update, write_config

pytestmark = pytest.mark.engines


def post_on_a_new_connection(base: str, n: int) -> tuple[int, str]:
    """A signed status webhook, then the health check (which reads the database), each on a
    connection of its own that closes after it; (the POST's status, the database's health)."""
    raw = json.dumps(status_update(f"wamid.FLOOD{n:05d}")).encode()
    headers = {"X-Hub-Signature-256": sign(raw), "Connection": "close"}
    with requests.Session() as session:
        status = session.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=30).status_code
        health = session.get(base + "/healthz", headers={"Connection": "close"}, timeout=30).json()["database"]
    return status, health


def open_connections(processes, storage_database: str, engine: str) -> int:
    """Connections the web processes hold to the database now."""
    if engine == "postgresql":
        conn = db.connect(storage_database)
        try:
            mine = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s"
            return conn.execute(query.replace("%s", "?"), (mine,)).fetchone()[0]
        finally:
            conn.close()
    web = [p for p in processes.children if "gunicorn" in p.args]
    count = 0
    for master in web:
        for worker in psutil.Process(master.pid).children():
            count += sum(1 for f in worker.open_files() if f.path == os.path.realpath(storage_database))
    return count


def test_a_flood_of_new_connections_opens_no_more_database_connections_than_web_threads(
    processes, storage_database, engine
):
    processes.env["WAHOOK_WEB_WORKER_CLASS"] = "gevent"  # PostgreSQL's default is gthread
    processes.env["WAHOOK_WEB_THREADS"] = "10"
    base = processes.start_web(workers=1)
    most, flooding = [0], threading.Event()

    def watch() -> None:  # the most connections open at any moment of the flood
        while not flooding.wait(0.05):
            most[0] = max(most[0], open_connections(processes, storage_database, engine))

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(lambda n: post_on_a_new_connection(base, n), range(240)))
    flooding.set()
    watcher.join()
    assert answers == [(200, "ok")] * 240  # every webhook stored, every health check answered
    after_flood = open_connections(processes, storage_database, engine)
    # 10 requests at a time, each with its own connection, plus the group commit's (SQLite) and
    # the WebSocket hub's; a greenlet each would be up to 60.
    assert max(most[0], after_flood) <= 12, (most[0], after_flood)
    for n in range(30):  # one client after the other, each on a new connection: none opens one
        assert post_on_a_new_connection(base, 1000 + n) == (200, "ok")
    assert open_connections(processes, storage_database, engine) <= after_flood


@pytest.mark.engines("sqlite")
def test_threads_still_serve_with_web_worker_class_gthread(processes):
    processes.env["WAHOOK_WEB_WORKER_CLASS"] = "gthread"
    base = processes.start_web(workers=1)
    assert post_on_a_new_connection(base, 1) == (200, "ok")
    logs = "".join(log.read_text() for log in processes.tmp_path.glob("gunicorn-*.log"))
    assert "Using worker: gthread" in logs


def test_the_web_workers_are_gevent_on_sqlite_and_threads_on_postgresql(processes, engine):
    base = processes.start_web(workers=1)
    assert post_on_a_new_connection(base, 1) == (200, "ok")
    logs = "".join(log.read_text() for log in processes.tmp_path.glob("gunicorn-*.log"))
    worker = "gateway.web_worker.GeventWorker" if engine == "sqlite" else "gthread"  # gevent, shared evenly
    assert f"Using worker: {worker}" in logs


@pytest.mark.engines("postgresql")
def test_the_master_checks_postgresql_without_loading_psycopg(tmp_path, storage_database):
    """psycopg picks its way of waiting when first imported: in the master, before the workers
    patch for gevent, it would pick one that holds up every other request of a web process."""
    config = write_config(tmp_path / "config.toml", {"storage": {"database": storage_database}})
    probe = textwrap.dedent(
        """
        import runpy, sys
        settings = runpy.run_path("gunicorn.conf.py")
        settings["on_starting"](None)
        print(sorted(name for name in sys.modules if name.split(".")[0] in ("psycopg", "gevent")))
        """
    )
    env = {**os.environ, "WAHOOK_CONFIG": str(config)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.engines("sqlite")
def test_a_request_hands_its_connection_to_the_next_and_a_thread_keeps_its_own(tmp_path):
    """Under gevent, as a web process runs: a connection goes to the next request once its own
    ended; one left inside a transaction is closed instead; threads keep theirs."""
    program = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import gevent, threading
        from gateway.storage import db, task_local

        path = {str(tmp_path / "wahook.db")!r}
        def request():
            conn = db.connection(path)
            task_local.hand_on_all()
            return conn
        first = gevent.spawn(request).get()
        second = gevent.spawn(request).get()
        def left_open():
            conn = db.connection(path)
            conn.execute("BEGIN")
            task_local.hand_on_all()
            return conn
        stuck = gevent.spawn(left_open).get()
        third = gevent.spawn(request).get()
        print(first is second, stuck is not third)
        try:
            stuck.execute("SELECT 1")
            print("open")
        except Exception:
            print("closed")
        mine = db.connection(path)
        task_local.hand_on_all()  # in a thread's own greenlet: nothing moves
        print(db.connection(path) is mine)
        """
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "closed", "True"]


@pytest.mark.engines("sqlite")
def test_a_long_read_of_an_admin_page_lets_the_other_requests_of_its_process_go_on(tmp_path):
    """The monitor's day of attempts can take most of a second: under gevent, read on the
    request's own greenlet it would hold up Meta's POSTs in the same process that long."""
    program = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import gevent, sys, time
        from gateway.storage import db

        path = sys.argv[1]
        slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000)"
                " SELECT count(*) FROM c")
        def served_meanwhile(read):
            ticks = []
            def other_requests():
                while True:
                    ticks.append(time.monotonic())
                    gevent.sleep(0.005)
            ticker = gevent.spawn(other_requests)
            gevent.sleep(0.02)
            before = len(ticks)
            answer = gevent.spawn(read).get()
            ticker.kill()
            assert answer == 2000000, answer
            return len(ticks) - before
        conn = db.connection(path)
        print(served_meanwhile(lambda: conn.execute(slow).fetchone()[0]))
        print(served_meanwhile(lambda: db.read_aside(conn, slow)[0][0]))
        """
    )
    command = [sys.executable, "-c", program, str(tmp_path / "wahook.db")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    on_the_greenlet, aside = (int(n) for n in result.stdout.split())
    assert on_the_greenlet <= 1  # nothing else ran while SQLite counted
    assert aside >= 10  # the other greenlet ran all along (a tick every 5 ms)


@pytest.mark.engines("sqlite")
def test_a_file_answer_stays_the_servers_own_and_every_answer_frees_its_slot(tmp_path):
    """Media and static files keep going out by sendfile (gunicorn does that only for its own
    file wrapper), and a request slot comes back even when an answer's own close() fails."""
    from gunicorn.http.wsgi import FileWrapper

    from gateway.intake import wsgi

    wsgi.configure(1)
    try:
        path = tmp_path / "media.bin"
        path.write_bytes(b"x" * 100)
        environ = {"wsgi.file_wrapper": FileWrapper}
        file = path.open("rb")
        wsgi._slots.acquire()
        answer = wsgi.finishing(FileWrapper(file), environ)
        assert isinstance(answer, FileWrapper)
        answer.close()
        assert file.closed and wsgi._slots.acquire(blocking=False)

        class Failing:
            def __iter__(self):
                return iter([b"ok"])

            def close(self):
                raise OSError("the client went away")

        answer = wsgi.finishing(Failing(), environ)
        assert list(answer) == [b"ok"]
        with pytest.raises(OSError):
            answer.close()
        assert wsgi._slots.acquire(blocking=False)  # freed by the failed close as well
    finally:
        wsgi._slots = None


@pytest.mark.engines("sqlite")
def test_webhooks_that_arrived_together_share_one_commit_under_gevent(tmp_path):
    """Under gevent the greenlets whose requests have arrived run only when the leader yields:
    the leader gives them a turn before it commits, so they join its batch."""
    program = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import gevent, sys
        from gateway.storage import db, groupcommit

        path = sys.argv[1]
        db.connection(path).execute("CREATE TABLE arrivals (n INTEGER)")
        def arrive(n):
            return groupcommit.run(path, lambda conn: conn.execute("INSERT INTO arrivals VALUES (?)", (n,)).rowcount)
        answers = [job.get() for job in [gevent.spawn(arrive, n) for n in range(8)]]
        group = groupcommit.group_for(path)
        print(sum(answers), group.commits, group.written)
        """
    )
    command = [sys.executable, "-c", program, str(tmp_path / "wahook.db")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8", "1", "8"]  # all 8 stored, in one commit
