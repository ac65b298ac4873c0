"""API keys: made by the CLI and the settings page, shown once, stored as hashes, scoped,
revoked, and their last use recorded."""

from __future__ import annotations

import hashlib
import re

import pytest

from conftest import cli_json, login, post_form
from gateway.api import api_keys

pytestmark = pytest.mark.engines


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def key_row(page: str, key_id: int) -> str:
    return re.search(rf'<tr id="api-key-{key_id}">.*?</tr>', page, re.S).group(0)


def test_cli_add_shows_the_key_once_and_stores_only_its_hash(runner, conn):
    code, made = cli_json(runner, "apikey", "add", "campaign tool", "--scopes", "publish")
    assert code == 0
    assert made["name"] == "campaign tool" and made["scopes"] == ["publish"]
    key = made["key"]
    assert re.fullmatch(r"wak_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert made["prefix"] in key and made["last_used_at"] is None

    code, listed = cli_json(runner, "apikey", "list")
    assert code == 0 and len(listed) == 1
    assert key not in str(listed) and "key" not in listed[0]

    stored = conn.execute("SELECT * FROM api_keys").fetchone()
    assert key not in " ".join(str(value) for value in tuple(stored))
    assert stored["key_hash"] == hashlib.sha256(key.encode()).hexdigest()


def test_cli_default_scopes_are_publish_and_read(runner):
    code, made = cli_json(runner, "apikey", "add", "ui")
    assert code == 0 and made["scopes"] == ["publish", "read"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["x", "--scopes", "admin"], "scopes"),
        (["x", "--scopes", "publish,write"], "scopes"),
        (["x", "--scopes", ","], "scopes"),
        (["   "], "name"),
        (["a" * 101], "name"),
        (["bell\x07"], "name"),
    ],
)
def test_cli_refuses_unknown_scopes_and_bad_names(runner, conn, args, field):
    code, printed = cli_json(runner, "apikey", "add", *args)
    assert code == 1 and printed["field"] == field and printed["error"]
    assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0


def test_revoked_key_is_refused_and_listed_as_revoked(runner, client, make_key):
    key = make_key("read")
    assert client.get("/api/v1/events", headers=auth(key)).status_code == 200
    code, listed = cli_json(runner, "apikey", "list")
    code, printed = cli_json(runner, "apikey", "revoke", str(listed[0]["id"]))
    assert code == 0 and printed == {"revoked": listed[0]["id"]}
    refused = client.get("/api/v1/events", headers=auth(key))
    assert refused.status_code == 401 and "revoked" in refused.json["error"]
    assert cli_json(runner, "apikey", "list")[1][0]["revoked"] is True
    # Twice is harmless; a key that never existed is an error.
    assert cli_json(runner, "apikey", "revoke", str(listed[0]["id"]))[0] == 0
    assert cli_json(runner, "apikey", "revoke", "999") == (1, {"error": "no API key 999"})


def test_scopes_are_enforced(client, make_key):
    reader, publisher = make_key("read"), make_key("publish")
    body = {"event": "campaign.started", "data": {}}
    assert client.post("/api/v1/events", json=body, headers=auth(reader)).status_code == 403
    assert client.get("/api/v1/events", headers=auth(publisher)).status_code == 403
    assert client.get("/api/v1/stream", headers=auth(publisher)).status_code == 403
    assert client.post("/api/v1/events", json=body, headers=auth(publisher)).status_code == 202


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer wak_000000000000_" + "A" * 43,
        "Bearer not-a-key",
        "Bearer " + "x" * 5000,
    ],
)
def test_missing_malformed_and_unknown_keys_get_401_json(client, make_key, header):
    make_key()
    headers = {} if header is None else {"Authorization": header}
    response = client.get("/api/v1/events", headers=headers)
    assert response.status_code == 401 and response.is_json and response.json["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_key_with_a_real_prefix_but_a_wrong_secret_is_refused(client, make_key):
    key = make_key()
    forged = key[:17] + ("A" if key[17] != "A" else "B") + key[18:]
    assert client.get("/api/v1/events", headers=auth(forged)).status_code == 401


def test_every_use_records_last_used(client, make_key, conn, monkeypatch):
    key = make_key()
    assert conn.execute("SELECT last_used_at FROM api_keys").fetchone()[0] is None
    client.post("/api/v1/events", json={"event": "campaign.started"}, headers=auth(key))
    first = conn.execute("SELECT last_used_at FROM api_keys").fetchone()[0]
    assert first is not None
    # Reads record at LAST_USED_RESOLUTION; with none, every read moves it on.
    monkeypatch.setattr(api_keys, "LAST_USED_RESOLUTION", 0.0)
    client.get("/api/v1/events", headers=auth(key))
    assert conn.execute("SELECT last_used_at FROM api_keys").fetchone()[0] > first


def test_settings_page_makes_lists_and_revokes_keys(client, conn):
    login(client)
    made = post_form(client, "/settings/apikeys", {"name": "CRM <ui>", "scopes": ["read"]})
    assert made.status_code == 200
    key = re.search(r'value="(wak_[^"]+)"', made.text).group(1)
    assert "CRM &lt;ui&gt;" in made.text and "<ui>" not in made.text
    # Shown once: the settings page lists the key by its prefix only.
    page = client.get("/settings").text
    assert key not in page and key[:16] in page and "CRM &lt;ui&gt;" in page
    row = conn.execute("SELECT id FROM api_keys").fetchone()
    assert "never" in key_row(page, row["id"])
    assert client.get("/api/v1/events", headers=auth(key)).status_code == 200
    assert "never" not in key_row(client.get("/settings").text, row["id"]), "the last use is shown"

    revoked = post_form(client, f"/settings/apikeys/{row['id']}/revoke", follow_redirects=True)
    assert "revoked" in revoked.text
    assert client.get("/api/v1/events", headers=auth(key)).status_code == 401
    assert post_form(client, "/settings/apikeys/999/revoke").status_code == 404


def test_settings_page_refuses_a_key_without_scope_or_name(client, conn):
    login(client)
    refused = post_form(client, "/settings/apikeys", {"name": "x"}, follow_redirects=True)
    assert "at least one scope" in refused.text
    refused = post_form(client, "/settings/apikeys", {"name": "", "scopes": ["read"]}, follow_redirects=True)
    assert "name is required" in refused.text
    assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0


def test_key_forms_need_a_login_and_a_csrf_token(client, conn):
    assert client.post("/settings/apikeys", data={"name": "x", "scopes": ["read"]}).status_code == 303
    login(client)
    assert client.post("/settings/apikeys", data={"name": "x", "scopes": ["read"]}).status_code == 403
    assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0
