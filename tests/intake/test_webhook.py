"""The Meta intake over HTTP: verification, signatures, every line of the bad-input table,
durability before the 200, duplicates, and concurrent duplicates against real gunicorn."""

from __future__ import annotations

import json
import stat
import threading
import time

import pytest
import requests

from app import create_app
from conftest import APP_SECRET, VERIFY_TOKEN, sign, text_message
from gateway import runstate
from gateway.storage import db

pytestmark = pytest.mark.engines

URL = "/api/webhooks/whatsapp"


def counts(conn) -> tuple[int, int, int]:
    tables = ("webhooks", "events", "deliveries")
    return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)  # noqa: S608


def rejected(conn) -> int:
    return conn.execute("SELECT coalesce(sum(count), 0) FROM rejections").fetchone()[0]


# --- verification GET ---------------------------------------------------------------


def test_verification_echoes_challenge(client):
    response = client.get(
        URL, query_string={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    )
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.get_data() == b"1158201444"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "c"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "c"},
        {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "c"},
    ],
)
def test_verification_refused(client, params):
    response = client.get(URL, query_string=params)
    assert response.status_code == 403
    assert response.get_data() != b"c"


@pytest.mark.parametrize("missing", ["hub.mode", "hub.verify_token", "hub.challenge"])
def test_verification_missing_parameter(client, missing):
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "c"}
    del params[missing]
    assert client.get(URL, query_string=params).status_code == 400


