"""Where wahook may connect: the URLs it accepts and the addresses it refuses (SSRF rules).

An endpoint URL is typed in by an admin, and the URL Graph hands back for a media file comes
from outside; whoever controls a name's DNS decides where it points. These are the rules both
are held to, as pure functions of a URL or an address: safe_http applies them when an endpoint
is saved and again at every new connection, to the addresses the name resolves to then.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import quote, urlsplit

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

ALLOW_HTTP_HINT = " (mark the endpoint local for a receiver on this machine or network, or set delivery.allow_http)"
LOCAL_PRIVATE_HINT = (
    " (mark the endpoint local for a receiver on this machine or network, or set delivery.allow_private_urls)"
)
ALLOW_PRIVATE_HINT = " (set delivery.allow_private_urls to allow it)"
NEVER_LOCAL_HINT = " (a local endpoint may use loopback and private addresses only)"


class RuleError(ValueError):
    """A URL the delivery rules refuse; `rule` names the setting, `hint` ends the message."""

    def __init__(self, message: str, rule: str, hint: str) -> None:
        super().__init__(message + hint)
        self.rule = rule
        self.hint = hint


def private_hint(why: str, local: bool) -> str:
    """How the admin could allow an address refused for `why`, said so it never suggests the
    `local` mark for addresses that mark does not open."""
    if any(why.endswith(kind) for kind in LOCAL_KINDS):
        return ALLOW_PRIVATE_HINT if local else LOCAL_PRIVATE_HINT
    return NEVER_LOCAL_HINT if local else ALLOW_PRIVATE_HINT


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")
_IPV4_PART = re.compile(r"0x[0-9a-f]*|[0-9]+")


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
def shown_url(url: str) -> str:
    """The URL without credentials, query string and fragment (SPEC 3): what operational events
    and anyone but the admin may see. Receiver URLs are often capability URLs with a token."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else host + parts.path


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
            raise RuleError(wanted, "allow_http", ALLOW_HTTP_HINT)
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


def blocked_message(host: str, ip: IP, why: str) -> str:
    literal = parse_ip(host)
    if literal is None:
        return f"{host} resolves to {ip}, {why}"
    # An odd spelling (2130706433) is shown with the address it stands for.
    return f"{host} is {why}" if ":" in host or host == str(ip) else f"{host} is {ip}, {why}"
