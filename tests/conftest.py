"""Shared fixtures, in the manner of Flask's tutorial: `app`, `client` and `runner` over a
temporary database per test, plus a real Redis server and real HTTP receivers."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import db  # noqa: E402
import embedded_redis  # noqa: E402
import jobs  # noqa: E402
from app import create_app  # noqa: E402
from receiver import Receiver  # noqa: E402

APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
ADMIN_PASSWORD = "test-admin-password"


def sign(raw: bytes, secret: str = APP_SECRET) -> str:
    """The X-Hub-Signature-256 value Meta would send for `raw`."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def instance_sections(tmp_path: Path, redis_url: str) -> dict:
    """Config sections for a test instance: its own database, the test Redis, local receivers allowed."""
    return {
        "meta": {"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN},
        "storage": {"database": str(tmp_path / "data" / "wahook.db")},
        "redis": {"url": redis_url},
        "delivery": {"allow_http": True, "allow_private_urls": True, "timeout": 2, "retry_schedule": [1, 1]},
        "admin": {"password": ADMIN_PASSWORD, "secret_key": "test-secret-key"},
    }


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real redis-server (the embedded binary) for the whole run."""
    data = tmp_path_factory.mktemp("redis")
    url = embedded_redis.ensure_running(data)
    yield url
    embedded_redis.stop(data)


@pytest.fixture
def app(tmp_path, redis_url):
    sections = instance_sections(tmp_path, redis_url)
    application = create_app({"TESTING": True, "config_path": str(tmp_path / "config.toml"), **sections})
    jobs.redis_connection(application.config["WAHOOK"]).flushall()
    yield application
    db.close_all()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def conn(app):
    """The test database, for assertions about what was stored."""
    return db.connection(app.config["WAHOOK"].database_path)


@pytest.fixture
def post_webhook(client):
    """POST a body to the intake signed as Meta would; returns the response."""

    def post(body, secret: str = APP_SECRET, headers: dict | None = None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, secret)}
        all_headers.update(headers or {})
        return client.post("/api/webhooks/whatsapp", data=raw, headers=all_headers)

    return post


@pytest.fixture
def receiver():
    started = Receiver()
    yield started
    started.close()


@pytest.fixture
def make_receiver():
    started: list[Receiver] = []

    def make() -> Receiver:
        started.append(Receiver())
        return started[-1]

    yield make
    for r in started:
        r.close()