def test_empty_verify_token_refuses_everything(tmp_path, redis_url):
    app = create_app(
        {
            "config_path": str(tmp_path / "none.toml"),
            "storage": {"database": str(tmp_path / "w.db")},
            "redis": {"url": redis_url},
        }
    )
    response = app.test_client().get(
        URL, query_string={"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "c"}
    )
    assert response.status_code == 403


# --- signatures -----------------------------------------------------------------------


def test_signed_post_is_stored_with_its_event(post_webhook, conn):
    # The customer's first message: contact.created, then message.received (tests/intake/test_contacts.py).
    response = post_webhook(text_message())
    assert response.status_code == 200
    webhooks, events, _ = counts(conn)
    assert (webhooks, events) == (1, 2)
    contact, body = (json.loads(r[0]) for r in conn.execute("SELECT body FROM events ORDER BY id"))
    assert (contact["event"], contact["wa_id"], contact["name"]) == ("contact.created", "16505551234", "Sheena Nelson")
    assert body["event"] == "message.received"
    assert body["from"] == "16505551234"


@pytest.mark.parametrize(
    "header",
    [None, "", "sha256=", "sha1=abc", "sha256=zz" + "0" * 62, "sha256=" + "0" * 64, sign(b"other body")],
    ids=["missing", "empty", "bare", "sha1", "not-hex", "wrong", "other-body"],
)
def test_bad_signature_is_refused_and_counted(client, conn, header):
    raw = json.dumps(text_message()).encode()
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["X-Hub-Signature-256"] = header
    response = client.post(URL, data=raw, headers=headers)
    assert response.status_code == 401
    assert counts(conn) == (0, 0, 0)
    assert rejected(conn) == 1


def test_body_changed_after_signing_is_refused(client, conn):
    raw = json.dumps(text_message(text="pay 10")).encode()
    signature = sign(raw)
    tampered = raw.replace(b"pay 10", b"pay 99")
    response = client.post(URL, data=tampered, headers={"X-Hub-Signature-256": signature})
    assert response.status_code == 401
    assert counts(conn) == (0, 0, 0)


def test_signature_from_another_secret_is_refused(post_webhook, conn):
    assert post_webhook(text_message(), secret="not-the-app-secret").status_code == 401
    assert counts(conn) == (0, 0, 0)


def test_empty_app_secret_refuses_every_post(tmp_path, redis_url):
    app = create_app(
        {
            "config_path": str(tmp_path / "none.toml"),
            "storage": {"database": str(tmp_path / "w.db")},
            "redis": {"url": redis_url},
        }
    )
    raw = json.dumps(text_message()).encode()
    # Even a body "signed" with the empty key must not pass.
    response = app.test_client().post(URL, data=raw, headers={"X-Hub-Signature-256": sign(raw, "")})
    assert response.status_code == 401


def local_key_app(tmp_path, redis_url, app_secret: str = ""):
    """An install as `make run` leaves it: its own data folder, App secret as given."""
    return create_app(
        {
            "config_path": str(tmp_path / "none.toml"),
            "meta": {"app_secret": app_secret},
            "storage": {"database": str(tmp_path / "data" / "w.db")},
            "redis": {"url": redis_url},
        }
    )


def test_a_fresh_install_accepts_a_body_signed_with_its_local_simulate_key(tmp_path, redis_url):
    app = local_key_app(tmp_path, redis_url)
    key_file = tmp_path / "data" / "simulate_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 40
    raw = json.dumps(text_message("wamid.LOCAL")).encode()
    client = app.test_client()
    assert client.post(URL, data=raw, headers={"X-Hub-Signature-256": sign(raw, key)}).status_code == 200
    # Anything else is still refused, and says why: Meta's own POSTs wait for the App secret.
    for header in (sign(raw, "what-meta-would-use"), sign(raw, ""), "", "sha256=zz"):
        response = client.post(URL, data=raw, headers={"X-Hub-Signature-256": header})
        assert response.status_code == 401
        assert response.get_data(as_text=True) == "signature refused: no app_secret configured"
    with app.app_context():
        conn = db.connection(app.config["WAHOOK"].database)
        assert conn.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 1
        assert conn.execute("SELECT sum(count) FROM rejections").fetchone()[0] == 4
    # The key is kept: a second process of the same install signs and checks with the same one.
    assert local_key_app(tmp_path, redis_url).config["WAHOOK_SIMULATE_KEY"] == key


def test_the_local_key_keeps_working_once_the_app_secret_is_set(tmp_path, redis_url):
    local_key_app(tmp_path, redis_url)
    key = (tmp_path / "data" / "simulate_key").read_text().strip()
    client = local_key_app(tmp_path, redis_url, app_secret=APP_SECRET).test_client()
    for n, secret in enumerate((key, APP_SECRET)):
        raw = json.dumps(text_message(f"wamid.BOTH{n}")).encode()
        assert client.post(URL, data=raw, headers={"X-Hub-Signature-256": sign(raw, secret)}).status_code == 200
    raw = json.dumps(text_message("wamid.FORGED")).encode()
    response = client.post(URL, data=raw, headers={"X-Hub-Signature-256": sign(raw, key[:-1])})
    assert response.status_code == 401
    assert response.get_data(as_text=True) == "signature refused: wrong signature"


# --- malformed and oversized bodies -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"\xff\xfe{}", b"[1, 2]", b'"text"', b"null", b"", b"[" * 100000 + b"]" * 100000],
    ids=["not-json", "not-utf8", "array", "string", "null", "empty", "deeply-nested"],
)
def test_signed_body_that_is_not_a_json_object_is_400(post_webhook, conn, raw):
    response = post_webhook(raw)
    assert response.status_code == 400
    assert counts(conn) == (0, 0, 0)


def test_body_over_4_mib_is_413(post_webhook, conn):
    body = text_message()
    body["padding"] = "x" * (4 * 1024 * 1024)
    response = post_webhook(body)
    assert response.status_code == 413
    assert counts(conn) == (0, 0, 0)


def test_body_just_under_4_mib_is_accepted(post_webhook, conn):
    body = text_message()
    raw = json.dumps(body).encode()
    body["padding"] = "x" * (4 * 1024 * 1024 - len(raw) - 20)
    assert post_webhook(body).status_code == 200
    assert counts(conn)[0] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"object": "whatsapp_business_account"},
        {"object": "whatsapp_business_account", "entry": "nope"},
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": {"field": "messages"}}]},
        {
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"field": "messages", "value": {"messages": [{"type": "text"}]}}]}],
        },
        {"object": "whatsapp_business_account", "entry": [None, 3, "x", {"changes": [None, {"value": 5}]}]},
        # Scalars where Meta puts lists once made a 500 while the field list was built.
        {"object": "whatsapp_business_account", "entry": 7},
        {"object": "whatsapp_business_account", "entry": True},
        {"object": "whatsapp_business_account", "entry": 2.5},
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": 3}]},
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": False}]},
        {"entry": None, "changes": 1},
    ],
    ids=[
        "no-entry",
        "entry-not-list",
        "changes-not-list",
        "message-without-id",
        "junk-entries",
        "entry-int",
        "entry-true",
        "entry-float",
        "changes-int",
        "changes-false",
        "no-object",
    ],
)
def test_odd_inner_parts_are_stored_and_acknowledged(post_webhook, conn, body):
    assert post_webhook(body).status_code == 200
    stored = conn.execute("SELECT body FROM webhooks").fetchone()[0]
    assert json.loads(stored) == body


