"""Connections kept per task: a thread keeps its own for its life, as with threading.local; a
greenlet (a request in gunicorn's gevent workers) hands its own on when its request ends.

Under the gevent workers (gunicorn.conf.py) every client connection is served by a greenlet of
its own, and threading.local, once gevent has patched it, keeps a value per greenlet. A
database connection kept that way would be opened for every new client connection and closed
with it (about 350 µs for SQLite, several round trips for a PostgreSQL server on another
machine), and as many would stay open as there are clients, idle keep-alive ones included. So
at the end of each request (`hand_on_all`, called by the WSGI entry, intake/wsgi.py) the greenlet's
values go to an idle list, and the next request of any greenlet of that thread takes one from
there. A value still inside a transaction is closed, never handed on.

Threads are left as they were: a SQLite connection may only be used by the thread that opened
it, and a thread's values live as long as the thread.

`in_thread` is for reads that can take long (the admin pages' summaries over a day of
attempts): a greenlet inside SQLite holds up every other request of its process, Meta's POSTs
included, so under gevent such a read runs in a thread of gevent's pool instead, on that
thread's own connection, while the process goes on.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import greenlet

T = TypeVar("T")


def _root(task: greenlet.greenlet) -> greenlet.greenlet:
    """The main greenlet of the thread `task` runs in: values move only between its greenlets."""
    while task.parent is not None:
        task = task.parent
    return task


def greenlet_workers() -> bool:
    """Whether this process runs gevent's workers (threading is patched)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)`, in a thread of gevent's pool under the gevent workers (so the
    process's other requests go on meanwhile), else right here. It must not use a connection of
    the caller's: the thread opens its own (db.connection) and keeps it for the next call."""
    if not greenlet_workers():
        return function(*args, **kwargs)
    import gevent  # imported only in the processes that run it

    return gevent.get_hub().threadpool.apply(function, args, kwargs)


_every: list[TaskLocal] = []


def hand_on_all() -> None:
    """The end of a request (the WSGI entry calls it): every TaskLocal's values of this greenlet
    go to the next request."""
    for each in _every:
        each.hand_on()


class TaskLocal:
    """Values by key for the current task; `reusable(value)` says whether one may be handed on,
    `close(value)` ends one that may not."""

    def __init__(self, reusable: Callable[[Any], bool], close: Callable[[Any], None]) -> None:
        self._local = threading.local()
        self._idle: dict[tuple[int, Any], list[Any]] = {}
        self._reusable = reusable
        self._close = close
        os.register_at_fork(after_in_child=self._idle.clear)  # a parent's connections are not ours
        _every.append(self)

    def values(self) -> dict[Any, Any]:
        """This task's values by key, in this process (a forked child starts with none)."""
        found = getattr(self._local, "values", None)
        if found is None or getattr(self._local, "pid", None) != os.getpid():
            found = self._local.values = {}
            self._local.pid = os.getpid()
        return found

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """This task's value for `key`: its own, else one a finished request handed on, else `make()`."""
        values = self.values()
        value = values.get(key)
        if value is None:
            task = greenlet.getcurrent()
            idle = self._idle.get((id(_root(task)), key)) if task.parent is not None else None
            value = values[key] = idle.pop() if idle else make()
        return value

    def forget(self, key: Any) -> None:
        """Drop this task's value for `key` (the caller has closed it)."""
        self.values().pop(key, None)

    def hand_on(self) -> None:
        """At the end of a greenlet's request: its values go to the idle list (or are closed).
        In a thread's own main greenlet (threaded servers, workers, tests) nothing moves."""
        task = greenlet.getcurrent()
        if task.parent is None:
            return
        values = self.values()
        root = id(_root(task))
        for key, value in values.items():
            if self._reusable(value):
                self._idle.setdefault((root, key), []).append(value)
            else:
                self._close(value)
        values.clear()

    def close_all(self) -> None:
        """Close this task's values and every idle one (tests and shutdown)."""
        for value in [*self.values().values(), *(v for idle in self._idle.values() for v in idle)]:
            self._close(value)
        self.values().clear()
        self._idle.clear()
