"""intake/wsgi.py: Meta's POST answered ahead of Flask, exactly as Flask's view would answer it."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import VERIFY_TOKEN, sign, text_message
from gateway.intake import meta_parser, webhook
from gateway.pages.auth import SECURITY_HEADERS

URL = webhook.PATH


def test_every_answer_is_plain_text_with_the_security_headers(client):
    body = json.dumps(text_message()).encode()
    answers = {
        200: client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)}),
        401: client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(b"other")}),
        400: client.post(URL, data=b"[1]", headers={"X-Hub-Signature-256": sign(b"[1]")}),
        413: client.post(URL, data=b"x" * (webhook.MAX_BODY_BYTES + 1)),
    }
    for status, answer in answers.items():
        assert answer.status_code == status, answer.text
        assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert int(answer.headers["Content-Length"]) == len(answer.data)
        for name, value in SECURITY_HEADERS:
            assert answer.headers[name] == value
    assert answers[200].text == "ok"
    assert answers[401].text == "signature refused: wrong signature"


def test_other_methods_and_paths_are_flasks(client):
    verify = client.get(
        URL, query_string={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "7"}
    )
    assert (verify.status_code, verify.text) == (200, "7")
    assert client.put(URL, data=b"{}").status_code == 405
    other = client.post(URL + "/", data=b"{}")  # not Meta's path: Flask sends it to the login page
    assert other.status_code == 303 and "/login" in other.headers["Location"]


def test_a_bug_is_a_logged_500_outside_tests_and_raised_in_them(app, client, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("a bug, not the client's doing")

    monkeypatch.setattr(meta_parser, "as_list", broken)  # store() reads the change fields with it
    body = json.dumps(text_message()).encode()
    with pytest.raises(RuntimeError):
        client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)})
    app.testing = False
    app.config["PROPAGATE_EXCEPTIONS"] = None
    with caplog.at_level(logging.ERROR, logger="wahook.intake"):
        answer = client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert (answer.status_code, answer.text) == (500, "internal server error")
    assert "a bug, not the client's doing" in caplog.text
    assert answer.headers["X-Frame-Options"] == "DENY"