def test_other_object_is_stored_without_events(post_webhook, conn):
    assert post_webhook({"object": "page", "entry": [{"id": "1", "messaging": []}]}).status_code == 200
    assert counts(conn) == (1, 0, 0)


def test_raw_body_is_stored_byte_for_byte(post_webhook, conn):
    raw = b'{"object":"whatsapp_business_account",  "entry":[] , "x":"\\u00e9"}'
    assert post_webhook(raw).status_code == 200
    assert bytes(conn.execute("SELECT body FROM webhooks").fetchone()[0]) == raw


# --- duplicates -----------------------------------------------------------------------


def test_duplicate_webhook_makes_no_new_event(post_webhook, conn):
    assert post_webhook(text_message()).status_code == 200
    assert post_webhook(text_message()).status_code == 200
    webhooks, events, _ = counts(conn)
    assert (webhooks, events) == (2, 2)  # one message and its contact.created, no second of either


def test_every_message_of_a_batch_becomes_an_event(post_webhook, conn):
    body = text_message("wamid.A")
    second_entry = json.loads(json.dumps(body["entry"][0]))
    second_entry["changes"][0]["value"]["messages"][0]["id"] = "wamid.B"
    body["entry"].append(second_entry)
    extra = dict(body["entry"][0]["changes"][0]["value"]["messages"][0], id="wamid.C")
    body["entry"][0]["changes"][0]["value"]["messages"].append(extra)
    assert post_webhook(body).status_code == 200
    rows = conn.execute("SELECT body FROM events WHERE name = 'message.received'")
    ids = {json.loads(r[0])["message_id"] for r in rows}
    assert ids == {"wamid.A", "wamid.B", "wamid.C"}


# --- storage and Redis failures ---------------------------------------------------------------


@pytest.mark.engines("sqlite")
def test_database_that_cannot_commit_gets_503_and_stores_nothing(app, post_webhook, conn, monkeypatch):
    blocker = db.connect(app.config["WAHOOK"].database_path)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock, as a stuck process would
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)  # wait 0.2 s instead of 5 for the lock
    started = time.monotonic()
    try:
        response = post_webhook(text_message())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert 0.2 <= time.monotonic() - started < 3
    assert response.status_code == 503
    assert b"Traceback" not in response.get_data()
    assert counts(conn) == (0, 0, 0)
    # Meta retries; the retry is stored.
    assert post_webhook(text_message()).status_code == 200
    assert counts(conn)[:2] == (1, 2)


def test_redis_down_still_answers_200_and_keeps_the_delivery(tmp_path, runner, conn, storage_database):
    from conftest import instance_sections

    sections = instance_sections(tmp_path, "unix:///nonexistent/redis.sock", storage_database)
    app = create_app({"config_path": str(tmp_path / "none.toml"), **sections})
    with app.app_context():
        from gateway.delivery import endpoints

        endpoints.create(db.get_db(), app.config["WAHOOK"], "http://127.0.0.1:9/hook")
    raw = json.dumps(text_message()).encode()
    response = app.test_client().post(URL, data=raw, headers={"X-Hub-Signature-256": sign(raw, APP_SECRET)})
    assert response.status_code == 200
    state = conn.execute("SELECT event_name, state FROM deliveries ORDER BY id").fetchall()
    assert [tuple(r) for r in state] == [("contact.created", "pending"), ("message.received", "pending")]


# --- real gunicorn -----------------------------------------------------------------------


