"""A lane: a few worker threads that wait to be told there may be work, then take it themselves.

The worker gives each endpoint a lane for its deliveries (worker.py) and media downloads one
of their own (downloads.py), so a slow receiver or a large download holds up nobody else.
`want()` says there may be work; one waiting thread wakes, clears the flag and does one round
of `work()`, which claims rows with a lease (leases.py) and calls `want()` again when it found
enough that there may be more, so a backlog is worked by every thread and a trickle by one.
Nothing waits in memory: what is not claimed stays in the database, where any worker may
claim it, and the leases of a round that failed run out and are claimed again.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("wahook.worker")


class Lane:
    """Threads named `name`-0, -1... running `work()` rounds while wanted, until `stopping`."""

    failure = "a lane's round failed"  # logged with the traceback when work() raises

    def __init__(self, name: str, threads: int, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.ready = threading.Condition()
        self.more = False  # there may be work nobody has claimed yet
        self.busy = 0  # threads in a round
        self.threads = [threading.Thread(target=self.run, name=f"{name}-{n}", daemon=True) for n in range(threads)]
        for thread in self.threads:
            thread.start()

    def work(self) -> None:
        """One round: claim what is due and do it. Overridden by each kind of lane."""
        raise NotImplementedError

    def want(self) -> None:
        with self.ready:
            self.more = True
            self.ready.notify()

    def idle(self) -> bool:
        with self.ready:
            return not self.more and not self.busy

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.ready:
                if not self.more:
                    self.ready.wait(0.5)
                    continue
                # Cleared before the round reads: a want() from now on is seen by the next round.
                self.more = False
                self.busy += 1
            try:
                self.work()
            except Exception:
                # Leases we took run out and the sweeper finds the work again.
                log.exception(self.failure)
                self.stopping.wait(1)
            finally:
                with self.ready:
                    self.busy -= 1

    def close(self, grace: float = 1.0) -> None:
        """Wake the threads (they stop once `stopping` is set) and wait `grace` seconds for each."""
        with self.ready:
            self.ready.notify_all()
        for thread in self.threads:
            thread.join(timeout=grace)
