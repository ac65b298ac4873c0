"""`GET /media/<token>` and the media pieces of the admin pages, on the app with a Graph stand-in."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

import worker
from conftest import login, media_message, post_form, sign
from gateway.media import links, serve, store
from gateway.storage import db
from graph_stub import Media

PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 300


@pytest.fixture
def client(media_app):
    return media_app.test_client()


@pytest.fixture
def conn(media_app):
    return db.connection(media_app.config["WAHOOK"].database_path)


def post(client, body: dict):
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
    return client.post("/api/webhooks/whatsapp", data=raw, headers=headers)


def media_of(conn, message_id: str) -> dict:
    for (body,) in conn.execute("SELECT body FROM events WHERE name = 'message.received'"):
        event = json.loads(body)
        if event["message_id"] == message_id:
            return event["media"]
    raise AssertionError(f"no event for {message_id}")


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def test_the_event_carries_a_link_that_serves_the_file(client, conn, graph):
    graph.media["5001"] = Media(PICTURE, mime_type="image/png")
    assert post(client, media_message("5001", mime_type="image/png")).status_code == 200
    media = media_of(conn, "wamid.media5001")
    assert media["url"].startswith("http://localhost/media/")  # the address the webhook came to
    assert store.get(conn, "5001")["state"] == "pending"
    # Asked for before any worker ran: the link downloads it now.
    response = client.get(path_of(media["url"]))
    assert response.status_code == 200
    assert response.data == PICTURE
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Length"] == str(len(PICTURE))
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    row = store.get(conn, "5001")
    assert (row["state"], row["file"], row["size"]) == ("downloaded", hashlib.sha256(PICTURE).hexdigest(), len(PICTURE))
    assert client.get(path_of(media["url"])).data == PICTURE
    assert graph.media["5001"].hits == ["graph", "file"]  # kept: asked twice, downloaded once


@pytest.mark.parametrize("closes", ["close", "http/1.0", "http/1.0-eof"])
def test_a_file_served_over_a_connection_that_closes_is_downloaded(client, conn, graph, closes):
    """CDNs and proxies answer over HTTP/1.0 or with `Connection: close`, which ends the
    connection as soon as the headers are read."""
    graph.media["5010"] = Media(PICTURE * 4, mime_type="image/png", closes=closes)
    assert post(client, media_message("5010", mime_type="image/png")).status_code == 200
    response = client.get(path_of(media_of(conn, "wamid.media5010")["url"]))
    assert response.status_code == 200, response.text
    assert response.data == PICTURE * 4
    assert store.get(conn, "5010")["state"] == "downloaded"


def test_without_an_access_token_media_url_is_null(app):
    assert post(app.test_client(), media_message("5001")).status_code == 200
    conn = db.connection(app.config["WAHOOK"].database_path)
    assert media_of(conn, "wamid.media5001")["url"] is None
    assert conn.execute("SELECT count(*) FROM media").fetchone()[0] == 0


def test_a_failed_download_answers_502_with_the_reason_and_the_event_still_goes(client, conn, graph):
    graph.media["5002"] = Media(PICTURE, graph_status=404)
    assert post(client, media_message("5002")).status_code == 200
    media = media_of(conn, "wamid.media5002")
    response = client.get(path_of(media["url"]))
    assert response.status_code == 502
    assert "Graph has no such media (404)" in response.text
    assert store.get(conn, "5002")["state"] == "failed"
    assert client.get(path_of(media["url"])).status_code == 502
    assert graph.media["5002"].hits == ["graph"]  # a permanent failure is not asked again


def test_a_retryable_failure_is_tried_again_when_the_link_is_asked(client, conn, graph):
    graph.media["5003"] = Media(PICTURE, graph_status=500)
    post(client, media_message("5003"))
    url = path_of(media_of(conn, "wamid.media5003")["url"])
    response = client.get(url)
    assert response.status_code == 502 and "Graph answered 500" in response.text
    assert store.get(conn, "5003")["state"] == "retrying"
    graph.media["5003"].graph_status = 200
    assert client.get(url).data == PICTURE


def test_tampered_and_expired_links_get_403(client, conn, graph, media_app):
    graph.media["5004"] = Media(PICTURE)
    post(client, media_message("5004"))
    url = path_of(media_of(conn, "wamid.media5004")["url"])
    payload, signature = url.rsplit("/", 1)[1].split(".")
    other = links.make_token(b"another installation", "5004", int(time.time()) + 60)
    assert client.get(f"/media/{other}").status_code == 403
    assert client.get(f"/media/{payload}.{signature[::-1]}").status_code == 403
    key = links.installation_key(media_app.config["WAHOOK"])
    expired = links.make_token(key, "5004", int(time.time()) - 1)
    response = client.get(f"/media/{expired}")
    assert response.status_code == 403 and "expired" in response.text
    assert graph.media["5004"].hits == []  # nothing was fetched for a refused link


@pytest.mark.parametrize(
    "path",
    ["/media/..%2f..%2fwahook.db", "/media/../wahook.db", "/media/%00", "/media/a%00b.c", "/media/.", "/media/"],
)
def test_path_tricks_are_refused(client, path):
    response = client.get(path)
    assert response.status_code in (403, 404)
    assert response.text.startswith(("not a media link", "link refused: malformed"))
    assert b"SQLite" not in response.data


def test_hostile_media_ids_get_no_link_and_no_download(client, conn, graph):
    for bad in ("../../etc/passwd", "a%2fb", "a\x00b"):
        assert post(client, media_message(bad, wamid=f"wamid.bad{len(bad)}")).status_code == 200
    urls = [
        json.loads(b)["media"]["url"]
        for (b,) in conn.execute("SELECT body FROM events WHERE name = 'message.received'")
    ]
    assert urls == [None, None, None]
    assert conn.execute("SELECT count(*) FROM media").fetchone()[0] == 0


def test_a_link_for_pruned_media_is_404(client, conn, graph, media_app):
    key = links.installation_key(media_app.config["WAHOOK"])
    response = client.get(f"/media/{links.make_token(key, '777', int(time.time()) + 60)}")
    assert response.status_code == 404


def test_a_file_sent_twice_is_kept_once_and_pruned_with_its_last_webhook(client, conn, graph, media_app):
    graph.media["6001"] = Media(PICTURE)
    graph.media["6002"] = Media(PICTURE)  # the same file forwarded: another id, the same bytes
    post(client, media_message("6001"))
    post(client, media_message("6001"))  # Meta's retry: no new row
    post(client, media_message("6002"))
    assert conn.execute("SELECT count(*) FROM media").fetchone()[0] == 2
    for message in ("wamid.media6001", "wamid.media6002"):
        assert client.get(path_of(media_of(conn, message)["url"])).status_code == 200
    folder = store.media_dir(media_app.config["WAHOOK"])
    files = [p.name for p in folder.iterdir() if p.is_file()]
    assert files == [hashlib.sha256(PICTURE).hexdigest()]
    old = time.time() - 40 * 86400
    later = time.time() + 2 * store.ORPHAN_AGE  # the file is no longer new
    conn.execute("UPDATE webhooks SET received_at = ? WHERE id IN (1, 2)", (old,))
    worker.prune(conn, 30, folder)
    assert store.prune(conn, folder, now=later) == 0
    assert [r[0] for r in conn.execute("SELECT media_id FROM media")] == ["6002"]
    assert (folder / files[0]).exists()  # 6002 still needs it
    conn.execute("UPDATE webhooks SET received_at = ?", (old,))
    worker.prune(conn, 30, folder)
    store.prune(conn, folder, now=later)
    assert conn.execute("SELECT count(*) FROM media").fetchone()[0] == 0
    assert not (folder / files[0]).exists()


def test_the_settings_page_shows_and_checks_the_token_without_printing_it(client, graph):
    login(client)
    page = client.get("/settings").text
    assert "An access token is set" in page and "graph-test-token" not in page
    response = post_form(client, "/settings/media/check-token", follow_redirects=True)
    assert "Graph accepted the token (wahook test user 1234)." in response.text
    assert "graph-test-token" not in response.text
    assert "Graph accepted" not in client.get("/settings").text  # shown once


def test_check_token_needs_a_login_and_a_csrf_token(client):
    assert client.post("/settings/media/check-token").status_code in (302, 303)
    login(client)
    assert client.post("/settings/media/check-token").status_code == 403


def test_a_bad_token_is_reported_on_the_settings_page(client, graph, media_app):
    media_app.config["WAHOOK"]["meta"]["access_token"] = "a-wrong-token"
    login(client)
    response = post_form(client, "/settings/media/check-token", follow_redirects=True)
    assert "Graph refused the access token (401)" in response.text
    assert "a-wrong-token" not in response.text


def test_the_monitor_shows_the_media_row(client, conn, graph):
    graph.media["7001"] = Media(PICTURE)
    graph.media["7002"] = Media(PICTURE, graph_status=404)
    post(client, media_message("7001"))
    post(client, media_message("7002"))
    post(client, media_message("7003"))  # unknown to Graph: stays pending until a worker tries
    for message in ("wamid.media7001", "wamid.media7002"):
        client.get(path_of(media_of(conn, message)["url"]))
    login(client)
    page = client.get("/monitor").text
    assert 'id="media-downloaded">1<' in page
    assert 'id="media-failed">1<' in page
    assert 'id="media-pending">1<' in page
    assert f'id="media-bytes" title="{len(PICTURE)} bytes">76.8 kB<' in page
    assert "Graph has no such media (404)" in page


def test_the_monitor_has_no_media_row_without_a_token(app):
    client = app.test_client()
    login(client)
    assert 'id="media-title"' not in client.get("/monitor").text
    assert "No access token is set" in client.get("/settings").text


def test_a_slow_download_asked_for_by_a_link_gives_up_in_time_and_is_left_to_the_worker(
    client, conn, graph, monkeypatch
):
    monkeypatch.setattr(serve, "FETCH_WAIT", 0.5)
    graph.media["5005"] = Media(PICTURE, stall=1.5)
    post(client, media_message("5005"))
    started = time.monotonic()
    response = client.get(path_of(media_of(conn, "wamid.media5005")["url"]))
    assert time.monotonic() - started < 1.4
    assert response.status_code == 502 and "timed out" in response.text
    row = store.get(conn, "5005")
    assert (row["state"], row["lease_owner"]) == ("retrying", None)  # the worker takes it from here


@pytest.mark.parametrize(
    ("filename", "mime_type", "disposition", "content_type"),
    [
        ("Invoice 12.pdf", "application/pdf", 'inline; filename="Invoice 12.pdf"', "application/pdf"),
        ("a\r\nSet-Cookie: x=1.pdf", "application/pdf", 'inline; filename="a__Set-Cookie: x=1.pdf"', "application/pdf"),
        ("../../etc/passwd", "text/html\r\nX-Evil: 1", "inline; filename=_.._etc_passwd", "application/octet-stream"),
    ],
)
def test_a_customers_file_name_and_type_cannot_break_the_headers(
    client, conn, graph, filename, mime_type, disposition, content_type
):
    graph.media["5006"] = Media(PICTURE, mime_type="")
    post(client, media_message("5006", "document", filename=filename, mime_type=mime_type))
    response = client.get(path_of(media_of(conn, "wamid.media5006")["url"]))
    assert response.status_code == 200 and response.data == PICTURE
    assert response.headers["Content-Disposition"] == disposition
    assert response.headers["Content-Type"] == content_type
    assert "X-Evil" not in response.headers and "Set-Cookie" not in response.headers
