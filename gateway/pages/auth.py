"""Admin login, sessions, CSRF tokens, the login rate limit and security headers.

One admin, one password (`admin.password`). A session is Flask's signed cookie, holding a
mark derived from the password, so changing the password (or `admin.secret_key`) ends
every session at once, and a random token naming the session on the server
(admin_sessions.py), so logging out ends it there: a copy of the cookie stops working too.
Cookies are HttpOnly, SameSite=Lax, and Secure whenever the request came over https.

Proxies: there is deliberately no ProxyFix. gunicorn already takes X-Forwarded-Proto from
a proxy on the same machine (its `forwarded_allow_ips` default, 127.0.0.1 and ::1), which
is what makes `request.is_secure` true behind a local nginx, Caddy or tunnel. For the same
reason the login rate limit reads the client's address from X-Forwarded-For only when the
connection itself comes from loopback; from anywhere else the header could be forged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from datetime import timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    has_request_context,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from werkzeug.exceptions import MethodNotAllowed

from gateway.pages import admin_sessions
from gateway.storage import db
from gateway.storage.db import get_db, transaction

log = logging.getLogger("wahook.auth")

bp = Blueprint("auth", __name__)

LOGIN_WINDOW = 60  # seconds in which LOGIN_MAX_FAILURES failures start a block
LOGIN_MAX_FAILURES = 5
LOGIN_BLOCK = 60  # seconds a block lasts, counted from the failure that started it
# All addresses together: caps guessing even when X-Forwarded-For is forged behind a proxy.
GLOBAL_MAX_FAILURES = 30
SESSION_LIFETIME = timedelta(hours=12)  # sliding: every request renews it

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
# Reachable without a session: Meta, health checks, metrics (their own token), signed media
# links (the link is its own proof), the API (its own keys), the login page and its stylesheet.
PUBLIC_BLUEPRINTS = frozenset({"intake", "health", "metrics", "media", "api"})
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static"})
# An unknown path or method there gets the API's JSON 404 or 405, not the login page.
PUBLIC_PATH_PREFIX = "/api/v1/"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, marked Secure whenever the request came over https.

    Meta's webhooks and health checks never use a session, so they get Flask's null session:
    no cookie is parsed or signed and none is set, which is a sizeable share of an intake
    request's time in Flask.
    """

    def __init__(self) -> None:
        self.public_paths: frozenset[str] | None = None

    def open_session(self, app: Flask, request) -> SessionMixin | None:
        # Flask opens the session before it matches the URL, so the blueprint is not known
        # yet: the public blueprints' fixed paths are looked up once instead.
        if self.public_paths is None:
            self.public_paths = frozenset(
                rule.rule
                for rule in app.url_map.iter_rules()
                if rule.endpoint.partition(".")[0] in PUBLIC_BLUEPRINTS and not rule.arguments
            )
        if request.path in self.public_paths:
            return self.null_session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        if app.config["SESSION_COOKIE_SECURE"]:
            return True
        return has_request_context() and request.is_secure


def admin_password() -> str:
    return current_app.config["WAHOOK"]["admin"]["password"]


def session_mark(password: str) -> str:
    """What a logged-in session holds: tied to the password without revealing it."""
    key = current_app.config["SECRET_KEY"].encode("utf-8")
    return hmac.new(key, b"wahook-admin:" + password.encode("utf-8"), hashlib.sha256).hexdigest()


def logged_in() -> bool:
    """Whether the request carries an open session: the cookie's mark matches the password and
    the server still has its token. Asked once per request (pages ask it again to draw the menu)."""
    # Kept in the request's environ, not in g: an app context can outlive a request (tests, CLI).
    known = request.environ.get("wahook.logged_in")
    if known is None:
        known = request.environ["wahook.logged_in"] = _session_is_open()
    return known


def _session_is_open() -> bool:
    password = admin_password()
    mark, token = session.get("auth"), session.get("sid")
    if not password or not isinstance(mark, str) or not isinstance(token, str):
        return False
    expected = session_mark(password)
    if not hmac.compare_digest(mark, expected):
        return False
    try:
        return admin_sessions.is_open(get_db(), token, expected, SESSION_LIFETIME.total_seconds())
    except db.Error as exc:
        log.error("sessions could not be read: %s", exc)
        return False


def password_matches(given: str, expected: str) -> bool:
    """Constant time, whatever the lengths: both sides are hashed to 32 bytes first."""
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode("utf-8")).digest(), digest(expected.encode("utf-8")).digest())


def csrf_token() -> str:
    """This session's CSRF token, made on first use; every POST form carries it."""
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def client_address() -> str:
    """The address the rate limit counts: the peer, or the proxy's last X-Forwarded-For hop."""
    peer = request.remote_addr or "unknown"
    forwarded = request.headers.get("X-Forwarded-For", "")
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    if loopback and forwarded:
        hop = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:
            pass
    return peer


