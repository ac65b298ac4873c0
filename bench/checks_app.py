"""Intake without the database: what wahook does with a Meta POST before it is stored.

Served like bare_app.py, by the same gunicorn settings (`gunicorn bench.checks_app:app -c
gunicorn.conf.py`, with WAHOOK_CONFIG naming the installation's config for its App secret). It
answers Meta's POST with the intake's own code (webhook.respond: the body, the signature, the
JSON, the events drawn) but `webhook.store` only builds what would be written
(webhook.arrival_of) and writes nothing: a ceiling for the intake. Bare Flask, this, and wahook
side by side show whether an intake's time goes to its checks and parsing or to storing (the
write lock, the group commit, SQLite).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway.config import load_config
from gateway.intake import webhook, wsgi

APP_CONFIG = {"WAHOOK": load_config(), "WAHOOK_SIMULATE_KEY": ""}


def build_only(database: str, raw: bytes, body: dict, drawn: list, received_at: float, simulated: bool = False) -> int:
    """webhook.store without the database: the arrival is made, nothing is written, no delivery."""
    webhook.arrival_of(raw, body, drawn, received_at, simulated)
    return 0


# This process serves the benchmark and nothing else.
webhook.store = build_only


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """Meta's POST answered as wahook's intake would, up to the write; a GET of the same path 400
    (wahook's answer to a verification without its parameters, which the bench waits for)."""
    if environ.get("PATH_INFO") != webhook.PATH or environ.get("REQUEST_METHOD") != "POST":
        status = "400 BAD REQUEST" if environ.get("PATH_INFO") == webhook.PATH else "404 NOT FOUND"
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    status, text = webhook.respond(environ, APP_CONFIG)
    body = text.encode("utf-8")
    start_response(
        wsgi.REASONS[status], [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]
