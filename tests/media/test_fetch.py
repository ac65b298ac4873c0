"""Downloads from a local stand-in for Graph: the file arrives whole and checked, or the
failure is data with the reason and whether retrying can help."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest

from gateway.media import fetch, store
from gateway.media.fetch import download
from gateway.net.safe_http import DeliveryError
from graph_stub import Media

PICTURE = b"\xff\xd8\xff" + bytes(range(256)) * 400


@pytest.fixture
def config(media_app):
    return media_app.config["WAHOOK"]


@pytest.fixture
def folder(config):
    return store.media_dir(config)


def leftovers(folder) -> list:
    return [p.name for p in (folder / "tmp").iterdir()] if (folder / "tmp").exists() else []


def test_a_file_is_kept_under_its_hash(config, folder, graph):
    graph.media["111"] = Media(PICTURE, mime_type="image/jpeg")
    fetched = download(config, "111", "", folder)
    name = hashlib.sha256(PICTURE).hexdigest()
    assert fetched == fetch.Fetched(name, len(PICTURE), "image/jpeg")
    assert (folder / name).read_bytes() == PICTURE
    assert graph.media["111"].hits == ["graph", "file"]
    assert set(graph.seen_tokens) == {"graph-test-token"}  # both calls carry the token
    assert leftovers(folder) == []


def test_a_bad_token_is_reported_without_the_token(config, folder, graph):
    graph.media["111"] = Media(PICTURE)
    config["meta"]["access_token"] = "wrong-secret-token"
    with pytest.raises(DeliveryError) as failure:
        download(config, "111", "", folder)
    assert "refused the access token (401)" in failure.value.message
    assert "wrong-secret-token" not in failure.value.message
    assert not failure.value.permanent  # the admin may fix the token


@pytest.mark.parametrize(
    ("status", "words", "permanent"),
    [(404, "no such media (404)", True), (500, "Graph answered 500", False), (401, "access token (401)", False)],
)
def test_graph_errors_are_data(config, folder, graph, status, words, permanent):
    graph.media["111"] = Media(PICTURE, graph_status=status)
    with pytest.raises(DeliveryError) as failure:
        download(config, "111", "", folder)
    assert words in failure.value.message
    assert failure.value.permanent is permanent
    assert graph.media["111"].hits == ["graph"]


def test_an_unknown_media_id_is_permanent(config, folder, graph):
    with pytest.raises(DeliveryError, match="no such media") as failure:
        download(config, "999", "", folder)
    assert failure.value.permanent


def test_a_stalled_download_times_out_and_can_be_retried(config, folder, graph):
    graph.media["111"] = Media(PICTURE, stall=config["delivery"]["timeout"] + 1.5)
    with pytest.raises(DeliveryError, match="timed out") as failure:
        download(config, "111", "", folder)
    assert not failure.value.permanent
    assert leftovers(folder) == []


def test_a_wrong_hash_keeps_nothing(config, folder, graph):
    graph.media["111"] = Media(PICTURE, wrong_hash=True)
    with pytest.raises(DeliveryError, match="sha256 mismatch") as failure:
        download(config, "111", "", folder)
    assert not failure.value.permanent
    assert [p for p in folder.iterdir() if p.is_file()] == []
    assert leftovers(folder) == []


def test_the_webhooks_hash_is_checked_when_graph_gives_none(config, folder, graph, monkeypatch):
    graph.media["111"] = Media(PICTURE)
    monkeypatch.setattr(Media, "sha256", lambda self: "")
    with pytest.raises(DeliveryError, match="sha256 mismatch"):
        download(config, "111", hashlib.sha256(b"other").hexdigest(), folder)
    as_base64 = base64.b64encode(hashlib.sha256(PICTURE).digest()).decode()
    assert download(config, "111", as_base64, folder).size == len(PICTURE)


def test_a_body_larger_than_announced_is_cut_off(config, folder, graph):
    graph.media["111"] = Media(PICTURE * 20, announce_size=len(PICTURE))
    with pytest.raises(DeliveryError, match="larger than the .* bytes Graph announced"):
        download(config, "111", "", folder)
    assert leftovers(folder) == []


def test_max_bytes_is_enforced_before_and_while_streaming(config, folder, graph):
    config["media"]["max_bytes"] = 1000
    graph.media["111"] = Media(PICTURE)
    with pytest.raises(DeliveryError, match="over media.max_bytes") as failure:
        download(config, "111", "", folder)
    assert failure.value.permanent
    assert graph.media["111"].hits == ["graph"]  # announced too large: not even fetched
    graph.media["222"] = Media(PICTURE, announce_size=500)  # announced small, sent large
    with pytest.raises(DeliveryError, match="over media.max_bytes|larger than"):
        download(config, "222", "", folder)
    assert leftovers(folder) == []


def test_an_expired_url_is_retried_with_a_fresh_one(config, folder, graph):
    graph.media["111"] = Media(PICTURE)
    graph.url_ttl = -1  # every URL handed out is already expired
    with pytest.raises(DeliveryError, match="download URL answered 404") as failure:
        download(config, "111", "", folder)
    assert not failure.value.permanent
    graph.url_ttl = 300
    assert download(config, "111", "", folder).size == len(PICTURE)


def test_the_download_url_is_held_to_the_delivery_rules(config, folder, graph):
    """Graph (meta.graph_url) is trusted; the URL it hands back is not."""
    graph.media["111"] = Media(PICTURE)
    config["delivery"]["allow_private_urls"] = False
    with pytest.raises(DeliveryError, match="loopback") as failure:
        download(config, "111", "", folder)
    assert failure.value.permanent
    config["delivery"]["allow_private_urls"] = True
    config["delivery"]["allow_http"] = False
    with pytest.raises(DeliveryError, match="https://") as failure:
        download(config, "111", "", folder)
    assert failure.value.permanent
    assert graph.media["111"].hits == ["graph", "graph"]  # the file URL was never connected to


def test_check_token_makes_one_call_and_never_shows_the_token(config, graph):
    assert fetch.check_token(config) == (True, "Graph accepted the token (wahook test user 1234).")
    config["meta"]["access_token"] = "not-the-token"
    ok, message = fetch.check_token(config)
    assert not ok and "401" in message and "not-the-token" not in message
    config["meta"]["access_token"] = ""
    assert fetch.check_token(config)[0] is False


def test_hash_matches_hex_and_base64():
    digest = hashlib.sha256(b"x").digest()
    assert fetch.hash_matches(digest.hex().upper(), digest)
    assert fetch.hash_matches(base64.b64encode(digest).decode(), digest)
    assert fetch.hash_matches(base64.urlsafe_b64encode(digest).decode().rstrip("="), digest)
    assert not fetch.hash_matches(hashlib.sha256(b"y").hexdigest(), digest)


def test_a_cap_bounds_the_whole_download(config, folder, graph):
    """The link downloads with a cap below gunicorn's request timeout (see media_worker.obtain)."""
    graph.media["111"] = Media(PICTURE, stall=1.5)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="timed out|took longer") as failure:
        download(config, "111", "", folder, cap=0.5)
    assert time.monotonic() - started < 1.4
    assert not failure.value.permanent