def blocked_until(conn, address: str, now: float) -> float | None:
    """When the block on `address` ends, or None if it may try now."""
    times = [
        row[0]
        for row in conn.execute(
            "SELECT at FROM login_failures WHERE remote_addr = ? AND at > ? ORDER BY at",
            (address, now - LOGIN_WINDOW - LOGIN_BLOCK),
        )
    ]
    until = None
    for last in range(LOGIN_MAX_FAILURES - 1, len(times)):
        first = times[last - LOGIN_MAX_FAILURES + 1]
        if times[last] - first <= LOGIN_WINDOW and times[last] + LOGIN_BLOCK > now:
            until = max(until or 0.0, times[last] + LOGIN_BLOCK)
    # Rows are inserted in time order, so the newest few by id tell the global rate cheaply.
    latest = conn.execute(
        "SELECT min(at), count(*) FROM (SELECT at FROM login_failures ORDER BY id DESC LIMIT ?)",
        (GLOBAL_MAX_FAILURES,),
    ).fetchone()
    if latest[1] >= GLOBAL_MAX_FAILURES and latest[0] > now - LOGIN_WINDOW:
        until = max(until or 0.0, latest[0] + LOGIN_WINDOW)
    return until


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (another host, //x, \\x) goes to the monitor."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("monitor.index")


def login_page(message: str = "", status: int = 200, **extra) -> tuple[str, int]:
    return (
        render_template(
            "login.html",
            message=message,
            no_password=not admin_password(),
            next=request.values.get("next", ""),
            **extra,
        ),
        status,
    )


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if logged_in():
            return redirect(safe_next(request.args.get("next")))
        return login_page()
    password = admin_password()
    if not password:
        return login_page("Login is impossible until an admin password is set.", 403)
    address = client_address()
    now = time.time()
    conn = get_db()
    # One transaction for check and count, so two web workers cannot both let a 6th try through.
    with transaction(conn):
        until = blocked_until(conn, address, now)
        if until is not None:
            ok = None
        else:
            ok = password_matches(request.form.get("password", ""), password)
            if ok:
                conn.execute("DELETE FROM login_failures WHERE remote_addr = ?", (address,))
            else:
                conn.execute("INSERT INTO login_failures (remote_addr, at) VALUES (?, ?)", (address, now))
    if ok is None:
        wait = max(1, int(until - now + 0.999))
        body, status = login_page(f"Too many failed logins. Wait {wait} seconds, then try again.", 429)
        return Response(body, status, headers={"Retry-After": str(wait)})
    if not ok:
        return login_page("Wrong password.", 401)
    # A fresh session: nothing from before the login (a planted CSRF token, say) survives.
    session.clear()
    session.permanent = True
    session["auth"] = mark = session_mark(password)
    session["sid"] = admin_sessions.start(conn, mark, SESSION_LIFETIME.total_seconds())
    csrf_token()
    return redirect(safe_next(request.form.get("next")), 303)


@bp.post("/logout")
def logout():
    token = session.get("sid")
    if isinstance(token, str):
        admin_sessions.end(get_db(), token)
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"), 303)


def public_route() -> bool:
    """Whether the request is for a route anyone may reach, also when its method is not one the
    route takes (a PUT to the intake gets its 405 and Allow header, not the login page)."""
    endpoint = request.endpoint
    if endpoint is None and isinstance(request.routing_exception, MethodNotAllowed):
        allowed = sorted(request.routing_exception.valid_methods or [])
        if allowed:
            adapter = current_app.url_map.bind_to_environ(request.environ)
            endpoint, _ = adapter.match(method=allowed[0])
    return endpoint is not None and (endpoint in PUBLIC_ENDPOINTS or endpoint.partition(".")[0] in PUBLIC_BLUEPRINTS)


def require_login():
    """Send every request for an admin page to the login page when there is no session."""
    if public_route():
        return None
    if request.path.startswith(PUBLIC_PATH_PREFIX) or logged_in():
        return None
    if request.method == "GET":
        query = request.query_string.decode("latin-1")
        return redirect(url_for("auth.login", next=request.path + ("?" + query if query else "")))
    return redirect(url_for("auth.login"), 303)


def check_csrf() -> None:
    """Refuse (403) any state-changing request without this session's token; Meta's POST is exempt."""
    if (
        request.method not in UNSAFE_METHODS
        or request.blueprint in PUBLIC_BLUEPRINTS
        or request.path.startswith(PUBLIC_PATH_PREFIX)
    ):
        return
    if isinstance(request.routing_exception, MethodNotAllowed):
        return  # no view runs: the answer is a 405
    expected = session.get("csrf")
    given = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        abort(403, "csrf")


SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("X-Content-Type-Options", "nosniff"),
)
SECURITY_HEADER_KEYS = frozenset(name.lower() for name, _ in SECURITY_HEADERS)


def security_headers(response: Response) -> Response:
    headers = response.headers
    # One pass over the headers, not one per setdefault: this runs on every Meta POST.
    if SECURITY_HEADER_KEYS.isdisjoint(name.lower() for name, _ in headers):
        headers.extend(SECURITY_HEADERS)
    else:
        for name, value in SECURITY_HEADERS:
            headers.setdefault(name, value)
    if has_request_context() and request.blueprint not in PUBLIC_BLUEPRINTS and request.endpoint != "static":
        # Pages show secrets once and customers' messages: keep them out of every cache.
        headers.setdefault("Cache-Control", "no-store")
    return response


def init_app(app: Flask) -> None:
    app.session_interface = SessionInterface()
    app.config["PERMANENT_SESSION_LIFETIME"] = SESSION_LIFETIME
    app.config["SESSION_COOKIE_NAME"] = "wahook_session"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.register_blueprint(bp)
    app.before_request(require_login)
    app.before_request(check_csrf)
    app.after_request(security_headers)
    app.jinja_env.globals.update(csrf_token=csrf_token, logged_in=logged_in)
