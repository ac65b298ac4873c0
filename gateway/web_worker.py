"""The gevent web worker: gunicorn's own, except that the web processes share new connections evenly.

All of gunicorn's processes accept on one listening socket, and whichever wakes first takes the
next connection. Clients that keep their connections open (Meta's servers, a reverse proxy, a
benchmark's 16 connections) then stay with whichever process took them, and one process could
end up serving ten while the other served six: the first ran out of CPU while the second waited
for work, and intake varied by a quarter from one run to the next (docs/benchmarks.md).

Here every process counts its open connections in memory the master shares with the processes it
forks (`Counts`, one slot each: the master hands them out in gunicorn's pre_fork hook and takes
them back in child_exit). A process holding more connections than another lets the others take
the next one, but for BALANCE_WAIT at most: a process that is stuck or busy does not leave a new
client waiting longer than that.
"""

from __future__ import annotations

import mmap
import os
import time

from gevent import monkey
from gunicorn.workers import ggevent

SLOTS = 64  # web processes alive at once, those being replaced included
FREE = -1  # a slot no process holds
# Seconds a process over its share leaves a new connection to the others: a few commits' time.
# WAHOOK_BALANCE_WAIT changes it (the tests give it longer: six of them share two cores).
BALANCE_WAIT = float(os.environ.get("WAHOOK_BALANCE_WAIT") or 0.02)
RECHECK = 0.0005  # seconds between two looks at a connection left to the others


class Counts:
    """Open connections per web process, in anonymous shared memory: forked processes see (and
    write) the master's copy. Each slot is written by one process at a time: the master before
    it forks the slot's process and after it has exited, that process in between."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.memory = mmap.mmap(-1, 8 * slots)  # MAP_SHARED and anonymous: one copy for every fork
        self.view = memoryview(self.memory).cast("q")
        for slot in range(slots):
            self.view[slot] = FREE

    def claim(self) -> int | None:
        """A free slot, now counting 0 connections (the master, before it forks a process); None
        past SLOTS processes at once: that process takes connections as they come, unbalanced."""
        for slot, count in enumerate(self.view):
            if count == FREE:
                self.view[slot] = 0
                return slot
        return None

    def free(self, slot: int) -> None:
        self.view[slot] = FREE

    def over_share(self, slot: int) -> bool:
        """Whether the process in `slot` holds more open connections than some other process."""
        mine = self.view[slot]
        return any(count != FREE and count < mine for n, count in enumerate(self.view) if n != slot)

    def others_open(self, slot: int) -> int:
        """Open connections of every process but the one in `slot`."""
        return sum(count for n, count in enumerate(self.view) if n != slot and count != FREE)


# select() itself, not gevent's: asked from the loop's own timer, it must not wait or switch.
_readable = monkey.get_original("select", "select")
counts = Counts()  # made in the master when gunicorn loads its settings, before any fork
_slot: int | None = None  # this process's slot, once forked


def pre_fork(worker) -> None:
    """gunicorn's pre_fork hook, in the master: a slot for the process about to be forked."""
    worker.connection_slot = counts.claim()


def child_exit(worker) -> None:
    """gunicorn's child_exit hook, in the master: the process is gone, so is its slot."""
    slot = getattr(worker, "connection_slot", None)
    if slot is not None:
        counts.free(slot)


class BalancedServer(ggevent.StreamServer):
    """gevent's StreamServer that leaves a new connection to the other processes while this one
    holds more than its share, BALANCE_WAIT at most."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pool_full = self.full  # the pool's check, which set_spawn put in place of full()
        self.full = self.busy
        self.leaving_since: float | None = None  # since when the waiting connection was left to others
        self.others_seen = 0  # the other processes' open connections when last looked at
        self.recheck = None  # the timer that looks again at it

    def busy(self) -> bool:
        """Whether to take no connection now: the pool is full, or the others should take this one."""
        if self.pool_full():
            return True
        if _slot is None or not counts.over_share(_slot):
            self.leaving_since = None
            return False
        now = time.monotonic()
        others = counts.others_open(_slot)
        # The connection waiting is the oldest (connections are accepted in the order they came):
        # once another process has taken one more, this is a new one to leave, with a wait of its own.
        fresh = self.leaving_since is None or others > self.others_seen
        self.others_seen = others
        if fresh:
            self.leaving_since = now
        elif now - self.leaving_since >= BALANCE_WAIT:
            self.leaving_since = None
            return False  # nobody else took it in time: take it
        # _do_read now stops watching the socket and links a restart to the pool's next free
        # place: one such link is enough (gevent keeps each until a connection closes).
        self.pool._semaphore.unlink(self._start_accepting_if_started)
        if self.recheck is None:
            self.recheck = self.loop.timer(RECHECK)
        self.recheck.stop()
        self.recheck.start(self.look_again)
        return True

    def look_again(self) -> None:
        """RECHECK after leaving a connection to the others: if one of them took it, the next
        connection is a new one to leave (its own BALANCE_WAIT); if not, this one waits on."""
        if not _readable([self.socket], [], [], 0)[0]:
            self.leaving_since = None
        self._start_accepting_if_started()


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker, counting its open connections and accepting through BalancedServer."""

    def run(self) -> None:
        global _slot
        _slot = getattr(self, "connection_slot", None)
        # gunicorn's run() builds its servers from this module global; this process is the worker's
        # own, so the servers it builds here are balanced ones.
        ggevent.StreamServer = BalancedServer
        super().run()

    def handle(self, listener, client, addr) -> None:
        """Serve one connection (gunicorn's own handling) while it counts as open."""
        if _slot is None:
            super().handle(listener, client, addr)
            return
        counts.view[_slot] += 1
        try:
            super().handle(listener, client, addr)
        finally:
            counts.view[_slot] -= 1
