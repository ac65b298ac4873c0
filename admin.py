"""Admin pages (login, settings, monitor, event log). Filled in by the admin pages work."""

from flask import Flask


def init_app(app: Flask) -> None:
    pass
