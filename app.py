"""The web process: `create_app()` builds the Flask app; `gunicorn app:app` serves it.

`app` is built on first access rather than at import, so importing this module (tests,
the worker) reads no config and opens no database.
"""

from __future__ import annotations

import sys
from typing import Any

from flask import Flask
from werkzeug.routing import IntegerConverter

from gateway import cli, runstate
from gateway.api import routes
from gateway.config import DEFAULTS, ConfigError, load_config
from gateway.intake import webhook, wsgi
from gateway.media import serve
from gateway.ops import health, metrics
from gateway.pages import admin, auth
from gateway.storage import db, sqlite_open


def secret_key(config) -> str:
    """admin.secret_key, else a key generated once into the data folder and kept there."""
    if config["admin"]["secret_key"]:
        return config["admin"]["secret_key"]
    return runstate.generated_key(config.data_dir / runstate.SESSION_KEY_FILE)


class RowIdConverter(IntegerConverter):
    """`<int:...>` in every route, limited to what a database row id can be: a larger number in
    a URL is a 404, not an overflow in SQLite (a 500)."""

    def __init__(self, url_map, *args, **kwargs) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(url_map, *args, **kwargs)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app. `test_config` may hold config sections (as in config.toml),
    `config_path`, and plain Flask settings such as TESTING."""
    test_config = dict(test_config or {})
    overrides = {key: test_config.pop(key) for key in list(test_config) if key in DEFAULTS}
    config = load_config(test_config.pop("config_path", None), overrides)

    app = Flask(__name__, template_folder="gateway/pages/templates", static_folder="gateway/pages/static")
    app.url_map.converters["int"] = RowIdConverter  # before any route is added
    app.config.update(
        WAHOOK=config,
        SECRET_KEY=secret_key(config),
        # The local key `simulate` signs with (see runstate); the fingerprint of the config
        # file as read now, so the monitor can tell when it was edited since.
        WAHOOK_SIMULATE_KEY=runstate.simulate_key(config.data_dir),
        WAHOOK_CONFIG_LOADED=runstate.fingerprint(config.path),
        MAX_CONTENT_LENGTH=webhook.MAX_BODY_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.config.update(test_config)

    sqlite_open.use_synchronous(config.database, config["storage"]["synchronous"])
    db.init_app(app)
    db.connection(config.database)  # create and migrate now, not on the first request
    app.register_blueprint(webhook.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(routes.bp)
    admin.init_app(app)
    serve.init_app(app)
    cli.init_app(app)
    wsgi.serve_intake_first(app, auth.SECURITY_HEADERS)
    return app


def __getattr__(name: str) -> Flask:
    # PEP 562: `gunicorn app:app` and `flask --app app` look up `app`; build it then.
    if name == "app":
        try:
            built = create_app()
        except ConfigError as exc:
            sys.exit(f"wahook: configuration error: {exc}")
        except db.StorageError as exc:
            sys.exit(f"wahook: {exc}")
        globals()["app"] = built
        return built
    raise AttributeError(name)
