"""Server-Sent Events for `GET /api/v1/stream`: the frames, the loop, and the stream slots.

A stream holds one of its web process's request slots for as long as it is open (see
gunicorn.conf.py: WAHOOK_WEB_THREADS requests at once, a greenlet or a thread each). So each
web process serves at most `threads - RESERVED_THREADS` streams at once; one more is refused
with 503 and a Retry-After, and the reserved slots are always left for Meta's POSTs and the pages. One
API key (with the stream tokens minted from it) holds at most half of a process's slots, so
a client that opens streams in a loop cannot lock every other reader out.

The loop looks for new commits every POLL_SECONDS with `PRAGMA data_version` (db.CommitWatch),
reads a page only when something was committed, sends a comment line when it has been
quiet for HEARTBEAT_SECONDS (proxies and browsers drop silent connections; a dead client
shows up as a failed write), and ends when its worker is shutting down, so a stream never
holds up a restart. A client resumes with Last-Event-ID.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

from gateway.api import api_keys, event_reader
from gateway.storage import db

POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 10.0  # the contract asks for at least one line every 15 s
PAGE = 200
RESERVED_THREADS = 8
DEFAULT_SLOTS = 32  # outside gunicorn (the Flask test client, `flask run`)
RETRY_MS = 2000  # how long an EventSource waits before reconnecting

_slots = threading.BoundedSemaphore(DEFAULT_SLOTS)
_per_key_cap = DEFAULT_SLOTS // 2
_held: dict[int, int] = {}  # API key id -> slots its streams hold in this process
_held_lock = threading.Lock()
_serving: Callable[[], bool] = lambda: True  # noqa: E731 (replaced by the worker hook)


def configure(threads: int, serving: Callable[[], bool]) -> None:
    """Called in each gunicorn worker after boot: size the slots to its threads and learn how
    to tell that it is shutting down."""
    global _slots, _serving, _per_key_cap
    slots = max(1, threads - RESERVED_THREADS)
    _slots = threading.BoundedSemaphore(slots)
    _per_key_cap = max(1, slots // 2)
    _serving = serving


def take_slot(key_id: int) -> str | None:
    """Take a stream slot for API key `key_id`; None when taken, else why not (a 503's text)."""
    with _held_lock:
        if _held.get(key_id, 0) >= _per_key_cap:
            return f"this API key already holds {_per_key_cap} streams in this web process; close one or retry"
        if not _slots.acquire(blocking=False):
            return "this web process has no stream slot free; retry shortly"
        _held[key_id] = _held.get(key_id, 0) + 1
    return None


def release_slot(key_id: int) -> None:
    with _held_lock:
        left = _held.get(key_id, 1) - 1
        if left > 0:
            _held[key_id] = left
        else:
            _held.pop(key_id, None)
        _slots.release()


def serving() -> bool:
    """Whether this process is still serving (False once its worker is shutting down)."""
    return _serving()


def frame(row) -> str:
    """One event as an SSE message. The body is one line of JSON (json.dumps escapes newlines)."""
    return f"id: {row['event_id']}\nevent: {row['name']}\ndata: {row['body']}\n\n"


def events(
    database: str | os.PathLike,
    after_row: event_reader.Position,
    wanted: list[str],
    account_ids: list[str] = (),
    key_id: int | None = None,
    expires_at: float | None = None,
) -> Iterator[str]:
    """The stream's text, from the event after position `after_row` on, until the client or the worker
    goes, or (checked every HEARTBEAT_SECONDS) key `key_id` is revoked or the token's
    `expires_at` passes. Its slot is released by the response's close (see api.events_stream), which also
    runs for a generator that never started."""
    conn = db.connection(database)
    yield f"retry: {RETRY_MS}\n: connected\n\n"
    quiet_since = checked = time.monotonic()
    for rows in event_reader.follow(conn, after_row, wanted, POLL_SECONDS, PAGE, lambda: _serving(), account_ids):
        if time.monotonic() - checked >= HEARTBEAT_SECONDS:
            checked = time.monotonic()
            if (expires_at is not None and time.time() >= expires_at) or (
                key_id is not None and not api_keys.live_ids(conn, [key_id])
            ):
                return  # the reader reconnects with a fresh token (or is refused)
        if rows:
            yield "".join(frame(row) for row in rows)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
            yield f": keep-alive {int(time.time())}\n\n"
            quiet_since = time.monotonic()
