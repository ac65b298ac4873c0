"""The gevent web worker: gunicorn's own, except that the web processes share new connections evenly.

All of gunicorn's processes accept on one listening socket, and whichever wakes first takes the
next connection. Clients that keep their connections open (Meta's servers, a reverse proxy, a
benchmark's 16 connections) then stay with whichever process took them, and one process could
end up serving ten while the other served six: the first ran out of CPU while the second waited
for work, and intake varied by a quarter from one run to the next (docs/benchmarks.md).

Here every process counts its open connections in memory the master shares with the processes it
forks (`Counts`, one slot each: the master hands them out in gunicorn's pre_fork hook and takes
them back when the process has exited). A process holding more connections than another that
accepts too leaves the next one to the others, for BALANCE_WAIT at most: a process that is stuck
or busy does not keep a new client waiting longer than that. One that is still starting or is
shutting down does not count: nobody waits for it.
"""

from __future__ import annotations

import mmap
import os
import time

from gevent import monkey
from gunicorn.workers import ggevent

SLOTS = 64  # web processes alive at once, those being replaced included
# A slot's state: no process holds it; its process is starting or shutting down; it accepts.
FREE, QUIET, ACCEPTING = 0, 1, 2
# Seconds a process over its share leaves a new connection to the others: a few commits' time.
# WAHOOK_BALANCE_WAIT changes it (the tests give it longer: six of them share two cores).
BALANCE_WAIT = float(os.environ.get("WAHOOK_BALANCE_WAIT") or 0.02)
RECHECK = 0.0005  # seconds between two looks at a connection left to the others


class Counts:
    """Each web process's open connections and state, in anonymous shared memory: forked processes
    see (and write) the master's copy. A slot is written by one process at a time: the master
    before it forks the slot's process and after it has exited, that process in between."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.memory = mmap.mmap(-1, 9 * slots)  # MAP_SHARED and anonymous: one copy for every fork
        self.open = memoryview(self.memory)[: 8 * slots].cast("q")
        self.state = memoryview(self.memory)[8 * slots :]  # FREE, QUIET or ACCEPTING, a byte each

    def claim(self) -> int | None:
        """A free slot for a process about to start (the master, before it forks); None past
        SLOTS processes at once: that process takes connections as they come, unbalanced."""
        for slot, state in enumerate(self.state):
            if state == FREE:
                self.open[slot] = 0
                self.state[slot] = QUIET
                return slot
        return None

    def free(self, slot: int) -> None:
        self.state[slot] = FREE
        self.open[slot] = 0

    def over_share(self, slot: int) -> bool:
        """Whether the process in `slot` holds more open connections than another that accepts."""
        mine = self.open[slot]
        return any(self.state[n] == ACCEPTING and self.open[n] < mine for n in range(len(self.state)) if n != slot)

    def others_open(self, slot: int) -> int:
        """Open connections of every process that accepts, but the one in `slot`."""
        return sum(self.open[n] for n in range(len(self.state)) if n != slot and self.state[n] == ACCEPTING)


# select() itself, not gevent's: asked from the loop's own timer, it must not wait or switch.
_readable = monkey.get_original("select", "select")
counts = Counts()  # made in the master when gunicorn loads its settings, before any fork
_slot: int | None = None  # this process's slot, once forked


def pre_fork(worker) -> None:
    """gunicorn's pre_fork hook, in the master: a slot for the process about to be forked."""
    worker.connection_slot = counts.claim()


def gone(worker) -> None:
    """In the master, once the process has exited (child_exit, or worker_exit when gunicorn
    found it already gone): its slot is free again."""
    slot = getattr(worker, "connection_slot", None)
    if slot is not None:
        counts.free(slot)


class BalancedServer(ggevent.StreamServer):
    """gevent's StreamServer that leaves a new connection to the other processes while this one
    holds more than its share, BALANCE_WAIT at most."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.leaving_since: float | None = None  # since when the waiting connection was left to others
        self.others_seen = 0  # the other processes' open connections when last looked at
        self.recheck = None  # the timer that looks again at it

    def _do_read(self) -> None:
        """gevent's own (accept and serve), unless the connection waiting should go to another
        process: then stop watching the socket and look again in RECHECK."""
        if not self.leave_to_others():
            super()._do_read()
            return
        self.stop_accepting()
        # A new timer each time: a libev timer that has fired once fires at once when restarted.
        self.recheck = self.loop.timer(RECHECK)
        self.recheck.start(self.look_again)

    def leave_to_others(self) -> bool:
        if _slot is None or not counts.over_share(_slot):
            self.leaving_since = None
            return False
        now = time.monotonic()
        others = counts.others_open(_slot)
        # The connection waiting is the oldest (connections are accepted in the order they came):
        # once another process has taken one more, this is a new one to leave, with a wait of its own.
        if self.leaving_since is None or others > self.others_seen:
            self.leaving_since = now
        self.others_seen = others
        if now - self.leaving_since >= BALANCE_WAIT:
            self.leaving_since = None
            return False  # nobody else took it in time: take it
        return True

    def look_again(self) -> None:
        """RECHECK after leaving a connection to the others: if one of them took it, the next
        connection is a new one to leave (its own BALANCE_WAIT); if not, this one waits on."""
        if self.closed:
            return
        if not _readable([self.socket], [], [], 0)[0]:
            self.leaving_since = None
        self._start_accepting_if_started()

    def stop_accepting(self) -> None:
        super().stop_accepting()
        if self.recheck is not None:
            self.recheck.close()
            self.recheck = None

    def close(self) -> None:
        """The process stops accepting (it is shutting down): the others no longer wait for it."""
        if _slot is not None:
            counts.state[_slot] = QUIET
        super().close()


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker, counting its open connections and accepting through BalancedServer."""

    def run(self) -> None:
        global _slot
        _slot = getattr(self, "connection_slot", None)
        # gunicorn's run() builds its servers from this module global; this process is the worker's
        # own, so the servers it builds here are balanced ones.
        ggevent.StreamServer = BalancedServer
        if _slot is not None:
            counts.state[_slot] = ACCEPTING  # its servers start in a moment, in run()
        super().run()

    def handle(self, listener, client, addr) -> None:
        """Serve one connection (gunicorn's own handling) while it counts as open."""
        if _slot is None:
            super().handle(listener, client, addr)
            return
        counts.open[_slot] += 1
        try:
            super().handle(listener, client, addr)
        finally:
            counts.open[_slot] -= 1
