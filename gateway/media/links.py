"""Signed media links: `<public URL>/media/<token>`, handed to receivers in an event's `media.url`.

The token is `<payload>.<signature>`, both base64url: the payload is `<media id>:<expiry>` (unix
seconds), the signature an HMAC-SHA256 of the payload with a key of this installation, generated
once into the data folder (like the session key). The expiry is inside the signed part, so a
receiver cannot stretch a link; the check is in constant time. A link is made from the media id
and the receipt time alone, so it is written into the event at intake, before the file is
downloaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import time

from flask import has_request_context, request
from werkzeug.wsgi import get_current_url

from gateway import runstate

# Meta's media ids are digits; letters, '_' and '-' are allowed for safety's sake, nothing that
# could walk a path or a URL ('/', '.', '%', NUL).
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{4,400}\.[A-Za-z0-9_-]{43}")
KEY_FILE = "media_key"

log = logging.getLogger("wahook.media")


class LinkRefused(Exception):
    """A token that is malformed, tampered with or expired; the message says which."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_keys: dict[str, bytes] = {}


def installation_key(config) -> bytes:
    """This installation's link key, made on first use and kept in the data folder."""
    where = str(config.data_dir)
    if where not in _keys:
        _keys[where] = runstate.generated_key(config.data_dir / KEY_FILE).encode("ascii")
    return _keys[where]


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def make_token(key: bytes, media_id: str, expires: int) -> str:
    """The token for `media_id`, valid until `expires` (unix seconds)."""
    if not SAFE_ID.fullmatch(media_id):
        raise ValueError("not a media id")
    payload = _b64(f"{media_id}:{int(expires)}".encode("ascii"))
    return f"{payload}.{_sign(key, payload)}"


def check_token(key: bytes, token: str, now: float | None = None) -> str:
    """The media id a token names; LinkRefused when it is malformed, forged or expired."""
    if not TOKEN.fullmatch(token):
        raise LinkRefused("malformed link")
    payload, signature = token.split(".")
    if not hmac.compare_digest(_sign(key, payload), signature):
        raise LinkRefused("the link's signature does not match")
    try:
        media_id, _, expires = _unb64(payload).decode("ascii").partition(":")
        deadline = int(expires)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise LinkRefused("malformed link") from None
    if not SAFE_ID.fullmatch(media_id):
        raise LinkRefused("malformed link")
    if (time.time() if now is None else now) > deadline:
        raise LinkRefused("the link has expired; ask for the event again or raise media.link_days")
    return media_id


def public_base(environ: dict | None = None) -> str:
    """Where receivers reach this server: WAHOOK_PUBLIC_URL, else the address the request came
    to (`environ`'s, or the current Flask request's; as the settings page's callback URL), else
    the bind address (WAHOOK_BIND)."""
    base = (os.environ.get("WAHOOK_PUBLIC_URL") or "").strip()
    if not base and environ is not None:
        base = get_current_url(environ, root_only=True)
    if not base and has_request_context():
        base = request.url_root
    if not base:
        base = "http://" + (os.environ.get("WAHOOK_BIND") or "127.0.0.1:8000")
    return base.rstrip("/")


def link(config, media_id: str, received_at: float, base: str | None = None) -> str | None:
    """The signed URL of `media_id`, valid `media.link_days` from `received_at`; None without an
    access token (nothing is downloaded then) or for an id that is not a plain media id."""
    if not config["meta"]["access_token"] or not isinstance(media_id, str) or not SAFE_ID.fullmatch(media_id):
        return None
    expires = int(received_at) + config["media"]["link_days"] * 86400
    return f"{base or public_base()}/media/{make_token(installation_key(config), media_id, expires)}"


def attach(drawn: list, config, received_at: float, environ: dict | None = None) -> None:
    """Set `media.url` on every drawn event that carries media (None without an access token).
    `environ`: the WSGI environ of the request the events came in (see public_base)."""
    base = None
    for event in drawn:
        media = event.body.get("media")
        if isinstance(media, dict):
            base = base or public_base(environ)
            try:
                media["url"] = link(config, media.get("id"), received_at, base)
            except OSError as exc:  # the key file cannot be read: the event goes out without a link
                log.error("no media link for %s: %s", media.get("id"), exc)
                media["url"] = None
