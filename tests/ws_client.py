"""A small blocking WebSocket client for the tests, on wsproto, that shows everything the
server sends: text frames, pings and the close code (library clients hide pings)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError


class Refused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"WebSocket refused with {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class WsClient:
    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.sock.sendall(self.ws.send(Request(host=parts.netloc, target=target, extra_headers=extra)))
        self.texts: list[str] = []
        self.pings = 0
        self.close_code: int | None = None
        status, body, accepted = 0, b"", False
        while not accepted:
            for event in self._events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                elif isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise Refused(status, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise Refused(status, body)
                else:
                    self._handle(event)
            if self.close_code is not None and not accepted:
                raise Refused(status, body)

    def _events(self):
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        if not data:
            self.close_code = self.close_code or 1006
        return list(self.ws.events())

    def pump(self, until, timeout: float = 10.0) -> None:
        """Read until `until()` is true (or the socket closes); fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while not until():
            if self.close_code is not None:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the WebSocket did not send what was expected in time")
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                events = self._events()
            except TimeoutError:
                continue
            for event in events:
                self._handle(event)

    def _handle(self, event) -> None:
        if isinstance(event, TextMessage):
            self.texts.append(event.data)
        elif isinstance(event, Ping):
            self.pings += 1
            self.sock.sendall(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.close_code = event.code

    def listen(self, seconds: float) -> None:
        """Read whatever comes for `seconds`."""
        deadline = time.monotonic() + seconds
        self.pump(lambda: time.monotonic() >= deadline, seconds + 5)

    def frames(self, count: int, timeout: float = 10.0) -> list[dict]:
        self.pump(lambda: len(self.texts) >= count, timeout)
        return [json.loads(t) for t in self.texts[:count]]

    def close(self) -> None:
        with contextlib.suppress(OSError, LocalProtocolError):  # closing anyway
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        self.sock.close()
