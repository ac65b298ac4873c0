"""Meta's POST answered as plain WSGI, in front of Flask.

Every other request goes through Flask. This one is the path Meta waits on, thousands of times a
second in a campaign, and it needs none of what Flask adds per request (a request and app
context, the session check, URL matching, the hooks): that cost about 70 microseconds of CPU
per webhook, a tenth of an intake. The answer is the same one Flask's view gives (webhook.respond),
with the same security headers every response carries.

Being the process's WSGI entry, it also ends every request the same way (`finish`): under the
gevent workers (gunicorn.conf.py) the request's database and Redis connections go to the next
request (storage/task_local.py), and at most `configure(n)` requests are served at once, as a
threaded worker with n threads would: so a flood of clients opens no more connections to the
database than that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from flask import Flask

from gateway.intake import webhook
from gateway.storage import task_local

log = logging.getLogger("wahook.intake")

REASONS = {
    200: "200 OK",
    400: "400 BAD REQUEST",
    401: "401 UNAUTHORIZED",
    413: "413 REQUEST ENTITY TOO LARGE",
    500: "500 INTERNAL SERVER ERROR",
    503: "503 SERVICE UNAVAILABLE",
}


# Requests this process serves at once; None (no limit) outside gunicorn (tests, `flask run`).
_slots: threading.BoundedSemaphore | None = None


def configure(requests_at_once: int) -> None:
    """Serve at most `requests_at_once` requests at a time in this process (gunicorn's hook)."""
    global _slots
    _slots = threading.BoundedSemaphore(requests_at_once)


def finish() -> None:
    """A request has ended (its answer sent, or failed): its connections go on, its slot is free."""
    try:
        task_local.hand_on_all()
    finally:
        if _slots is not None:
            _slots.release()


class Finishing:
    """An answer's body as the server iterates it; `close` is the one `finishing` made."""

    __slots__ = ("answer", "close")

    def __init__(self, answer: Iterable[bytes], close: Callable[[], None]) -> None:
        self.answer = answer
        self.close = close

    def __iter__(self):
        return iter(self.answer)


def finishing(answer: Iterable[bytes], environ: dict) -> Iterable[bytes]:
    """`answer`, made to call finish() when the server closes it, even if its own close() raises
    (a lost slot would never come back). A file the server sends itself (its wsgi.file_wrapper:
    sendfile, for media and static files) stays that object, with the close chained."""
    own_close = getattr(answer, "close", None)

    def close() -> None:
        try:
            if own_close is not None:
                own_close()
        finally:
            finish()

    file_wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(file_wrapper, type) and isinstance(answer, file_wrapper):
        answer.close = close
        return answer
    return Finishing(answer, close)


class IntakeFirst:
    """A WSGI app: POST to webhook.PATH is answered here, anything else by `app` (Flask)."""

    def __init__(self, app: Flask, headers: Iterable[tuple[str, str]]) -> None:
        self.app = app
        self.flask = app.wsgi_app
        self.headers = list(headers)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if _slots is not None:
            _slots.acquire()
        if environ.get("PATH_INFO") != webhook.PATH or environ.get("REQUEST_METHOD") != "POST":
            try:
                answer = self.flask(environ, start_response)
            except BaseException:
                finish()
                raise
            return finishing(answer, environ)  # once the body is sent: a stream's is long
        try:
            return self.intake(environ, start_response)
        finally:
            finish()

    def intake(self, environ: dict, start_response: Callable) -> list[bytes]:
        """Meta's POST, answered whole."""
        try:
            status, text = webhook.respond(environ, self.app.config)
        except Exception:
            propagate = self.app.config.get("PROPAGATE_EXCEPTIONS")
            if propagate or (propagate is None and (self.app.testing or self.app.debug)):
                raise  # as Flask decides: in tests and under the debugger the error itself is seen
            log.exception("Exception on %s [POST]", webhook.PATH)
            status, text = 500, "internal server error"
        body = text.encode("utf-8")
        start_response(
            REASONS[status],
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *self.headers],
        )
        return [body]


def serve_intake_first(app: Flask, headers: Iterable[tuple[str, str]]) -> None:
    """Put the intake in front of `app`'s Flask handling; `headers` go on every answer it gives."""
    app.wsgi_app = IntakeFirst(app, headers)
