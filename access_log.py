"""gunicorn's access log without credentials: `?token=` (a stream token) is masked.

A browser can only pass a stream token in the URL, so the request line would carry it into
every access log line, and from there into log shippers and tickets. gunicorn.conf.py makes
this class gunicorn's logger; it masks the token in the request line, query string and
referrer, and leaves out the Authorization and Cookie headers should a custom
access_log_format name them.
"""

from __future__ import annotations

import re

from gunicorn.glogging import Logger

TOKEN_RE = re.compile(r"(?i)((?:^|[?&;])(?:token|api_key|access_token)=)[^&;#\s]*")
MASK = "***"
SECRET_HEADERS = ("{authorization}i", "{cookie}i", "{x-hub-signature-256}i")


def mask(text: str | None) -> str | None:
    """`text` with the value of every token-like query parameter replaced by ***."""
    if not text:
        return text
    return TOKEN_RE.sub(lambda m: m.group(1) + MASK, text)


class MaskingLogger(Logger):
    """gunicorn's Logger, with credentials taken out of the access log's atoms."""

    def atoms(self, resp, req, environ, request_time) -> dict:
        found = super().atoms(resp, req, environ, request_time)
        for name in ("r", "q", "f"):
            found[name] = mask(found.get(name))
        for name in SECRET_HEADERS:
            if name in found:
                found[name] = MASK
        return found
