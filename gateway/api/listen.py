"""`flask --app app listen`: print each new event as one JSON line, and maybe forward it.

A client of pull and stream (SPEC 7). By default it reads this installation's database
directly, as the pull API would (event_reader.py), so it needs no key and works beside `make run`.
With `--server URL --api-key K` it follows a remote wahook's `GET /api/v1/stream` instead,
reconnecting with Last-Event-ID when the connection drops, so nothing is missed.

With `--forward-to URL` each event is also POSTed there, with exactly the headers a delivery
carries (delivery.build_headers), signed with `--secret` or a secret made for this run and
printed at start: a developer points it at a handler on a laptop and checks signatures as
in production. Status lines go to stderr; stdout carries only events.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import click
import requests
from flask import current_app
from flask.cli import with_appcontext

from gateway.api import event_reader
from gateway.delivery import endpoints, send
from gateway.storage import db, pg

POLL_SECONDS = 0.2
PAGE = 200
FORWARD_ATTEMPTS = 3
RECONNECT_MAX = 30.0
READ_TIMEOUT = 60  # the stream sends a comment line at least every 15 s


class Fatal(Exception):
    """Something retrying cannot fix (a refused key, an unknown cursor): say it and stop."""


def say(message: str) -> None:
    click.echo(message, err=True)


def local_events(path, after: str | None, wanted: list[str]) -> Iterator[tuple[str, str, str]]:
    """(event_id, name, body) of each event committed to the database at `path` after `after`
    (an event_id; None: from now on), as they come. The starting point is fixed on the call,
    not on the first read, so an event committed in between is not missed."""
    conn = db.connection(path)
    try:
        after_row = event_reader.cursor_row(conn, after) if after else event_reader.latest_row(conn)
    except event_reader.UnknownCursor:
        raise Fatal(f"unknown event_id {after!r}: never stored, or pruned") from None
    return (
        (row["event_id"], row["name"], row["body"])
        for rows in event_reader.follow(conn, after_row, wanted, POLL_SECONDS, PAGE)
        for row in rows
    )


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, str]]:
    """(id, event, data) of each message in an SSE text stream; comments are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield fields.get("id", ""), fields.get("event", "message"), fields["data"]
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value


def remote_events(server: str, api_key: str, after: str | None, wanted: list[str]) -> Iterator[tuple[str, str, str]]:
    """(event_id, name, body) from a remote wahook's stream, reconnecting after `after` on drops."""
    url = server.rstrip("/") + "/api/v1/stream"
    params = {"events": ",".join(wanted)} if wanted else {}
    pause = 1.0
    while True:
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"}
        if after:
            headers["Last-Event-ID"] = after
        try:
            with requests.get(url, params=params, headers=headers, stream=True, timeout=(10, READ_TIMEOUT)) as got:
                if got.status_code in (400, 401, 403, 404, 422):
                    raise Fatal(f"{url} answered {got.status_code}: {got.text[:300]}")
                if got.status_code != 200:
                    raise requests.RequestException(f"HTTP {got.status_code}")
                pause = 1.0
                say(f"connected to {url}")
                # Split bytes, then decode: str.splitlines would also break at U+2028 and other
                # characters a JSON string may hold raw, where SSE has no line break.
                lines = (line.decode("utf-8") for line in got.iter_lines())
                for event_id, name, data in parse_sse(lines):
                    if name == "error":
                        continue
                    after = event_id or after
                    yield event_id, name, data
        except requests.RequestException as exc:
            say(f"stream from {url} interrupted ({exc}); reconnecting in {pause:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, RECONNECT_MAX)


def forward(session: requests.Session, url: str, secret: str, event_id: str, name: str, body: str) -> None:
    """POST one event to `url` signed like a delivery; report the outcome on stderr."""
    raw = body.encode("utf-8")
    for attempt in range(1, FORWARD_ATTEMPTS + 1):
        headers = send.build_headers(
            {"secret": secret, "previous_secret": "", "bearer_token": ""},
            {"event_name": name, "message_id": event_id},
            raw,
        )
        started = time.monotonic()
        try:
            answer = session.post(url, data=raw, headers=headers, timeout=10, allow_redirects=False)
        except requests.RequestException as exc:
            outcome = f"error: {exc}"
        else:
            if 200 <= answer.status_code < 300:
                say(f"-> {url}: {answer.status_code} in {(time.monotonic() - started) * 1000:.0f} ms ({event_id})")
                return
            outcome = f"HTTP {answer.status_code}"
        if attempt < FORWARD_ATTEMPTS:
            time.sleep(attempt)
    say(f"-> {url}: gave up on {event_id} after {FORWARD_ATTEMPTS} attempts ({outcome})")


@click.command("listen")
@click.option("--forward-to", default=None, help="POST each event to this URL, signed like a delivery.")
@click.option("--secret", default=None, help="whsec_<base64> to sign forwards with; made for this run when left out.")
@click.option("--events", "events_", default="", help="Comma-separated names or prefix.* entries; default all.")
@click.option("--server", default=None, help="A remote wahook's base URL (needs --api-key with the read scope).")
@click.option("--api-key", envvar="WAHOOK_API_KEY", default=None, help="API key for --server (or WAHOOK_API_KEY).")
@click.option("--after", default=None, help="Start after this event_id instead of with the next new event.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@with_appcontext
def listen(forward_to, secret, events_, server, api_key, after, count) -> None:
    """Print each new event as one JSON line; with --forward-to, POST it there signed."""
    try:
        wanted = event_reader.parse_filter(events_)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--events") from None
    if secret is not None and (problem := endpoints.check_secret(secret)):
        raise click.BadParameter(problem, param_hint="--secret")
    if server and not api_key:
        raise click.UsageError("--server needs --api-key (a key with the read scope; see `apikey add`)")
    if forward_to and not forward_to.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--forward-to")
    try:
        if server:
            source = remote_events(server, api_key, after, wanted)
            where = server
        else:
            config = current_app.config["WAHOOK"]
            source = local_events(config.database, after, wanted)
            where = pg.redacted(config.database_url) if config.database_url else str(config.database_path)
    except Fatal as exc:
        say(f"listen: {exc}")
        sys.exit(1)
    say(f"listening to {where} for {', '.join(wanted) or 'every event'}; Ctrl-C stops")
    session = requests.Session()
    if forward_to:
        secret = secret or endpoints.generate_secret()
        say(f"forwarding to {forward_to}, signed with secret {secret}")
    seen = 0
    try:
        for event_id, name, body in source:
            click.echo(body)
            sys.stdout.flush()
            if forward_to:
                forward(session, forward_to, secret, event_id, name, body)
            seen += 1
            if count is not None and seen >= count:
                return
    except Fatal as exc:
        say(f"listen: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        return
