"""Logging set up once per process, for the web (gunicorn.conf.py) and workers (worker.py).

`WAHOOK_LOG_FORMAT=json` writes one JSON object per line: `time`, `level`, `logger`,
`message`, and the ids a line is about (`webhook_id`, `event_id`, `delivery_id`,
`endpoint_id`) as fields, passed with `extra=`. Otherwise lines are plain text.
`WAHOOK_LOG_LEVEL` sets the level (default info).

What may go into a line: ids, counts, states, status codes. Never a secret, a token, an
endpoint URL (it can carry a token) or a body: those stay in the database. Request lines
(WAHOOK_ACCESS_LOG=1, and gunicorn at debug level) carry tokens in URLs, so every line gunicorn
or the app writes is passed through `mask`: media links (`/media/<token>`, 7-day bearer links to
customers' files), Meta's `hub.verify_token` and any `…token=` query parameter become `[masked]`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger

ID_FIELDS = ("webhook_id", "event_id", "delivery_id", "endpoint_id", "status_code", "attempts", "worker")

MASKED = "[masked]"
_MEDIA_LINK = re.compile(r"(/media/)[^\s?#\"'/]+")
# hub.verify_token, token, access_token...: the name ends in "token", its value up to the next
# parameter, fragment, space or quote (a request line sits in quotes in the access log).
_TOKEN_PARAMETER = re.compile(r"([?&;][\w.\-]*token=)[^&;#\s\"']*", re.IGNORECASE)


def mask(text: str) -> str:
    """`text` with media link tokens and `…token=` query values replaced by [masked]."""
    if "token" not in text.lower() and "/media/" not in text:
        return text  # most lines: nothing to look for
    return _TOKEN_PARAMETER.sub(rf"\1{MASKED}", _MEDIA_LINK.sub(rf"\1{MASKED}", text))


class Masking(logging.Filter):
    """For handlers: the record's message, formatted, with `mask` applied."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


MASKING = Masking()


def mask_handlers(*loggers: logging.Logger) -> None:
    """Put MASKING on every handler of these loggers (once each)."""
    for logger in loggers:
        for handler in logger.handlers:
            if MASKING not in handler.filters:
                handler.addFilter(MASKING)


class MaskingGunicornLogger(GunicornLogger):
    """gunicorn's logger (`logger_class` in gunicorn.conf.py) whose access and error lines, and
    the app's through the root logger, are masked; set up again on every reload."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        mask_handlers(self.error_log, self.access_log, logging.getLogger())


def json_wanted() -> bool:
    return os.environ.get("WAHOOK_LOG_FORMAT", "").strip().lower() == "json"


def level() -> str:
    return (os.environ.get("WAHOOK_LOG_LEVEL") or "info").upper()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a traceback are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in ID_FIELDS:
            if getattr(record, key, None) is not None:
                line[key] = getattr(record, key)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def text_formatter(process: str) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s {process} %(levelname)s %(message)s")


def configure(process: str) -> None:
    """Send this process's records to stderr in the chosen format; safe to call again."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_wanted() else text_formatter(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    mask_handlers(root)
    root.setLevel(level())
    if json_wanted():
        # Python warnings and uncaught errors in threads would otherwise print plain text.
        logging.captureWarnings(True)
        threading.excepthook = _log_thread_crash


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("wahook").critical(
        "thread %s crashed",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def gunicorn_logconfig() -> dict:
    """gunicorn's `logconfig_dict`: with JSON, gunicorn's own lines, the access log and the
    app's (root) records all go through JsonFormatter; empty (gunicorn's defaults) otherwise."""
    if not json_wanted():
        return {}
    return {
        "root": {"level": level(), "handlers": ["error_console"]},
        "loggers": {
            "gunicorn.error": {"level": level(), "handlers": ["error_console"], "propagate": False},
            # gunicorn logs requests whenever logconfig_dict is set; keep its choice (off
            # unless WAHOOK_ACCESS_LOG) by dropping them here.
            "gunicorn.access": {
                "level": "INFO" if os.environ.get("WAHOOK_ACCESS_LOG") in ("1", "true", "yes") else "CRITICAL",
                "handlers": ["console"],
                "propagate": False,
            },
        },
        "formatters": {"generic": {"()": JsonFormatter}},
    }
