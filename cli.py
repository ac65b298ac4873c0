"""Command line: `flask --app app endpoint|deliveries|simulate ...`, each printing JSON."""

from flask import Flask


def init_app(app: Flask) -> None:
    pass
