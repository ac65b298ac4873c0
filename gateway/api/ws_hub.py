"""WebSockets for `GET /api/v1/ws` (SPEC 7): the handshake, and one hub thread per web
process that serves every open socket.

Why not a request per socket: gunicorn's workers serve a fixed number of requests at once
(gunicorn.conf.py), and Meta's POSTs need some of those slots free at all times. A stream
(stream.py) holds a slot for as long as it is open; a socket held the same way (as flask-sock
and simple-websocket do, with a second thread each for reading) would take two. Instead the
request checks the handshake, answers `101 Switching Protocols` on the connection's socket,
hands a duplicate of the socket to the hub and returns at once; gunicorn then drops its own
handle without closing the connection (see take_over). The hub multiplexes every socket with
one selector, so 1,000 open sockets cost one hub, a file descriptor and a few KiB each, and no
request slot.

The frames come from wsproto (python-hyper's sans-I/O WebSocket protocol: it owns no socket
and no thread, so it fits this design with any server). The hub reads new events once per
distinct cursor, not once per socket (sockets at the head share one query), filters them in
Python per socket, and sends `{"id", "event", "data"}` text frames. It pings every
PING_SECONDS; a client silent for three pings, or one that lets more than MAX_BUFFERED
bytes pile up unread, is dropped, and resumes with `?after=` when it comes back. When the
web process stops, every socket is closed with 1001 (going away) so clients reconnect.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from gateway.api import api_keys, event_reader
from gateway.delivery import accounts
from gateway.storage import db

log = logging.getLogger("wahook.ws")

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's fixed key suffix
PING_SECONDS = 10.0  # the contract asks for a ping at least every 15 s
POLL_SECONDS = 0.2
PAGE = 200
MAX_SOCKETS = 1000  # per web process
PER_KEY = MAX_SOCKETS // 2  # one API key (and its tokens) may hold at most this many
MAX_BUFFERED = 1024 * 1024
RECEIVE_BYTES = 65536


def handshake_problem(headers) -> str | None:
    """What is wrong with a request that should open a WebSocket, or None."""
    if headers.get("Upgrade", "").lower() != "websocket":
        return "this address takes WebSocket connections only (Upgrade: websocket)"
    if "upgrade" not in headers.get("Connection", "").lower():
        return "a WebSocket handshake needs Connection: Upgrade"
    if headers.get("Sec-WebSocket-Version") != "13":
        return "only WebSocket version 13 is supported"
    try:
        if len(base64.b64decode(headers.get("Sec-WebSocket-Key", ""), validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        return "Sec-WebSocket-Key must be 16 bytes in base64"
    return None


def switching_protocols(key: str, extra: dict[str, str]) -> bytes:
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")  # noqa: S324
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
    lines.append(f"Sec-WebSocket-Accept: {accept}")
    lines += [f"{name}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def take_over(sock: socket.socket) -> socket.socket:
    """The connection behind gunicorn's socket object, as a socket of our own.

    gunicorn ends a request it will not keep alive with a graceful close: shutdown() (which
    would end the connection for every handle of it) and a read to drain it. So the
    connection moves to a new descriptor, and gunicorn's descriptor number is pointed at a
    fresh unconnected socket: its shutdown fails harmlessly and its close closes only that."""
    mine = sock.dup()
    placeholder = socket.socket(sock.family, socket.SOCK_STREAM)
    try:
        os.dup2(placeholder.fileno(), sock.fileno())
    finally:
        placeholder.close()
    return mine


def frame_text(row) -> str:
    """One event as the text of a frame; the stored body goes in as it is, not parsed again."""
    return f'{{"id":{json.dumps(row["event_id"])},"event":{json.dumps(row["name"])},"data":{row["body"]}}}'


@dataclass(eq=False)
class Client:
    """One open socket: what it reads and how far it got."""

    sock: socket.socket
    key_id: int
    after: event_reader.Position  # see event_reader.py: a row id on SQLite, (transaction, row id) on PostgreSQL
    wanted: list[str]
    account_ids: frozenset[str]
    expires_at: float | None = None  # a stream token's expiry; None when a key opened it
    ws: Connection = field(default_factory=lambda: Connection(ConnectionType.SERVER))
    out: bytearray = field(default_factory=bytearray)
    heard: float = field(default_factory=time.monotonic)
    behind: bool = True  # read at once: events may have come after its cursor already
    closing: bool = False

    def wants(self, row) -> bool:
        return event_reader.picks(self.wanted, row["name"]) and accounts.takes(
            self.account_ids, row["waba_id"], row["phone_number_id"]
        )


class Hub:
    """Every open socket of this process, served by one thread."""

    def __init__(self, database: str, serving: Callable[[], bool]) -> None:
        self.database = database
        self.serving = serving
        self.lock = threading.Lock()
        self.per_key: dict[int, int] = {}
        self.count = 0
        self.arrivals: list[Client] = []
        self.clients: set[Client] = set()
        self.watcher: db.CommitWatch | None = None
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = socket.socketpair()
        self.wake_read.setblocking(False)
        self.wake_write.setblocking(False)
        self.selector.register(self.wake_read, selectors.EVENT_READ, None)
        self.thread = threading.Thread(target=self.run, name="wahook-ws-hub", daemon=True)
        self.thread.start()

    # -- called by request threads

    def reserve(self, key_id: int) -> str | None:
        """Hold a place for one more socket of `key_id`; None when held, else why not (503)."""
        with self.lock:
            if self.stopping.is_set() or not self.serving():
                return "this web process is shutting down; reconnect"
            if self.count >= MAX_SOCKETS:
                return f"this web process has {MAX_SOCKETS} WebSockets open; retry shortly"
            if self.per_key.get(key_id, 0) >= PER_KEY:
                return f"this API key already holds {PER_KEY} WebSockets in this web process; close one or retry"
            self.count += 1
            self.per_key[key_id] = self.per_key.get(key_id, 0) + 1
        return None

    def release(self, key_id: int) -> None:
        with self.lock:
            self.count -= 1
            left = self.per_key.get(key_id, 1) - 1
            if left > 0:
                self.per_key[key_id] = left
            else:
                self.per_key.pop(key_id, None)

    def add(self, client: Client) -> None:
        """Hand a socket that has had its 101 to the hub (its place was reserved)."""
        client.sock.setblocking(False)
        with self.lock:
            self.arrivals.append(client)
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            self.wake_write.send(b"x")

    # -- the hub thread

    def run(self) -> None:
        self.next_poll = self.next_ping = time.monotonic()
        while True:
            try:
                if not self._turn():
                    return
            except Exception:  # noqa: BLE001 (the hub must outlive any one socket's or query's failure)
                log.exception("WebSocket hub: one round failed; going on")
                time.sleep(POLL_SECONDS)

    def _turn(self) -> bool:
        """One round: socket I/O, arrivals, new events, pings. False once stopped."""
        for key, mask in self.selector.select(POLL_SECONDS):
            if key.data is None:
                self._drain_wake()
                continue
            if mask & selectors.EVENT_READ:
                self._read(key.data)
            if mask & selectors.EVENT_WRITE and key.data in self.clients:
                self._flush(key.data)
        self._take_arrivals()
        if self.stopping.is_set() or not self.serving():
            for client in list(self.clients):
                self._close(client, 1001, "server restarting; reconnect with ?after=")
            if not self.clients:
                self.stopped.set()
                return False
            return True
        now = time.monotonic()
        if now >= self.next_poll:
            self.next_poll = now + POLL_SECONDS
            conn = db.connection(self.database)  # this thread's own, kept between rounds
            if self.watcher is None or self.watcher.conn is not conn:
                self.watcher = db.CommitWatch(conn)
                for client in self.clients:  # a new connection saw no commits yet: look once
                    client.behind = True
            try:
                self._send_new(conn, self.watcher.changed())
            except db.Error:
                db.rollback(conn)  # the database is busy or away: try again next round
        if now >= self.next_ping:
            self.next_ping = now + PING_SECONDS
            self._ping(now, db.connection(self.database))
        return True

    def _drain_wake(self) -> None:
        try:
            while self.wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _take_arrivals(self) -> None:
        with self.lock:
            arrived, self.arrivals = self.arrivals, []
        for client in arrived:
            self.clients.add(client)
            self.selector.register(client.sock, selectors.EVENT_READ, client)

    def _send_new(self, conn: db.Connection, changed: bool) -> None:
        """Read what each group of sockets at one cursor has not seen, once per group."""
        groups: dict[event_reader.Position, list[Client]] = {}
        for client in self.clients:
            if (changed or client.behind) and not client.closing:
                groups.setdefault(client.after, []).append(client)
        for after, members in groups.items():
            rows = event_reader.page_of_all(conn, after, PAGE)
            for client in members:
                client.behind = len(rows) == PAGE
                if not rows:
                    continue
                client.after = event_reader.position(rows[-1])
                texts = [frame_text(row) for row in rows if client.wants(row)]
                if texts:
                    self._queue(client, b"".join(client.ws.send(TextMessage(data=t)) for t in texts))

    def _ping(self, now: float, conn: db.Connection) -> None:
        """Ping every socket; drop the silent ones, and close those whose key was revoked or
        whose token expired since they opened (1008: the page reconnects with a fresh token)."""
        live = api_keys.live_ids(conn, sorted({c.key_id for c in self.clients}))
        for client in list(self.clients):
            if now - client.heard > 3 * PING_SECONDS:
                self._drop(client)
            elif client.key_id not in live:
                self._close(client, 1008, "the API key was revoked")
            elif client.expires_at is not None and time.time() >= client.expires_at:
                self._close(client, 1008, "the stream token expired; reconnect with a fresh one")
            elif not client.closing:
                self._queue(client, client.ws.send(Ping(payload=str(int(time.time())).encode("ascii"))))

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.heard = time.monotonic()
        try:
            client.ws.receive_data(data)
            for event in client.ws.events():
                if isinstance(event, Ping):
                    self._queue(client, client.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._queue(client, client.ws.send(event.response()))
                    client.closing = True
                elif not isinstance(event, Pong):
                    pass  # a client has nothing to say on this socket; what it sends is ignored
        except (LocalProtocolError, RemoteProtocolError):
            self._drop(client)
            return
        if client.closing and not client.out:
            self._drop(client)

    def _queue(self, client: Client, data: bytes) -> None:
        if client not in self.clients:
            return
        client.out += data
        if len(client.out) > MAX_BUFFERED:
            self._drop(client)  # a reader this slow resumes with ?after= instead
            return
        self._flush(client)

    def _flush(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.out)
            del client.out[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(client)
            return
        if client.closing and not client.out:
            self._drop(client)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        if self.selector.get_key(client.sock).events != wanted:
            self.selector.modify(client.sock, wanted, client)

    def _close(self, client: Client, code: int, reason: str) -> None:
        """Start a clean close; the socket goes when the frame is out."""
        if client.closing:
            return
        try:
            data = client.ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            self._drop(client)
            return
        client.closing = True
        self._queue(client, data)

    def _drop(self, client: Client) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        client.sock.close()
        self.release(client.key_id)


_hub: Hub | None = None
_hub_lock = threading.Lock()


def hub(database: str, serving: Callable[[], bool]) -> Hub:
    """This process's hub, started on first use (after gunicorn forked the worker)."""
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = Hub(database, serving)
        return _hub


def stop(timeout: float = 2.0) -> None:
    """Close every socket with 1001 (going away) before the process exits (gunicorn's
    worker_exit), waiting at most `timeout` for the close frames to go out."""
    if _hub is not None:
        stop_hub(_hub, timeout)


def stop_hub(hub: Hub, timeout: float = 2.0) -> None:
    hub.stopping.set()
    hub.wake()
    hub.stopped.wait(timeout)


def open_count() -> int:
    """Sockets open (or being opened) in this process."""
    return 0 if _hub is None else _hub.count
