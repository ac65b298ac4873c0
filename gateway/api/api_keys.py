"""API keys for the publish, pull and stream API: made, listed, revoked and checked.

A key reads `wak_<prefix>_<secret>`. Only its SHA-256 is stored: the key carries 256 random
bits, so a fast hash is as safe as a slow one and costs nothing per request. The prefix is
random too but not secret; it finds the row, and the stored hash is then compared with
`hmac.compare_digest`, so how long a check takes says nothing about the key.

The full key is returned once, by `create`, and never logged or stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from gateway.storage import db
from gateway.storage.db import transaction

KEY_PREFIX = "wak_"
SCOPES = ("publish", "read")
KEY_RE = re.compile(r"wak_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME_MAX = 100
# A read touches last_used_at at most this often, so a client polling every second does not
# take the write lock that Meta's POSTs need every second; the page shows it to this much.
LAST_USED_RESOLUTION = 10.0


class ApiKeyError(ValueError):
    """A name or scope the admin must change; `field` names the form field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": KEY_PREFIX + self.prefix,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
        }


def _row(row: db.Row) -> ApiKey:
    return ApiKey(
        row["id"],
        row["name"],
        row["prefix"],
        tuple(s for s in row["scopes"].split(",") if s),
        row["created_at"],
        row["last_used_at"],
        row["revoked_at"],
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def clean_scopes(scopes) -> tuple[str, ...]:
    """Scopes from a list or a comma-separated string; at least one, each known."""
    if isinstance(scopes, str):
        scopes = scopes.split(",")
    cleaned = {str(s).strip() for s in scopes or [] if str(s).strip()}
    unknown = sorted(s for s in cleaned if s not in SCOPES)
    if unknown:
        raise ApiKeyError("scopes", f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    if not cleaned:
        raise ApiKeyError("scopes", f"give at least one scope: {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in cleaned)


def clean_name(name) -> str:
    name = str(name or "").strip()
    if not name:
        raise ApiKeyError("name", "a name is required (say what will use the key)")
    if len(name) > NAME_MAX or not name.isprintable():
        raise ApiKeyError("name", f"the name must be at most {NAME_MAX} printable characters")
    return name


def create(conn: db.Connection, name, scopes) -> tuple[ApiKey, str]:
    """Make a key; returns it and the full key, which is shown this once."""
    name = clean_name(name)
    scopes = clean_scopes(scopes)
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with transaction(conn):
        row = conn.execute(
            "INSERT INTO api_keys (name, prefix, key_hash, scopes, created_at) VALUES (?, ?, ?, ?, ?) RETURNING *",
            (name, prefix, hash_key(key), ",".join(scopes), time.time()),
        ).fetchone()
    return _row(row), key


def list_all(conn: db.Connection) -> list[ApiKey]:
    return [_row(row) for row in conn.execute("SELECT * FROM api_keys ORDER BY id")]


def by_id(conn: db.Connection, key_id: int) -> ApiKey | None:
    row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return None if row is None else _row(row)


def live_ids(conn: db.Connection, key_ids: list[int]) -> set[int]:
    """Those of `key_ids` that still exist unrevoked (open streams and sockets end for the rest)."""
    if not key_ids:
        return set()
    marks = ",".join("?" for _ in key_ids)
    sql = f"SELECT id FROM api_keys WHERE revoked_at IS NULL AND id IN ({marks})"  # noqa: S608 (marks only)
    return {row[0] for row in conn.execute(sql, key_ids)}


def revoke(conn: db.Connection, key_id: int) -> bool:
    """Revoke a key for good; False when there is no such key. Revoking twice is harmless."""
    with transaction(conn):
        found = conn.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if found is None:
            return False
        if found["revoked_at"] is None:
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id))
    return True


class Refused(Exception):
    """Why a request's key is not accepted: `status` 401 (no, unknown or revoked key) or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check(conn: db.Connection, key: str | None, scope: str) -> ApiKey:
    """The key's row when `key` is a live key with `scope`; raises Refused otherwise."""
    if not key:
        raise Refused(401, "send an API key as Authorization: Bearer <key>")
    match = KEY_RE.fullmatch(key)
    row = conn.execute("SELECT * FROM api_keys WHERE prefix = ?", (match.group(1),)).fetchone() if match else None
    # Hash and compare even when nothing was found, so a wrong key and an unknown one take as long.
    expected = row["key_hash"] if row is not None else "0" * 64
    same = hmac.compare_digest(hash_key(key).encode("ascii"), expected.encode("ascii"))
    if row is None or not same:
        raise Refused(401, "unknown API key")
    found = _row(row)
    if found.revoked_at is not None:
        raise Refused(401, "this API key was revoked")
    if scope not in found.scopes:
        raise Refused(403, f"this API key lacks the {scope!r} scope")
    return found


def touch(conn: db.Connection, key: ApiKey, now: float | None = None, *, force: bool = False) -> None:
    """Record a use of `key`. Call inside a transaction when `force`; otherwise it takes its own,
    and only when the recorded time is older than LAST_USED_RESOLUTION."""
    now = time.time() if now is None else now
    if force:
        conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key.id))
        return
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    with transaction(conn):
        conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key.id))
