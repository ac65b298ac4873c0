"""Intake without the database: what wahook does with a Meta POST before it is stored.

Served like bare_app.py, by the same gunicorn settings (`gunicorn bench.checks_app:app -c
gunicorn.conf.py`, with WAHOOK_CONFIG naming the installation's config for its App secret). It
reads the body, checks the signature, decodes the JSON, draws the events and builds what would
be written (webhook.arrival_of), then answers 200 without writing anything: a ceiling for the
intake. Bare Flask, this, and wahook side by side show whether an intake's time goes to its
checks and parsing or to storing (the write lock, the group commit, SQLite).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from gateway.config import load_config
from gateway.intake import meta_parser, webhook
from gateway.media import links

config = load_config()


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """Meta's POST answered as wahook's intake would, up to the write; a GET of the same path 400
    (wahook's answer to a verification without its parameters, which the bench waits for)."""
    if environ.get("PATH_INFO") != webhook.PATH or environ.get("REQUEST_METHOD") != "POST":
        status = "400 BAD REQUEST" if environ.get("PATH_INFO") == webhook.PATH else "404 NOT FOUND"
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    raw = webhook.body_of(environ) or b""
    problem, simulated = webhook.signature_problem(
        raw, environ.get("HTTP_X_HUB_SIGNATURE_256"), config["meta"]["app_secret"]
    )
    if problem:
        start_response("401 UNAUTHORIZED", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    body = webhook.DECODER.decode(raw.decode("utf-8"))
    received_at = time.time()
    drawn = meta_parser.parse(body, received_at)
    links.attach(drawn, config, received_at, environ)
    webhook.arrival_of(raw, body, drawn, received_at, simulated)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
