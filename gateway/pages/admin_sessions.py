"""Admin sessions kept on the server, so that ending one is real.

The signed cookie (auth.py) carries a random token; the `admin_sessions` table keeps the
token's sha256 (a copy of the database hands out no session) with the mark of the password it
was opened with. A session is open while its row is there, the password is unchanged and it
was used within the session lifetime. Logging out deletes the row, so a copied cookie stops
working at once; a login with a changed password deletes every row of the old one, so putting
the old password back later does not revive them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from gateway.storage import db
from gateway.storage.db import transaction

TOUCH_EVERY = 300.0  # seconds: how stale seen_at may get before a page view writes it again


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def start(conn: db.Connection, password_mark: str, lifetime: float, now: float | None = None) -> str:
    """Open a session for the password with this mark; its token, for the cookie. Sessions of
    another password, or unused for `lifetime` seconds, are deleted on the way."""
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    with transaction(conn):
        conn.execute(
            "DELETE FROM admin_sessions WHERE password_mark <> ? OR seen_at < ?", (password_mark, now - lifetime)
        )
        conn.execute(
            "INSERT INTO admin_sessions (token_hash, password_mark, created_at, seen_at) VALUES (?, ?, ?, ?)",
            (_hash(token), password_mark, now, now),
        )
    return token


def is_open(conn: db.Connection, token: str, password_mark: str, lifetime: float, now: float | None = None) -> bool:
    """Whether the session with this token is open; a use now keeps it open `lifetime` more."""
    now = time.time() if now is None else now
    row = conn.execute(
        "SELECT password_mark, seen_at FROM admin_sessions WHERE token_hash = ?", (_hash(token),)
    ).fetchone()
    if row is None or not hmac.compare_digest(row[0], password_mark) or row[1] < now - lifetime:
        return False
    if now - row[1] > TOUCH_EVERY:  # sliding, at one write per session every few minutes at most
        with transaction(conn):
            conn.execute("UPDATE admin_sessions SET seen_at = ? WHERE token_hash = ?", (now, _hash(token)))
    return True


def end(conn: db.Connection, token: str) -> None:
    """Close the session with this token (logging out)."""
    with transaction(conn):
        conn.execute("DELETE FROM admin_sessions WHERE token_hash = ?", (_hash(token),))
