"""web_worker.py: the gevent web processes share new connections evenly, a process that is stopped
does not keep new clients waiting, and one that is starting, shutting down or gone is not waited
for."""

from __future__ import annotations

import json
import os
import signal
import socket
from types import SimpleNamespace

import psutil
import pytest

from gateway import web_worker
from tests.conftest import sign, status_update, wait_until

pytestmark = pytest.mark.engines("sqlite")  # gevent is SQLite's web worker (PostgreSQL: gthread)


def keep_alive_post(port: int, n: int) -> socket.socket:
    """A new connection that posts one signed status webhook, reads its 200, and stays open."""
    raw = json.dumps(status_update(f"wamid.SHARE{n:05d}")).encode()
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /api/webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: {sign(raw)}\r\nContent-Length: {len(raw)}\r\n\r\n"
    )
    conn.sendall(head.encode() + raw)
    answer = b""
    while not answer.endswith(b"\r\n\r\nok"):
        chunk = conn.recv(4096)
        assert chunk, f"the connection closed before its answer: {answer!r}"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return conn


def open_connections(worker: psutil.Process, port: int) -> int:
    return sum(1 for c in worker.net_connections(kind="tcp") if c.laddr.port == port and c.status == "ESTABLISHED")


def test_new_connections_go_to_the_process_that_holds_fewer(processes):
    """Clients that keep their connections (Meta, a proxy) stay with the process that took them:
    taken at random, one process could serve ten and run out of CPU while the other had six."""
    # Long enough that the process holding fewer always takes its connection first here, where
    # six test workers share two cores and a process may wait that long for one; and no
    # connection closed for being idle while the test counts them.
    processes.env["WAHOOK_BALANCE_WAIT"] = "0.2"
    processes.env["GUNICORN_CMD_ARGS"] = "--keep-alive 60"
    base = processes.start_web(workers=2)
    port = int(base.rsplit(":", 1)[1])
    master = next(p for p in processes.children if "gunicorn" in p.args)
    first, second = psutil.Process(master.pid).children()
    kept = []
    try:
        # Both processes started: a connection each (one starting yet does not count).
        wait_until(
            lambda: (
                kept.append(keep_alive_post(port, len(kept)))
                or min(open_connections(first, port), open_connections(second, port)) > 0
            ),
            timeout=30,
            message="both web processes to take a connection",
        )
        for conn in kept:
            conn.close()
        kept.clear()
        wait_until(lambda: open_connections(first, port) + open_connections(second, port) == 0)
        # One process stopped (stuck, or busy for long): the other takes every new connection
        # all the same, each after a moment at most.
        os.kill(second.pid, signal.SIGSTOP)
        try:
            kept += [keep_alive_post(port, n) for n in range(100, 110)]
        finally:
            os.kill(second.pid, signal.SIGCONT)
        assert (open_connections(first, port), open_connections(second, port)) == (10, 0)
        # Back, it takes the next ones until both hold as many (at random: about 15 and 5).
        kept += [keep_alive_post(port, n) for n in range(110, 120)]
        assert (open_connections(first, port), open_connections(second, port)) == (10, 10)
    finally:
        for conn in kept:
            conn.close()


def test_a_slot_counts_while_its_process_accepts_and_is_free_again_once_it_has_exited():
    counts = web_worker.Counts(slots=3)
    web_worker.counts, saved = counts, web_worker.counts
    try:
        a, b = SimpleNamespace(), SimpleNamespace()
        web_worker.pre_fork(a)
        web_worker.pre_fork(b)
        assert (a.connection_slot, b.connection_slot) == (0, 1)
        counts.open[a.connection_slot] = 3
        # b is starting: nobody leaves a connection to a process that does not accept yet.
        assert not counts.over_share(a.connection_slot)
        counts.state[b.connection_slot] = web_worker.ACCEPTING
        assert counts.over_share(a.connection_slot) and not counts.over_share(b.connection_slot)
        # b shuts down (or has exited): nobody waits for it any more.
        counts.state[b.connection_slot] = web_worker.QUIET
        assert not counts.over_share(a.connection_slot)
        web_worker.gone(b)
        replacement = SimpleNamespace()
        web_worker.pre_fork(replacement)
        assert replacement.connection_slot == 1 and counts.open[1] == 0
        web_worker.pre_fork(SimpleNamespace())
        # Past the slots, a process is still forked: it takes connections as they come.
        unbalanced = SimpleNamespace()
        web_worker.pre_fork(unbalanced)
        assert unbalanced.connection_slot is None
        web_worker.gone(unbalanced)
    finally:
        web_worker.counts = saved
