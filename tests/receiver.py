"""A real HTTP receiver on 127.0.0.1 for delivery tests: records every request and answers
as told (status, delay, headers), so tests can make an endpoint slow, failing or gone."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StandInServer(ThreadingHTTPServer):
    """A threading HTTP server for the tests' stand-ins: a client that hangs up (a worker killed
    or stopped with kept-alive connections open) is part of the tests, not an error to print;
    anything else is still printed."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 200  # what it was answered


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Start with `Receiver()`, read `.url`, `.requests`; change `.behaviour` at any time.
    `.script` (a list of Behaviour) is consumed one per request before `.behaviour` applies."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.started = 0  # requests whose handling began (some may still be sleeping)
        self.behaviour = Behaviour()
        self.script: list[Behaviour] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Send each answer in one write: with unbuffered writes, Nagle's algorithm and the
            # client's delayed ACK hold every keep-alive answer back by tens of milliseconds.
            wbufsize = 64 * 1024
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender went away half way (a worker killed mid-request): as any HTTP
                    # server, hand nothing on; it is not a delivery.
                    self.close_connection = True
                    return
                with outer.lock:
                    behaviour = outer.script.pop(0) if outer.script else outer.behaviour
                    outer.started += 1
                if behaviour.delay:
                    time.sleep(behaviour.delay)
                with outer.arrived:
                    outer.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.time(), behaviour.status)
                    )
                    outer.arrived.notify_all()
                self.send_response(behaviour.status)
                for key, value in behaviour.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(behaviour.body)))
                self.end_headers()
                self.wfile.write(behaviour.body)

            def log_message(self, *args) -> None:
                pass

        self.server = StandInServer(("127.0.0.1", 0), Handler)
        # close() waits for the serving loop to look at its stop flag, which it does every
        # poll interval: 0.5 s by default, paid by every test that uses a receiver.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until `count` requests arrived (or fail the test), then return them all."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver got {len(self.requests)} requests, expected {count}")
                self.arrived.wait(left)
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
