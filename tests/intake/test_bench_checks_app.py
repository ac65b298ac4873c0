"""bench/checks_app.py, the benchmark's intake without the database: it must refuse what the
intake refuses and draw what the intake draws, or its row in `make bench` says nothing."""

from __future__ import annotations

import importlib.util
import io
import json

import pytest

from conftest import APP_SECRET, ROOT, sign, status_update
from gateway.intake import webhook


@pytest.fixture
def checks_app(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text(f'[meta]\napp_secret = "{APP_SECRET}"\n[storage]\ndatabase = "wahook.db"\n')
    monkeypatch.setenv("WAHOOK_CONFIG", str(config))
    # Loading it replaces webhook.store for its own process; here it is put back after the test.
    monkeypatch.setattr(webhook, "store", webhook.store)
    spec = importlib.util.spec_from_file_location("bench_checks_app", ROOT / "bench" / "checks_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(app, method: str, raw: bytes = b"", signature: str | None = None) -> str:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": "/api/webhooks/whatsapp",
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "127.0.0.1",
    }
    if signature is not None:
        environ["HTTP_X_HUB_SIGNATURE_256"] = signature
    answered = []
    app.app(environ, lambda status, headers: answered.append(status))
    return answered[0]


def test_a_signed_status_webhook_is_answered_200_and_nothing_is_stored(checks_app, tmp_path):
    raw = json.dumps(status_update("wamid.CHECKS.ONLY")).encode()
    assert call(checks_app, "POST", raw, sign(raw)) == "200 OK"
    assert not (tmp_path / "wahook.db").exists()


def test_a_wrong_signature_is_refused_as_the_intake_refuses_it(checks_app):
    raw = json.dumps(status_update("wamid.CHECKS.WRONG")).encode()
    assert call(checks_app, "POST", raw, sign(raw, "not-the-secret")) == "401 UNAUTHORIZED"
    assert call(checks_app, "POST", raw) == "401 UNAUTHORIZED"


def test_a_get_of_the_intake_path_is_400_as_the_bench_waits_for(checks_app):
    assert call(checks_app, "GET") == "400 BAD REQUEST"
