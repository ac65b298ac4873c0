"""Signed media links: made from the id and receipt time, refused when forged, expired or odd."""

from __future__ import annotations

import time

import pytest

from gateway.media import links
from gateway.media.links import LinkRefused, check_token, make_token

KEY = b"k" * 64


def test_a_token_names_its_media_until_it_expires():
    token = make_token(KEY, "1234567890", int(time.time()) + 60)
    assert check_token(KEY, token) == "1234567890"
    with pytest.raises(LinkRefused, match="expired"):
        check_token(KEY, token, now=time.time() + 61)


def test_a_token_from_another_installation_or_edited_is_refused():
    token = make_token(KEY, "1234567890", int(time.time()) + 60)
    with pytest.raises(LinkRefused, match="signature"):
        check_token(b"other" * 10, token)
    payload, signature = token.split(".")
    # A later expiry (or another media id) in the payload needs a new signature.
    longer = links._b64(f"1234567890:{int(time.time()) + 10**6}".encode())
    with pytest.raises(LinkRefused, match="signature"):
        check_token(KEY, f"{longer}.{signature}")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(LinkRefused, match="signature"):
        check_token(KEY, f"{payload}.{flipped}")


@pytest.mark.parametrize("token", ["", "abc", "a.b", "../../etc/passwd", "x" * 5000, "a%2fb.c", "a\x00b." + "A" * 43])
def test_malformed_tokens_are_refused(token):
    with pytest.raises(LinkRefused, match="malformed"):
        check_token(KEY, token)


@pytest.mark.parametrize("media_id", ["../etc", "a/b", "a%2fb", "a\x00b", "", "x" * 129, "1.2"])
def test_ids_that_could_walk_a_path_get_no_token(media_id):
    with pytest.raises(ValueError):
        make_token(KEY, media_id, 1)


def test_a_signed_token_with_a_hostile_id_is_still_refused():
    # Even a correctly signed payload (a leaked key, an old format) must not name a path.
    payload = links._b64(f"../../x:{int(time.time()) + 60}".encode())
    token = f"{payload}.{links._sign(KEY, payload)}"
    with pytest.raises(LinkRefused, match="malformed"):
        check_token(KEY, token)


def test_the_link_uses_the_public_url_and_link_days(app, monkeypatch):
    config = app.config["WAHOOK"]
    assert links.link(config, "123", time.time()) is None  # no access token: no link
    config["meta"]["access_token"] = "t"
    monkeypatch.setenv("WAHOOK_PUBLIC_URL", "https://hooks.example.com/")
    url = links.link(config, "123", 1_000_000)
    assert url.startswith("https://hooks.example.com/media/")
    token = url.rsplit("/", 1)[1]
    key = links.installation_key(config)
    assert check_token(key, token, now=1_000_000 + 7 * 86400) == "123"
    with pytest.raises(LinkRefused):
        check_token(key, token, now=1_000_000 + 7 * 86400 + 1)
    assert (config.data_dir / "media_key").stat().st_mode & 0o077 == 0
    monkeypatch.delenv("WAHOOK_PUBLIC_URL")
    monkeypatch.setenv("WAHOOK_BIND", "0.0.0.0:9000")
    assert links.link(config, "123", 1_000_000).startswith("http://0.0.0.0:9000/media/")
