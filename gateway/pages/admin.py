"""The admin pages: login (auth.py), settings (settings.py), the Webhook Health Monitor
(monitor.py) and the event log (event_log.py), all server-rendered with Jinja.

`init_app` registers them, the template helpers they share and the error pages. Every
template is .html, so Jinja escapes every value; nothing in these pages is marked safe.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from flask import Flask, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from gateway.api import routes
from gateway.pages import auth, event_log, keys_page, monitor, settings


def utc(ts: float | None) -> str:
    """A unix time as `2026-11-20 21:40:03 UTC`."""
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts: float | None) -> str:
    """A unix time for <time datetime=...>."""
    return datetime.fromtimestamp(ts or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(ts: float | None, now: float | None = None) -> str:
    """`3 min ago`, `in 8 s`: how far a time is from now, in the largest sensible unit."""
    if ts is None:
        return "never"
    delta = (now if now is not None else time.time()) - ts
    future = delta < 0
    delta = abs(delta)
    if delta < 1:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "h"), (60, "min"), (1, "s")):
        if delta >= size:
            count = int(delta // size)
            text = f"{count} {unit}" + ("s" if unit == "day" and count != 1 else "")
            return f"in {text}" if future else f"{text} ago"
    return "just now"


_URL_PIECE = re.compile(r"[^/?&=#]+[/?&=#]*|[/?&=#]+")


def url_parts(url: str | None) -> list[str]:
    """A URL cut after each `/ ? & = #`: the template puts a line-break chance (<wbr>) between
    the pieces, and nowhere else, so a token in a URL is never broken in two."""
    return _URL_PIECE.findall(url or "")


def duration(ms: int | None) -> str:
    if ms is None:
        return "–"
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def percent(part: int, whole: int) -> str:
    """`97 %`; `99.9 %` rather than a rounded-up 100 % when anything failed."""
    if not whole:
        return "–"
    value = 100 * part / whole
    if part in (0, whole):
        return f"{round(value)} %"
    if value > 99:
        return f"{math.floor(value * 10) / 10:.1f} %"
    if value < 1:
        return f"{math.ceil(value * 10) / 10:.1f} %"
    return f"{round(value)} %"


def error_page(exc: HTTPException):
    if request.path.startswith("/api/v1/"):
        # An API client reads JSON, also for a path or method the API does not have.
        return routes.http_error(exc)
    if exc.code == 403 and exc.description == "csrf":
        title = "This form has expired"
        text = (
            "The form was sent without a valid security token, so nothing was changed. Reload the page and try again."
        )
    else:
        title = exc.name
        text = exc.description if exc.code != 404 else "There is nothing at this address."
    allow = routes.allowed_methods(exc)
    headers = {"Allow": allow} if allow else {}
    return render_template("error.html", title=title, text=text, code=exc.code), exc.code, headers


def index():
    return redirect(url_for("monitor.index"))


def init_app(app: Flask) -> None:
    auth.init_app(app)
    app.register_blueprint(settings.bp)
    app.register_blueprint(monitor.bp)
    app.register_blueprint(event_log.bp)
    app.register_blueprint(keys_page.bp)
    app.add_url_rule("/", "index", index)
    app.jinja_env.autoescape = True  # .html templates escape already; this also covers any other name
    app.jinja_env.filters.update(utc=utc, iso=iso, ago=ago, duration=duration, url_parts=url_parts)
    app.jinja_env.globals.update(percent=percent, now=time.time)
    for code in (400, 403, 404, 405, 429):
        app.register_error_handler(code, error_page)
