"""Which web pages may use the API from a browser (SPEC 7): CORS for `routes.allowed_origins`.

A page whose origin is listed gets `Access-Control-Allow-Origin` on every API answer and its
preflights answered, so its fetch, EventSource and WebSocket work. Cookies are never
involved (the API takes keys and stream tokens only), so credentials are never allowed.

A browser request carries an `Origin` header it cannot forge. A WebSocket or a `?token=`
request from an origin that is neither listed nor wahook's own is refused with 403: a
WebSocket is not covered by CORS at all, so without this check any site a user visits could
open one with a token it got hold of (cross-site WebSocket hijacking). Requests without an
`Origin` come from programs, not pages, and are left to their key as before.
"""

from __future__ import annotations

from flask import Request, Response

PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight's answer
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"


def is_same_origin(request: Request, origin: str) -> bool:
    """Whether `origin` is the address the request was sent to (wahook's own pages)."""
    return origin.split("://", 1)[-1] == request.host


def origin_allowed(request: Request, allowed: list[str]) -> bool:
    """Whether the request may go on: it has no Origin, or a listed or same origin."""
    origin = request.headers.get("Origin")
    return origin is None or origin in allowed or is_same_origin(request, origin)


def is_preflight(request: Request) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def preflight(request: Request, allowed: list[str]) -> Response:
    """The answer to a preflight: 204 with the CORS headers for a listed origin, else 403."""
    origin = request.headers.get("Origin", "")
    if origin not in allowed:
        return Response(
            '{"error": "this origin is not in api.allowed_origins"}', status=403, mimetype="application/json"
        )
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    return add_headers(request, response, allowed)


def add_headers(request: Request, response: Response, allowed: list[str]) -> Response:
    """Let a listed origin read this answer; say that it varies with Origin either way (caches)."""
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if origin is not None and origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
    return response
