"""Outbound HTTP for webhook deliveries, guarded against server-side request forgery (SSRF).

An endpoint URL is typed in by an admin, but whoever controls its DNS decides where wahook
connects. So the rules are applied twice: `check_url` when an endpoint is saved, and again by
`Sender` at every new connection, against the addresses the host name resolves to at that
moment. The connection resolves the name itself, checks every address and connects only to an
allowed one, so a name that was public when saved and points at 127.0.0.1 now (DNS rebinding)
is refused. A kept-alive connection is not re-checked per request: the address was chosen, and
checked, when it was opened.

Built on urllib3's connection classes (TLS verification, SNI against the host name) without its
pool logic: no redirects are followed, nothing is retried behind the caller's back, and one
deadline bounds each whole attempt. `Sender` posts deliveries; `get` fetches media files. Which
URLs and addresses are refused, and the words for it, are address_rules.py's.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache

import certifi
from urllib3 import HTTPHeaderDict
from urllib3.connection import HTTPConnection, HTTPSConnection

from gateway.net.address_rules import RuleError, blocked_message, blocked_reason, parse_ip, private_hint, split_url

BODY_KEEP = 1024  # what an attempt records of the response body
READ_CAP = 64 * 1024  # read this much at most; past it the connection is dropped, not drained


class DeliveryError(Exception):
    """A failed attempt, as data: `message` in words for the monitor page, `permanent` when
    retrying cannot help (a blocked address, a malformed URL)."""

    def __init__(self, message: str, *, permanent: bool = False, rule: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.rule = rule  # the delivery.* setting that refused it, when one did
        self.hint = hint  # the end of `message` that says how the admin could allow it


@dataclass
class Response:
    status_code: int
    body: bytes  # the first BODY_KEEP bytes
    duration_ms: int
    headers: HTTPHeaderDict  # urllib3's: lookups ignore case, repeats joined by ", "


def _resolve(host: str, port: int, timeout: float | None = None) -> list[tuple]:
    """getaddrinfo, bounded by `timeout` by running it on a helper thread (the C call cannot be
    interrupted); numeric hosts are answered directly. Raises DeliveryError."""
    try:
        if parse_ip(host) is not None or timeout is None:
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return _resolver(os.getpid()).submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout)
    except socket.gaierror as exc:
        raise DeliveryError(f"{host} does not resolve ({exc.strerror})") from None
    except FutureTimeout:
        raise TimeoutError("name lookup") from None


@lru_cache(maxsize=1)
def _resolver(pid: int) -> ThreadPoolExecutor:
    # Keyed by process: a process forked after its parent resolved a name (gunicorn forks its
    # workers; RQ's SimpleWorker does not fork per job, but a test or a plugin might) gets its
    # own threads, since a parent's executor in a child believes it has threads that did not
    # survive the fork.
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="wahook-dns")


def check_url(
    url: str, *, allow_http: bool, allow_private: bool, resolve: bool = True, local: bool = False
) -> str | None:
    """None when the URL may be used, else the problem in words a self-hoster understands.
    With `resolve`, the host name must resolve, and (unless allow_private) to public addresses
    only, or with `local` (a local endpoint) to public, loopback or private ones."""
    try:
        _, host, port, _ = split_url(url, allow_http or local)
    except ValueError as exc:
        return f"URL {exc}"
    ip = parse_ip(host)
    if ip is not None:
        why = None if allow_private else blocked_reason(ip, local)
        return f"{blocked_message(host, ip, why)}{private_hint(why, local)}" if why else None
    if not resolve:
        return None
    try:
        infos = _resolve(host, port, timeout=10)
    except (DeliveryError, TimeoutError) as exc:
        return getattr(exc, "message", f"{host} did not resolve within 10 s")
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        why = None if allow_private else blocked_reason(address, local)
        if why:  # stricter than send time: a name with any non-public address is refused
            return f"{blocked_message(host, address, why)}{private_hint(why, local)}"
    return None


class _Deadline:
    """Mixin for sockets: before every blocking call, the socket timeout becomes the time left
    until `deadline` (time.monotonic()), so a server that drips one byte at a time cannot
    stretch an attempt past its timeout the way a per-read timeout would let it."""

    __slots__ = ()
    deadline: float | None = None

    def _arm(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self.settimeout(left)

    def recv_into(self, *args, **kwargs):
        self._arm()
        return super().recv_into(*args, **kwargs)

    def send(self, *args, **kwargs):
        self._arm()
        return super().send(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self._arm()
        return super().sendall(*args, **kwargs)


# http.client reads through recv_into and writes through sendall (SSLSocket's, through send).
_DeadlineSocket = type("_DeadlineSocket", (_Deadline, socket.socket), {})
_DeadlineSSLSocket = type("_DeadlineSSLSocket", (_Deadline, ssl.SSLSocket), {})


class _Guarded:
    """Mixin for urllib3 connections: resolve and check addresses in the connect step itself."""

    allow_private = False
    local = False  # a local endpoint's connection: loopback and private addresses too
    deadline: float | None = None

    def _new_conn(self) -> socket.socket:
        host = self._dns_host
        left = None if self.deadline is None else max(0.001, self.deadline - time.monotonic())
        refused, hint, error = None, "", None
        for family, kind, proto, _, sockaddr in _resolve(host, self.port, left):
            why = None if self.allow_private else blocked_reason(ipaddress.ip_address(sockaddr[0]), self.local)
            if why:  # skip it; another address of the same name may be public
                if refused is None:
                    refused = "blocked: " + blocked_message(host, ipaddress.ip_address(sockaddr[0]), why)
                    hint = private_hint(why, self.local)
                continue
            sock = _DeadlineSocket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.deadline = self.deadline
                sock._arm()
                sock.connect(sockaddr)
                sock._arm()  # the TLS handshake inherits this timeout: the time left, not the whole
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        if error is not None:
            raise error
        if refused is None:
            raise DeliveryError(f"{host} resolves to no address", permanent=True)
        raise DeliveryError(refused + hint, permanent=True, rule="allow_private_urls", hint=hint)


_GuardedHTTP = type("_GuardedHTTP", (_Guarded, HTTPConnection), {})
_GuardedHTTPS = type("_GuardedHTTPS", (_Guarded, HTTPSConnection), {})


@lru_cache(maxsize=4)
def _tls_context(ca_certs: str | None = None) -> ssl.SSLContext:
    """Verifying TLS (certifi's roots unless `ca_certs`) over sockets that keep the deadline."""
    tls = ssl.create_default_context(cafile=ca_certs or certifi.where())
    tls.sslsocket_class = _DeadlineSSLSocket
    return tls


def _connection(
    scheme: str, host: str, port: int, tls: ssl.SSLContext, allow_private: bool, local: bool = False
) -> HTTPConnection:
    """A guarded connection, not yet connected: it resolves and checks the name when it connects
    (`local`: a local endpoint's, which may reach loopback and private addresses too)."""
    conn = _GuardedHTTPS(host, port, ssl_context=tls) if scheme == "https" else _GuardedHTTP(host, port)
    conn.allow_private = allow_private
    conn.local = local
    return conn


# Low-level failures in words, most specific first; urllib3 wraps some, so causes are searched.
_CAUSES: list[tuple[type | tuple[type, ...], Callable[[Exception], str]]] = [
    (ssl.SSLCertVerificationError, lambda e: f"TLS certificate verify failed: {e.verify_message}"),
    (ssl.SSLError, lambda e: f"TLS error: {e.reason or e}"),
    (ConnectionRefusedError, lambda e: "connection refused"),
    (
        (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError),
        lambda e: "the server closed the connection without answering",
    ),
    (http.client.IncompleteRead, lambda e: "the server closed the connection in the middle of its answer"),
    (http.client.HTTPException, lambda e: f"invalid HTTP response: {type(e).__name__} {e}".strip()),
    (OSError, lambda e: f"network error: {e.strerror or e}"),
]


def describe(exc: BaseException, timeout: float) -> DeliveryError:
    """The first cause in `exc`'s chain that a self-hoster can act on, as a DeliveryError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DeliveryError):
            return seen
        if isinstance(seen, TimeoutError):
            return DeliveryError(f"timed out after {timeout:g} s")
        for kinds, words in _CAUSES:
            if isinstance(seen, kinds) and (kinds is not OSError or seen.strerror):
                return DeliveryError(words(seen))
        seen = seen.__cause__ or seen.__context__
    return DeliveryError(f"{type(exc).__name__}: {exc}")


class Sender:
    """Posts to endpoints over kept-alive connections, shared by every endpoint and safe to use
    from several threads. At most `pool_size` idle connections are kept per host and port."""

    def __init__(
        self, *, allow_http: bool, allow_private: bool, ca_certs: str | None = None, pool_size: int = 4
    ) -> None:
        self.allow_http = allow_http
        self.allow_private = allow_private
        self.pool_size = pool_size
        self._tls = _tls_context(ca_certs)
        self._closed = False
        self._own_pool()

    def _own_pool(self) -> None:
        # Also run in a forked child: the parent's sockets (and maybe a held lock) are not ours
        # to use; forget them without closing, which would not reach the parent's copies anyway.
        self._idle: dict[tuple[str, str, int, bool], list[HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float, *, local: bool = False) -> Response:
        """POST `body` once; `timeout` (seconds) bounds the whole attempt. `local`: the endpoint
        is marked local (http:// and loopback or private addresses allowed). Raises DeliveryError."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            scheme, host, port, target = split_url(url, self.allow_http or local)
        except RuleError as exc:
            raise DeliveryError(f"URL {exc}", permanent=True, rule=exc.rule, hint=exc.hint) from None
        except ValueError as exc:
            raise DeliveryError(f"URL {exc}", permanent=True) from None
        # A connection is checked when opened, under the rules of the endpoint that opened it:
        # a local endpoint's connections are never lent to one that is not.
        key = (scheme, host, port, local)
        conn = self._checkout(key)
        try:
            response = self._exchange(conn, target, body, headers, deadline)
            kept, complete = self._read(response)
            response.close()
        except Exception as exc:
            conn.close()
            raise describe(exc, timeout) from exc
        except BaseException:
            conn.close()
            raise
        if complete:
            self._checkin(key, conn)
        else:
            conn.close()
        elapsed = int((time.monotonic() - started) * 1000)
        return Response(response.status, kept, elapsed, response.headers)

    def _exchange(self, conn: HTTPConnection, target: str, body: bytes, headers: dict[str, str], deadline: float):
        # A kept-alive connection the server has closed meanwhile reads as EOF: drop it unused.
        reused = conn.sock is not None and conn.is_connected
        if conn.sock is not None and not reused:
            conn.close()
        while True:
            conn.deadline = deadline
            if conn.sock is None:
                conn.connect()
            conn.sock.deadline = deadline
            try:
                conn.request("POST", target, body=body, headers=headers, preload_content=False, decode_content=False)
            except (OSError, http.client.HTTPException) as exc:
                # Failing while sending on a reused connection means the server had already
                # closed it and never got a whole request: one fresh try cannot double-send.
                # Once sent, a lost answer is the caller's to retry (at least once, not twice).
                if not reused or isinstance(exc, TimeoutError):
                    raise
                conn.close()
                reused = False
                continue
            return conn.getresponse()

    @staticmethod
    def _read(response) -> tuple[bytes, bool]:
        """(first BODY_KEEP bytes, whether the body was read to its end within READ_CAP)."""
        kept, total = b"", 0
        while total <= READ_CAP:
            chunk = response.read(16384)
            if not chunk:
                return kept, True
            if len(kept) < BODY_KEEP:
                kept = (kept + chunk)[:BODY_KEEP]
            total += len(chunk)
        return kept, False

    def _checkout(self, key: tuple[str, str, int, bool]) -> HTTPConnection:
        if self._pid != os.getpid():
            self._own_pool()
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        scheme, host, port, local = key
        return _connection(scheme, host, port, self._tls, self.allow_private, local)

    def _checkin(self, key: tuple[str, str, int, bool], conn: HTTPConnection) -> None:
        if conn.sock is None:  # the server said Connection: close
            return
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < self.pool_size:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection; ones in use close when their post returns."""
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


class Download:
    """A GET whose answer is read in chunks (a media file): its status, headers and body.

    The whole exchange keeps to the deadline it was opened with; `read` may set a new one for
    each chunk. Close it (or use it in a `with`) once read. The socket is kept apart from the
    connection, which forgets it (`conn.sock` becomes None) as soon as an answer says the
    connection will close (HTTP/1.0, `Connection: close`), while its body is still to be read."""

    def __init__(self, conn: HTTPConnection, sock, response) -> None:
        self._conn = conn
        self._sock = sock
        self._response = response
        self.status: int = response.status
        self.headers: HTTPHeaderDict = response.headers

    def read(self, size: int, deadline: float | None = None) -> bytes:
        """Up to `size` bytes of the body (b"" at its end), by `deadline` (time.monotonic()) if given."""
        if deadline is not None:
            self._sock.deadline = deadline
        return self._response.read(size)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def get(url: str, headers: dict[str, str], *, allow_http: bool, allow_private: bool, timeout: float) -> Download:
    """GET `url` over a new guarded connection, not following redirects, within `timeout`
    seconds until the answer's head has arrived. Raises DeliveryError."""
    try:
        scheme, host, port, target = split_url(url, allow_http)
    except ValueError as exc:
        raise DeliveryError(f"URL {exc}", permanent=True) from None
    conn = _connection(scheme, host, port, _tls_context(), allow_private)
    conn.deadline = time.monotonic() + timeout
    try:
        conn.connect()
        sock = conn.sock
        sock.deadline = conn.deadline
        conn.request("GET", target, headers=headers, preload_content=False, decode_content=False)
        return Download(conn, sock, conn.getresponse())
    except Exception as exc:
        conn.close()
        raise describe(exc, timeout) from exc