def test_concurrent_duplicates_against_gunicorn_make_one_event(processes, conn):
    base = processes.start_web(workers=2)
    raw = json.dumps(text_message("wamid.RACE")).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def post() -> None:
        session = requests.Session()
        barrier.wait()
        for _ in range(5):
            statuses.append(session.post(base + URL, data=raw, headers=headers, timeout=10).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 40
    webhooks, events, _ = counts(conn)
    assert webhooks == 40
    assert events == 2  # the message and its contact.created, once each


# --- hostile but signed -------------------------------------------------------------------


def test_a_cut_emoji_is_stored_and_its_event_is_valid_json(post_webhook, conn):
    # A lone surrogate escape: JSON allows it, and a cut emoji arrives that way.
    raw = json.dumps(text_message("wamid.CUT", text="hi X")).encode()
    raw = raw.replace(b"wamid.CUT", b"wamid.\\ud800").replace(b"hi X", b"hi \\ud83d")
    response = post_webhook(raw)
    assert response.status_code == 200
    (stored,) = conn.execute("SELECT body FROM events WHERE name = 'message.received'").fetchall()
    event = json.loads(stored[0])
    assert event["text"] == "hi \ud83d"
    assert bytes(conn.execute("SELECT body FROM webhooks").fetchone()[0]) == raw


def test_a_cut_emoji_in_object_or_field_is_stored_too(post_webhook, conn):
    raw = json.dumps(text_message()).encode().replace(b'"messages",', b'"mess\\udc00ages",', 1)
    assert post_webhook(raw).status_code == 200
    assert post_webhook(b'{"object": "x\\ud800y", "entry": []}').status_code == 200
    assert conn.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 2
    assert bytes(conn.execute("SELECT body FROM webhooks WHERE id = 1").fetchone()[0]) == raw


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_numbers_json_cannot_carry_are_refused(post_webhook, conn, number):
    raw = json.dumps(text_message()).encode().replace(b'"1749416383"', number, 1)
    response = post_webhook(raw)
    assert response.status_code == 400
    assert counts(conn) == (0, 0, 0)


def test_chunked_body_over_4_mib_is_413_not_a_bad_signature(processes, conn):
    base = processes.start_web(workers=1)
    body = json.dumps({**text_message(), "padding": "x" * (5 * 1024 * 1024)}).encode()

    def chunks():
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = requests.post(base + URL, data=chunks(), headers={"X-Hub-Signature-256": sign(body)}, timeout=30)
    assert response.status_code == 413
    assert counts(conn) == (0, 0, 0)
    assert rejected(conn) == 0


def test_chunked_body_under_the_limit_is_accepted(processes, conn):
    base = processes.start_web(workers=1)
    body = json.dumps(text_message()).encode()
    response = requests.post(
        base + URL, data=iter([body[:100], body[100:]]), headers={"X-Hub-Signature-256": sign(body)}, timeout=10
    )
    assert response.status_code == 200
    assert counts(conn)[:2] == (1, 2)


def test_processes_starting_together_share_one_whole_simulate_key(tmp_path):
    # Web workers start at the same moment: each must read the same, complete key.
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(runstate.simulate_key(tmp_path / "d"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and len(keys[0]) >= 40
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["simulate_key"]


def test_an_empty_or_unreadable_simulate_key_accepts_nothing(tmp_path, redis_url):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "simulate_key").write_bytes(b"\xff\xfe")
    app = local_key_app(tmp_path, redis_url)
    assert app.config["WAHOOK_SIMULATE_KEY"] == ""
    raw = json.dumps(text_message()).encode()
    response = app.test_client().post(URL, data=raw, headers={"X-Hub-Signature-256": sign(raw, "")})
    assert response.status_code == 401


def test_a_lone_surrogate_in_the_customer_is_stored_with_its_contact(post_webhook, conn):
    raw = json.dumps(text_message("wamid.SURROGATE")).encode()
    raw = raw.replace(b'"16505551234"', b'"\\udfff"').replace(b'"Sheena Nelson"', b'"Sheena \\ud83d"')
    assert post_webhook(raw).status_code == 200
    names = [row[0] for row in conn.execute("SELECT name FROM events ORDER BY id")]
    assert names == ["contact.created", "message.received"]
    assert conn.execute("SELECT wa_id, name FROM contacts").fetchone()[:] == ("\\udfff", "Sheena \\ud83d")
