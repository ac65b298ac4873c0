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
deadline bounds each whole attempt.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, urlsplit

import certifi
from urllib3.connection import HTTPConnection, HTTPSConnection

BODY_KEEP = 1024  # what an attempt records of the response body
READ_CAP = 64 * 1024  # read this much at most; past it the connection is dropped, not drained

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_net = ipaddress.ip_network


def _table(text: str) -> dict[int, list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]]:
    """{4: [(network, "a loopback address"), ...], 6: [...]} from "why: network network" lines."""
    table: dict[int, list] = {4: [], 6: []}
    for why, _, nets in (line.partition(": ") for line in text.strip().splitlines()):
        for net in map(_net, nets.split()):
            table[net.version].append((net, why))
    return table


# Spelled out rather than taken from ipaddress's is_private/is_global: those change between
# Python releases, call IPv4 multicast global, and know nothing of NAT64 or 6to4 embeddings.
# First match wins. Linux connects 0.0.0.0 to the local host; 2001::/23 holds Teredo.
_BLOCKED = _table(
    """
an unspecified address: 0.0.0.0/8 ::/128
a loopback address: 127.0.0.0/8 ::1/128
a private address: 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16
a carrier-grade NAT address: 100.64.0.0/10
a link-local address: 169.254.0.0/16 fe80::/10
a site-local address: fec0::/10
a unique-local address: fc00::/7
a documentation address: 192.0.2.0/24 198.51.100.0/24 203.0.113.0/24 2001:db8::/32 3fff::/20
a benchmarking address: 198.18.0.0/15 2001:2::/48
a multicast address: 224.0.0.0/4 ff00::/8
a broadcast address: 255.255.255.255/32
a reserved address: 192.0.0.0/24 192.88.99.0/24 240.0.0.0/4 2001::/23
"""
)
_V6_GLOBAL_UNICAST = _net("2000::/3")
# IPv6 forms that carry an IPv4 address, judged by the address they carry. 6to4 holds it in
# bits 16-47, the others in the last 32 bits (the local-use NAT64 prefix is blocked regardless).
_MAPPED, _NAT64, _NAT64_LOCAL, _SIX_TO_FOUR = (
    _net(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16")
)

# What a local endpoint (SPEC 4 `local`) may reach besides public addresses: a receiver on the
# same machine or network. Never link-local (cloud metadata at 169.254.169.254), multicast,
# broadcast, documentation or reserved addresses, whatever the endpoint says.
LOCAL_KINDS = frozenset(
    {"a loopback address", "a private address", "a carrier-grade NAT address", "a unique-local address"}
)

_ALLOW_HTTP_HINT = " (mark the endpoint local for a receiver on this machine or network, or set delivery.allow_http)"
_LOCAL_PRIVATE_HINT = (
    " (mark the endpoint local for a receiver on this machine or network, or set delivery.allow_private_urls)"
)
_ALLOW_PRIVATE_HINT = " (set delivery.allow_private_urls to allow it)"
_NEVER_LOCAL_HINT = " (a local endpoint may use loopback and private addresses only)"


def _private_hint(why: str, local: bool) -> str:
    """How the admin could allow an address refused for `why`, said so it never suggests the
    `local` mark for addresses that mark does not open."""
    if any(why.endswith(kind) for kind in LOCAL_KINDS):
        return _ALLOW_PRIVATE_HINT if local else _LOCAL_PRIVATE_HINT
    return _NEVER_LOCAL_HINT if local else _ALLOW_PRIVATE_HINT


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")
_IPV4_PART = re.compile(r"0x[0-9a-f]*|[0-9]+")


class DeliveryError(Exception):
    """A failed attempt, as data: `message` in words for the monitor page, `permanent` when
    retrying cannot help (a blocked address, a malformed URL)."""

    def __init__(self, message: str, *, permanent: bool = False, rule: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.rule = rule  # the delivery.* setting that refused it, when one did
        self.hint = hint  # the end of `message` that says how the admin could allow it


class RuleError(ValueError):
    """A URL the delivery rules refuse; `rule` names the setting, `hint` ends the message."""

    def __init__(self, message: str, rule: str, hint: str) -> None:
        super().__init__(message + hint)
        self.rule = rule
        self.hint = hint


class Headers(dict):
    """Response headers: keys stored lower-cased, lookups ignore case; repeats joined by ", "."""

    def __init__(self, items=()) -> None:
        super().__init__()
        for key, value in items:
            key = key.lower()
            super().__setitem__(key, f"{super().__getitem__(key)}, {value}" if key in self else value)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default=None):
        return super().get(key.lower(), default)


@dataclass
class Response:
    status_code: int
    body: bytes  # the first BODY_KEEP bytes
    duration_ms: int
    headers: Headers


def blocked_reason(ip: IP, local: bool = False) -> str | None:
    """Why `ip` must not be connected to, as "a loopback address", or None when it is public
    (or, with `local`, a loopback or private address of the kinds in LOCAL_KINDS)."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop any %scope: it does not change the class
        for net, form, v4 in (
            (_MAPPED, "an IPv4-mapped form", ip.ipv4_mapped),
            (_NAT64, "a NAT64 form", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)),
            (_NAT64_LOCAL, "a local-use NAT64 form", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)),
            (_SIX_TO_FOUR, "a 6to4 form", ip.sixtofour),
        ):
            if ip in net:
                why = blocked_reason(v4, local)
                if why:
                    return f"{form} of {v4}, {why}"
                # The local-use prefix's embedding is chosen by its operator; it may reach anything.
                return "a local-use NAT64 address" if net is _NAT64_LOCAL else None
    why = next((why for net, why in _BLOCKED[ip.version] if ip in net), None)
    if local and why in LOCAL_KINDS:
        return None
    outside = ip.version == 6 and ip not in _V6_GLOBAL_UNICAST
    return why or ("a reserved address" if outside else None)


def parse_ip(host: str) -> IP | None:
    """The address a numeric host names, in any spelling the C resolver accepts (2130706433,
    0x7f000001, 0177.0.0.1, 127.1, [::1]), so they are judged without a DNS lookup; else None."""
    try:
        return ipaddress.ip_address(host.partition("%")[0] if ":" in host else host)
    except ValueError:
        pass
    parts = host.lower().split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    try:
        nums = [int(p, 16) if p.startswith("0x") else int(p, 8) if p[0] == "0" else int(p) for p in parts]
    except ValueError:  # "0x" alone, or 8 and 9 in an octal part
        return None
    *head, last = nums
    if any(n > 255 for n in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    return ipaddress.IPv4Address(sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last)


_URL_SAFE = "/%:@!$&'()*+,;=~-._"


@lru_cache(maxsize=1024)
def split_url(url: str, allow_http: bool) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of a URL we may post to; ValueError says what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not valid ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (allow_http and scheme == "http"):
        wanted = f"must start with {'http:// or ' if allow_http else ''}https://"
        if scheme == "http":
            raise RuleError(wanted, "allow_http", _ALLOW_HTTP_HINT)
        raise ValueError(wanted)
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password (use the bearer token instead)")
    host = parts.hostname or ""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"has an invalid host name: {host}") from None
    if not host or not (_HOST_NAME.fullmatch(host) or (":" in host and parse_ip(host))):
        raise ValueError(f"has an invalid host name: {host or '(none)'}")
    if port == 0:
        raise ValueError("has an invalid port: 0")
    # Percent-encode what may not stand in a request line (spaces, non-ASCII, control
    # characters), as a browser would; escapes already there are kept as they are.
    path = quote(parts.path or "/", safe=_URL_SAFE)
    target = path + (f"?{quote(parts.query, safe=_URL_SAFE + '?')}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), target


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


def _blocked_message(host: str, ip: IP, why: str) -> str:
    literal = parse_ip(host)
    if literal is None:
        return f"{host} resolves to {ip}, {why}"
    # An odd spelling (2130706433) is shown with the address it stands for.
    return f"{host} is {why}" if ":" in host or host == str(ip) else f"{host} is {ip}, {why}"


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
        return f"{_blocked_message(host, ip, why)}{_private_hint(why, local)}" if why else None
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
            return f"{_blocked_message(host, address, why)}{_private_hint(why, local)}"
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

    def recv_into(self, *args):
        self._arm()
        return super().recv_into(*args)

    def send(self, *args):
        self._arm()
        return super().send(*args)

    def sendall(self, *args):
        self._arm()
        return super().sendall(*args)


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
                    refused = "blocked: " + _blocked_message(host, ipaddress.ip_address(sockaddr[0]), why)
                    hint = _private_hint(why, self.local)
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


def _describe(exc: BaseException, timeout: float) -> DeliveryError:
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
        self._tls = ssl.create_default_context(cafile=ca_certs or certifi.where())
        self._tls.sslsocket_class = _DeadlineSSLSocket
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
            raise _describe(exc, timeout) from exc
        except BaseException:
            conn.close()
            raise
        if complete:
            self._checkin(key, conn)
        else:
            conn.close()
        elapsed = int((time.monotonic() - started) * 1000)
        return Response(response.status, kept, elapsed, Headers(response.headers.items()))

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
        if scheme == "https":
            conn: HTTPConnection = _GuardedHTTPS(host, port, ssl_context=self._tls)
        else:
            conn = _GuardedHTTP(host, port)
        conn.allow_private = self.allow_private
        conn.local = local
        return conn

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
