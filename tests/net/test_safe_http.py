"""The outbound HTTP client against real servers on 127.0.0.1: which URLs it refuses and why,
what a receiver gets, and how slow, broken or hostile receivers show up as DeliveryError."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import provision
from gateway.net.address_rules import shown_url
from gateway.net.safe_http import DeliveryError, Sender, check_url

HINT = "allow_private_urls"

# Every non-public form the rules name, with the words the refusal must contain.
BLOCKED_HOSTS = [
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.5", "10.0.0.5 is a private address"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # where clouds serve instance credentials
    ("100.64.0.1", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("[::1]", "::1 is a loopback address"),
    ("[::]", "unspecified"),
    ("[fe80::1]", "link-local"),
    ("[fc00::1]", "unique-local"),
    ("[fd12:3456::1]", "unique-local"),
    ("[fec0::1]", "site-local"),
    ("[ff02::1]", "multicast"),
    ("[2001:db8::1]", "documentation"),
    ("[3fff::1]", "documentation"),
    ("[2001:2::1]", "benchmarking"),
    ("[2001::1]", "reserved"),  # Teredo
    ("[100::1]", "reserved"),  # discard-only
    ("[5f00::1]", "reserved"),  # outside global unicast
    ("[::ffff:0:a00:5]", "reserved"),  # IPv4-translated
    ("192.88.99.1", "reserved"),
    ("[::ffff:127.0.0.1]", "IPv4-mapped form of 127.0.0.1, a loopback address"),
    ("[::ffff:a00:5]", "IPv4-mapped form of 10.0.0.5, a private address"),
    ("[64:ff9b::7f00:1]", "NAT64 form of 127.0.0.1, a loopback address"),
    ("[64:ff9b::10.0.0.5]", "NAT64 form of 10.0.0.5, a private address"),
    ("[64:ff9b:1::a9fe:a9fe]", "NAT64 form of 169.254.169.254, a link-local address"),
    ("[64:ff9b:1::808:808]", "local-use NAT64 address"),
    ("[2002:7f00:1::]", "6to4 form of 127.0.0.1, a loopback address"),
    ("[2002:c0a8:101::1]", "6to4 form of 192.168.1.1, a private address"),
    ("[::7f00:1]", "reserved"),  # the deprecated IPv4-compatible form
    ("2130706433", "2130706433 is 127.0.0.1, a loopback address"),
    ("0x7f000001", "0x7f000001 is 127.0.0.1, a loopback address"),
    ("0177.0.0.1", "0177.0.0.1 is 127.0.0.1, a loopback address"),
    ("127.1", "127.1 is 127.0.0.1, a loopback address"),
    ("0x7f.1", "is 127.0.0.1, a loopback address"),
    ("012.0.0.5", "is 10.0.0.5, a private address"),
    ("167772165", "is 10.0.0.5, a private address"),
]
PUBLIC_HOSTS = [
    "93.184.215.14",
    "8.8.8.8",
    "134744072",  # 8.8.8.8 spelled as one number
    "[2606:4700:4700::1111]",
    "[::ffff:8.8.8.8]",
    "[64:ff9b::808:808]",
    "[2002:808:808::1]",
    "example.com",
]
# Spellings that all lead to 127.0.0.1, where the test servers listen.
LOCAL_SPELLINGS = ["127.0.0.1", "localhost", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]"]


@pytest.mark.parametrize(("host", "words"), BLOCKED_HOSTS)
def test_check_url_refuses_non_public_addresses_in_every_spelling(host, words):
    problem = check_url(f"https://{host}/hook", allow_http=False, allow_private=False)
    assert problem is not None and words in problem and HINT in problem
    assert check_url(f"https://{host}/hook", allow_http=False, allow_private=True, resolve=False) is None


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_check_url_accepts_public_addresses(host):
    assert check_url(f"https://{host}/hook", allow_http=False, allow_private=False, resolve=False) is None


def test_check_url_resolves_names_and_judges_what_they_point_at():
    problem = check_url("https://localhost:8443/hook", allow_http=False, allow_private=False)
    assert problem.startswith("localhost resolves to ") and "a loopback address" in problem
    assert check_url("https://localhost:8443/hook", allow_http=False, allow_private=True) is None
    assert "does not resolve" in check_url("https://no-such-host.invalid/", allow_http=False, allow_private=True)
    assert check_url("https://no-such-host.invalid/", allow_http=False, allow_private=True, resolve=False) is None


def test_check_url_wants_https_unless_http_is_allowed():
    problem = check_url("http://example.com/hook", allow_http=False, allow_private=False, resolve=False)
    assert problem == (
        "URL must start with https:// (mark the endpoint local for a receiver on this machine or network,"
        " or set delivery.allow_http)"
    )
    assert check_url("http://example.com/hook", allow_http=True, allow_private=False, resolve=False) is None
    assert "https://" in check_url("ftp://example.com/", allow_http=True, allow_private=False)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://user:pass@example.com/hook", "user name or password"),
        ("https://token@example.com/hook", "user name or password"),
        ("example.com/hook", "must start with https://"),
        ("https:///hook", "invalid host name"),
        ("https://exa mple.com/", "invalid host name"),
        ("https://example.com:99999/", "not valid"),
        ("https://example.com:abc/", "not valid"),
        ("https://[::1/", "not valid"),
    ],
)
def test_check_url_refuses_credentials_and_malformed_urls(url, words):
    problem = check_url(url, allow_http=False, allow_private=True, resolve=False)
    assert problem is not None and words in problem


# --- real servers ---------------------------------------------------------------------------


@dataclass
class Got:
    path: str
    headers: dict[str, str]
    body: bytes
    connection: tuple


Answer = Callable[["BaseHTTPRequestHandler", "Server"], None]


class Server:
    """An HTTP/1.1 server on 127.0.0.1, TLS when given a context. Records each request and each
    connection; `answer` (or the next of `script`) decides what happens to a request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Got] = []
        self.connections: list[tuple] = []
        self.answer: Answer = respond(200)
        self.script: list[Answer] = []
        self.lock = threading.Lock()
        self.scheme = "http" if tls is None else "https"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with outer.lock:
                    outer.connections.append(self.client_address)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                with outer.lock:
                    answer = outer.script.pop(0) if outer.script else outer.answer
                answer(self, outer)

            def take(self) -> Got:
                """Read the body and record the request."""
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got = Got(self.path, dict(self.headers.items()), body, self.client_address)
                with outer.lock:
                    outer.requests.append(got)
                return got

            def log_message(self, *args) -> None:
                pass

        class Listener(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, address = super().get_request()
                if tls is not None:  # handshake later, in the handler's thread
                    sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, address

            def handle_error(self, request, client_address) -> None:
                pass  # clients that hang up or reject our certificate are part of the tests

        self.server = Listener(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write(handler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """The whole answer in one write, so no Nagle delay hides what the client does."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    handler.wfile.write(("\r\n".join([*lines, f"Content-Length: {len(body)}", "", ""])).encode() + body)


def respond(status: int = 200, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    """Answer `status` with `body` (default: echo the request body)."""

    def answer(handler, server) -> None:
        got = handler.take()
        write(handler, status, got.body if body is None else body, headers)

    return answer


def sleep_then_respond(seconds: float) -> Answer:
    def answer(handler, server) -> None:
        handler.take()
        time.sleep(seconds)
        write(handler, 200, b"late")

    return answer


def drip(in_headers: bool, seconds: float = 6.0) -> Answer:
    """Send a byte every 50 ms for `seconds`: in the header block, or in a long body."""

    def answer(handler, server) -> None:
        handler.take()
        start = b"HTTP/1.1 200 OK\r\n" if in_headers else b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
        try:
            handler.wfile.write(start)
            for _ in range(int(seconds / 0.05)):
                handler.wfile.write(b"X" if not in_headers else b"x")
                time.sleep(0.05)
        except OSError:
            pass
        handler.close_connection = True

    return answer


def close_without_answer(handler, server) -> None:
    handler.take()
    handler.close_connection = True


def answer_then_close(handler, server) -> None:
    """Answer as if keeping the connection alive, then close it anyway, as servers do when idle."""
    respond(200, b"ok")(handler, server)
    handler.close_connection = True


def reset_before_body(handler, server) -> None:
    """Read only the request head, then abort the connection (RST): no request was taken."""
    handler.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True


@pytest.fixture
def server():
    started = Server()
    yield started
    started.close()


@pytest.fixture
def sender():
    started = Sender(allow_http=True, allow_private=True)
    yield started
    started.close()


def post(sender: Sender, url: str, body: bytes = b'{"event":"test"}', timeout: float = 5):
    return sender.post(url, body, {"Content-Type": "application/json", "X-Webhook-Id": "evt_1"}, timeout)


def refusal(sender: Sender, url: str, timeout: float = 5) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        post(sender, url, timeout=timeout)
    return caught.value


def test_spaces_and_non_ascii_in_the_path_are_percent_encoded(server, sender):
    assert check_url(server.url(path="/a b/é?q=x y"), allow_http=True, allow_private=True) is None
    assert post(sender, server.url(path="/a b/é?q=x y&z=%41")).status_code == 200
    [got] = server.requests
    assert got.path == "/a%20b/%C3%A9?q=x%20y&z=%41"


def test_post_delivers_body_and_headers_and_returns_the_answer(server, sender):
    server.answer = respond(202, b"accepted", {"X-Seen": "yes"})
    response = post(sender, server.url(path="/hook?tenant=7"), b'{"event":"message.received"}')
    assert response.status_code == 202
    assert response.body == b"accepted"
    assert response.headers["x-seen"] == "yes" and response.headers["X-SEEN"] == "yes"
    assert 0 <= response.duration_ms < 2000
    [got] = server.requests
    assert got.path == "/hook?tenant=7"
    assert got.body == b'{"event":"message.received"}'
    assert got.headers["Content-Type"] == "application/json" and got.headers["X-Webhook-Id"] == "evt_1"


def test_retry_after_is_readable_in_any_case(server, sender):
    server.answer = respond(429, b"slow down", {"Retry-After": "120"})
    response = post(sender, server.url())
    assert response.status_code == 429
    assert response.headers["retry-after"] == response.headers["Retry-After"] == "120"
    assert response.headers.get("RETRY-AFTER") == "120" and "Retry-After" in response.headers


def mapped_ipv4_reachable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            probe.connect_ex(("::ffff:127.0.0.1", 9))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", LOCAL_SPELLINGS)
def test_private_addresses_reach_the_server_when_allowed(server, sender, host):
    if host.startswith("[") and not mapped_ipv4_reachable():
        # No IPv6 sockets on this machine: the policy must still let the attempt through,
        # so what fails is the network, not a refusal.
        error = refusal(sender, server.url(host))
        assert not error.permanent and not error.message.startswith("blocked")
        return
    assert post(sender, server.url(host)).status_code == 200
    assert len(server.requests) == 1


@pytest.mark.parametrize("host", LOCAL_SPELLINGS + ["[::1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "10.0.0.5"])
def test_blocked_addresses_are_refused_at_send_time_before_connecting(server, host):
    strict = Sender(allow_http=True, allow_private=False)
    error = refusal(strict, server.url(host))
    strict.close()
    assert error.permanent and error.message.startswith("blocked: ")
    assert any(kind in error.message for kind in ("loopback", "private"))
    assert server.connections == [] and server.requests == []


def test_dns_rebinding_is_caught_on_the_address_connected_to(server):
    # Saved while the operator allowed private URLs (or while the name pointed somewhere public)...
    url = server.url("localhost")
    assert check_url(url, allow_http=True, allow_private=True) is None
    # ...and sent by a gateway that does not: the name is resolved and judged again at connect time.
    strict = Sender(allow_http=True, allow_private=False)
    error = refusal(strict, url)
    strict.close()
    assert error.permanent
    assert error.message.startswith("blocked: localhost resolves to ") and "a loopback address" in error.message
    assert server.connections == [] and server.requests == []


def test_http_is_refused_at_send_time_unless_allowed(server):
    strict = Sender(allow_http=False, allow_private=True)
    error = refusal(strict, server.url())
    strict.close()
    assert error.permanent and "must start with https://" in error.message
    assert server.connections == []


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1:1/hook", "http://127.0.0.1:99999/", "not a url"])
def test_credentials_and_malformed_urls_are_permanent_failures(sender, url):
    error = refusal(sender, url)
    assert error.permanent and error.message.startswith("URL ")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_come_back_as_they_are_and_are_not_followed(server, sender, status):
    target = Server()
    server.answer = respond(status, b"moved", {"Location": target.url()})
    response = post(sender, server.url())
    target.close()
    assert response.status_code == status
    assert response.headers["location"] == target.url()
    assert target.connections == [] and len(server.requests) == 1


def test_a_server_that_sleeps_times_out_within_the_timeout(server, sender):
    server.answer = sleep_then_respond(5)
    started = time.monotonic()
    error = refusal(sender, server.url(), timeout=0.5)
    assert error.message == "timed out after 0.5 s" and not error.permanent
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("in_headers", [True, False], ids=["drip-headers", "drip-body"])
def test_a_server_that_drips_bytes_cannot_stretch_the_timeout(server, sender, in_headers):
    # Each byte arrives well within any per-read timeout; only a deadline on the whole attempt stops it.
    server.answer = drip(in_headers)
    started = time.monotonic()
    error = refusal(sender, server.url(), timeout=1)
    assert error.message == "timed out after 1 s" and not error.permanent
    assert time.monotonic() - started < 2


def test_connection_refused_is_a_temporary_failure(sender):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = refusal(sender, f"http://127.0.0.1:{port}/hook")
    assert error.message == "connection refused" and not error.permanent


def test_an_unknown_host_is_a_temporary_failure(sender):
    error = refusal(sender, "http://no-such-host.invalid/hook")
    assert "does not resolve" in error.message and not error.permanent


def test_only_the_first_kib_of_a_big_answer_is_kept(server, sender):
    big = bytes(range(256)) * 4096  # 1 MiB
    server.answer = respond(500, big)
    started = time.monotonic()
    response = post(sender, server.url())
    assert response.status_code == 500 and response.body == big[:1024]
    assert time.monotonic() - started < 2
    server.answer = respond(200, b"small")
    assert post(sender, server.url()).body == b"small"  # the next post still works


def test_kept_alive_connection_carries_several_posts(server, sender):
    for n in range(5):
        assert post(sender, server.url(), f"post {n}".encode()).body == f"post {n}".encode()
    assert len(server.requests) == 5 and len(server.connections) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_without_double_sending(server, sender):
    server.answer = answer_then_close
    post(sender, server.url(), b"one")
    time.sleep(0.2)  # the server has closed the kept-alive connection by now
    server.answer = respond(200)
    assert post(sender, server.url(), b"two").body == b"two"
    assert [got.body for got in server.requests] == [b"one", b"two"]
    assert len(server.connections) == 2


def test_a_request_that_reached_the_server_is_not_sent_twice(server, sender):
    post(sender, server.url(), b"one")  # leaves a kept-alive connection
    server.script = [close_without_answer]
    error = refusal(sender, server.url())
    assert error.message == "the server closed the connection without answering" and not error.permanent
    assert len(server.requests) == 2  # the lost answer is the caller's to retry, later, not ours now
    assert post(sender, server.url(), b"three").status_code == 200


def test_a_request_the_server_never_read_is_sent_again_once_on_a_fresh_connection(server, sender):
    post(sender, server.url(), b"one")
    big = b"x" * (32 * 1024 * 1024)  # larger than any socket buffer, so sending fails midway
    server.script = [reset_before_body]
    assert post(sender, server.url(), big, timeout=20).status_code == 200
    assert [len(got.body) for got in server.requests] == [3, len(big)]
    assert len(server.connections) == 2
    # On a connection that was fresh, the same failure is an error, not a second try.
    fresh = Sender(allow_http=True, allow_private=True)
    server.script = [reset_before_body]
    with pytest.raises(DeliveryError) as caught:
        fresh.post(server.url(), big, {}, 20)
    fresh.close()
    error = caught.value
    assert not error.permanent and "closed the connection" in error.message
    assert len(server.requests) == 2


def test_several_threads_can_post_at_once(server):
    shared = Sender(allow_http=True, allow_private=True, pool_size=4)
    results: dict[str, bytes] = {}
    failures: list[Exception] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                body = f"thread {n} post {i}".encode()
                results[body.decode()] = post(shared, server.url(), body).body
        except Exception as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shared.close()
    assert failures == []
    assert len(results) == 200 and all(key.encode() == body for key, body in results.items())
    assert len(server.requests) == 200
    assert len(server.connections) <= 8 + 200 // 2  # connections are reused, not one per post


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA and a certificate for `localhost` only, made with the openssl CLI."""
    try:
        command = provision.openssl_command()
    except provision.Missing as exc:
        pytest.fail(str(exc), pytrace=False)
    folder = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run([command, *args], cwd=folder, check=True, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3", "-subj", "/CN=wahook test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash")  # fmt: skip
    openssl("req", "-new", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "3", "-extfile", "server.ext", "-out", "server.pem")  # fmt: skip
    return {name: folder / f"{name}.pem" for name in ("ca", "server")} | {"key": folder / "server.key"}


@pytest.fixture
def tls_server(certs):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["server"], certs["key"])
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    started = Server(tls=context)
    started.sni = names
    yield started
    started.close()


def test_tls_post_verifies_the_certificate_and_sends_sni(tls_server, certs):
    sender = Sender(allow_http=False, allow_private=True, ca_certs=str(certs["ca"]))
    for n in range(3):
        assert post(sender, tls_server.url("localhost"), f"{n}".encode()).body == f"{n}".encode()
    sender.close()
    assert len(tls_server.requests) == 3 and len(tls_server.connections) == 1
    assert tls_server.sni == ["localhost"]


def test_tls_refuses_a_certificate_from_an_unknown_ca(tls_server):
    sender = Sender(allow_http=False, allow_private=True)  # the public CA bundle
    error = refusal(sender, tls_server.url("localhost"))
    sender.close()
    assert error.message.startswith("TLS certificate verify failed: ") and not error.permanent
    assert tls_server.requests == []


def test_tls_checks_the_name_in_the_url_not_the_address_connected_to(tls_server, certs):
    sender = Sender(allow_http=False, allow_private=True, ca_certs=str(certs["ca"]))
    error = refusal(sender, tls_server.url("127.0.0.1"))  # the certificate names only localhost
    sender.close()
    assert error.message.startswith("TLS certificate verify failed: ") and "127.0.0.1" in error.message
    assert tls_server.requests == []


def test_tls_to_a_blocked_address_never_starts_a_handshake(tls_server, certs):
    sender = Sender(allow_http=False, allow_private=False, ca_certs=str(certs["ca"]))
    error = refusal(sender, tls_server.url("localhost"))
    sender.close()
    assert error.permanent and error.message.startswith("blocked: localhost resolves to ")
    assert tls_server.connections == []


def test_tls_server_that_drips_cannot_stretch_the_timeout(tls_server, certs):
    tls_server.answer = drip(in_headers=True)
    sender = Sender(allow_http=False, allow_private=True, ca_certs=str(certs["ca"]))
    started = time.monotonic()
    error = refusal(sender, tls_server.url("localhost"), timeout=1)
    sender.close()
    assert error.message == "timed out after 1 s"
    assert time.monotonic() - started < 2


def test_closing_the_sender_closes_its_idle_connections(server):
    sender = Sender(allow_http=True, allow_private=True)
    post(sender, server.url())
    sender.close()
    assert post(sender, server.url()).status_code == 200  # still usable; just nothing kept
    assert len(server.connections) == 2


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://crm.example.com/hooks/wa?token=abc#x", "https://crm.example.com/hooks/wa"),
        ("https://user:pass@crm.example.com:8443/h", "https://crm.example.com:8443/h"),
        ("http://[::1]:9000/hook?k=v", "http://[::1]:9000/hook"),
        ("https://crm.example.com", "https://crm.example.com"),
    ],
)
def test_shown_url_drops_credentials_query_and_fragment(url, shown):
    assert shown_url(url) == shown
