"""The benchmark's receiver as a separate process, and the calls to read what it recorded."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import requests
from fast_receiver import serve


class Sink:
    """A fast receiver process on a fixed port (answering each POST `delay` seconds after it
    arrived); `stop()` takes it down, `start()` brings it back."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.port = port
        self.delay = delay
        self.url = f"http://127.0.0.1:{port}/hook"
        self.process: multiprocessing.Process | None = None
        self.session = requests.Session()

    def start(self) -> Sink:
        ready = multiprocessing.Event()
        self.process = multiprocessing.Process(target=serve, args=(self.port, ready, self.delay), daemon=True)
        self.process.start()
        if not ready.wait(10):
            raise RuntimeError("the receiver did not start")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.join(5)
            self.process = None
        self.session.close()
        self.session = requests.Session()

    def _get(self, path: str) -> bytes:
        return self.session.get(f"http://127.0.0.1:{self.port}{path}", timeout=30).content

    def count(self) -> int:
        return int(self._get("/_count"))

    def reset(self) -> None:
        self._get("/_reset")

    def records(self) -> list[tuple[float, str]]:
        """(arrival time, X-Webhook-Id) of every POST since the last reset, in arrival order."""
        out = []
        for line in self._get("/_dump").decode().splitlines():
            at, _, event_id = line.partition(" ")
            out.append((float(at), event_id))
        return out


def duplicates(records: list[tuple[float, str]]) -> int:
    """How many arrivals repeated an id that had arrived before."""
    return sum(n - 1 for n in Counter(event_id for _, event_id in records).values() if n > 1)
