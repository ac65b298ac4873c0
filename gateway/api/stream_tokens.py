"""Stream tokens (SPEC 7): short-lived, read-only credentials a browser page can carry.

A browser's EventSource and WebSocket cannot send an Authorization header, and an API key
must never reach a browser. So the admin's backend mints a token with its read key
(`POST /api/v1/stream-tokens`) and hands it to its page, which sends it as `?token=`.

A token reads `wst_<payload>.<signature>`: the payload is base64url JSON holding the key id,
the expiry and the events and accounts filters; the signature is HMAC-SHA256 over the payload
with a key derived from the server's secret key, compared in constant time. Nothing is
stored: revoking the API key (its id is in the token) ends every token minted with it, and
changing the secret key ends them all. A token only ever reads: publish takes keys alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from gateway.api import api_keys
from gateway.delivery import accounts
from gateway.intake import event_names
from gateway.storage import db

PREFIX = "wst_"
MAX_TTL_SECONDS = 86400
DEFAULT_TTL_SECONDS = 900
MAX_TOKEN_CHARS = 8192  # a longer ?token= is refused before any work is done on it
_PURPOSE = b"wahook stream token v1"


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: reading as key `key_id`, these filters only ([] = any)."""

    key_id: int
    expires_at: int
    events: tuple[str, ...]
    accounts: tuple[str, ...]


def _signing_key(secret_key: str) -> bytes:
    # Derived, so a token's signature never doubles as a session cookie's, or the reverse.
    return hmac.new(secret_key.encode("utf-8"), _PURPOSE, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_request(body: dict) -> tuple[int, list[str], list[str]]:
    """(ttl_seconds, events, accounts) of a token request's JSON object; ValueError says what
    is wrong (a 422)."""
    extra = sorted(set(body) - {"ttl_seconds", "events", "accounts"})
    if extra:
        raise ValueError(f"unknown field {extra[0]!r}; a token request has ttl_seconds, events and accounts")
    ttl = body.get("ttl_seconds", DEFAULT_TTL_SECONDS)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be a whole number from 1 to {MAX_TTL_SECONDS}")
    for name in ("events", "accounts"):
        value = body.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings")
    return ttl, event_names.clean_filter(body.get("events", [])), accounts.clean(body.get("accounts", []))


def grant_for(key: api_keys.ApiKey, ttl_seconds: int, events: list[str], accounts: list[str]) -> Grant:
    """A grant for `key` lasting `ttl_seconds` (already checked: 1 to MAX_TTL_SECONDS)."""
    return Grant(key.id, int(time.time()) + ttl_seconds, tuple(events), tuple(accounts))


def encode(secret_key: str, grant: Grant) -> str:
    payload = _b64(
        json.dumps(
            {"k": grant.key_id, "x": grant.expires_at, "e": list(grant.events), "a": list(grant.accounts)},
            separators=(",", ":"),
        ).encode("utf-8")
    )
    signature = _b64(hmac.new(_signing_key(secret_key), payload.encode("ascii"), hashlib.sha256).digest())
    return f"{PREFIX}{payload}.{signature}"


class Invalid(Exception):
    """Why a token is refused (always a 401)."""


def decode(secret_key: str, token: str, now: float | None = None) -> Grant:
    """The grant a well-signed, unexpired token carries; raises Invalid otherwise."""
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX) or token.count(".") != 1:
        raise Invalid("not a stream token")
    payload, _, signature = token[len(PREFIX) :].partition(".")
    expected = _b64(hmac.new(_signing_key(secret_key), payload.encode("ascii", "replace"), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace")):
        raise Invalid("stream token signature does not match")
    try:
        fields = json.loads(_unb64(payload))
        grant = Grant(int(fields["k"]), int(fields["x"]), tuple(fields["e"]), tuple(fields["a"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise Invalid("stream token payload is unreadable") from None
    if grant.expires_at <= (time.time() if now is None else now):
        raise Invalid("stream token expired; mint a new one")
    return grant


def check(conn: db.Connection, secret_key: str, token: str) -> tuple[api_keys.ApiKey, Grant]:
    """The live read key behind `token` and its grant; raises apikeys.Refused (401) otherwise."""
    try:
        grant = decode(secret_key, token)
    except Invalid as exc:
        raise api_keys.Refused(401, str(exc)) from None
    key = api_keys.by_id(conn, grant.key_id)
    if key is None:
        raise api_keys.Refused(401, "the API key that minted this token was deleted")
    if key.revoked_at is not None:
        raise api_keys.Refused(401, "the API key that minted this token was revoked")
    if "read" not in key.scopes:
        raise api_keys.Refused(401, "the API key that minted this token no longer has the 'read' scope")
    return key, grant
