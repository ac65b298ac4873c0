"""A live inbox in a real browser (SPEC 7): the example page of docs/browser.md, served with
the docs' own backend code from another origin (another port), shows simulated messages as
they come over a WebSocket and over EventSource with a stream token; after wahook restarts
it shows what came meanwhile, nothing missed or repeated; a page from an unlisted origin
gets nothing.

Screenshots land in test-output/screenshots/inbox-*.png.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest
import requests
from flask import Flask
from playwright.sync_api import expect
from werkzeug.serving import make_server

from conftest import ROOT, Processes, free_port, instance_sections, text_message, wait_until
from test_browser import SCREENSHOTS, browser, new_page, post_meta  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.browser

DOC = ROOT / "docs" / "browser.md"


def doc_block(language: str) -> str:
    """The first ```language block of docs/browser.md: the test runs what the docs show."""
    found = re.search(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert found, f"docs/browser.md has no {language} block"
    return found.group(1)


class PageSite:
    """The admin's own site on its own port: the docs' inbox page and token route."""

    def __init__(self, wahook: str, port: int = 0) -> None:
        site = Flask("inbox_site")
        html = doc_block("html").replace('"https://wahook.example.com"', json.dumps(wahook))
        site.add_url_rule("/inbox.html", "inbox", lambda: html)
        namespace = {"app": site, "WAHOOK": wahook, "requests": requests, "os": os}
        exec(doc_block("python"), namespace)  # noqa: S102 (the docs' own backend lines)
        self.server = make_server("127.0.0.1", port, site, threaded=True)
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        # close() waits for the serving loop to see its stop flag: at most a 0.05 s poll, not 0.5.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Wahook:
    """gunicorn on a fixed port, so a restarted one is found at the same address."""

    def __init__(self, processes: Processes, port: int) -> None:
        self.processes = processes
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.processes.tmp_path / f"gunicorn-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "app:app", "-c", "gunicorn.conf.py"],
            cwd=ROOT,
            env={**self.processes.env, "WAHOOK_BIND": f"127.0.0.1:{self.port}"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.children.append(self.process)

        def up() -> bool:
            assert self.process.poll() is None, "gunicorn exited; see its log in the test's folder"
            try:
                return requests.get(self.base + "/healthz", timeout=1).status_code in (200, 503)
            except requests.RequestException:
                return False

        wait_until(up, timeout=30, message="gunicorn to answer")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def post_message(base: str, wamid: str, text: str) -> None:
    post_meta(base, text_message(wamid, text=text))


@pytest.fixture
def inbox(tmp_path, redis_url, monkeypatch):
    """wahook (listing one page origin) and two sites: the listed one and an unlisted one."""
    port = free_port()
    listed_port = free_port()
    sections = instance_sections(tmp_path, redis_url)
    sections["api"] = {"allowed_origins": [f"http://127.0.0.1:{listed_port}"]}
    processes = Processes(tmp_path, sections)
    wahook = Wahook(processes, port)
    wahook.start()
    _, made = processes.cli("apikey", "add", "inbox backend", "--scopes", "read")
    monkeypatch.setenv("WAHOOK_READ_KEY", made["key"])
    sites = [PageSite(wahook.base, listed_port)]
    sites.append(PageSite(wahook.base))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield wahook, sites[0], sites[1]
    for site in sites:
        site.close()
    processes.stop_all()


@pytest.mark.parametrize("via", ["ws", "sse"])
def test_a_page_on_another_origin_shows_messages_live_across_a_restart(browser, inbox, via):  # noqa: F811
    wahook, site, _ = inbox
    page, errors = new_page(browser, 900, 700)
    page.goto(f"{site.origin}/inbox.html?via={via}")
    expect(page.locator("#state")).to_have_text("live")
    post_message(wahook.base, f"wamid.{via}1", "Hello, is the shop open?")
    items = page.locator("#inbox li")
    expect(items).to_have_text(["Sheena Nelson: Hello, is the shop open?"])
    page.screenshot(path=str(SCREENSHOTS / f"inbox-{via}-live.png"))

    # wahook restarts; while it is down here, two messages arrive through another web process.
    wahook.stop()
    expect(page.locator("#state")).to_have_text("reconnecting")
    other = Wahook(wahook.processes, free_port())
    other.start()
    post_message(other.base, f"wamid.{via}2", "Are you there?")
    post_message(other.base, f"wamid.{via}3", "I'll come by at five")
    other.stop()
    wahook.start()
    expect(page.locator("#state")).to_have_text("live", timeout=20_000)
    expect(items).to_have_text(
        [
            "Sheena Nelson: Hello, is the shop open?",
            "Sheena Nelson: Are you there?",
            "Sheena Nelson: I'll come by at five",
        ]
    )
    post_message(wahook.base, f"wamid.{via}4", "Thanks!")
    expect(items).to_have_count(4)
    page.wait_for_timeout(1000)  # anything repeated would have come by now
    expect(items).to_have_count(4)
    expect(items.last).to_have_text("Sheena Nelson: Thanks!")
    page.screenshot(path=str(SCREENSHOTS / f"inbox-{via}-after-restart.png"))
    # While wahook was down its backend could not mint tokens and connections were refused, as
    # expected; nothing else went wrong.
    expected = ("ERR_CONNECTION_REFUSED", "WebSocket", "/stream-token", "Failed to load resource")
    assert not [e for e in errors if not any(x in e for x in expected)], errors


def test_a_page_from_an_unlisted_origin_gets_nothing(browser, inbox):  # noqa: F811
    wahook, _, stranger = inbox
    for via in ("ws", "sse"):
        page, errors = new_page(browser, 900, 700)
        page.goto(f"{stranger.origin}/inbox.html?via={via}")
        expect(page.locator("#state")).to_have_text("reconnecting")
        post_message(wahook.base, f"wamid.stranger{via}", "Private message")
        page.wait_for_timeout(1500)
        expect(page.locator("#inbox li")).to_have_count(0)
        expect(page.locator("#state")).to_have_text("reconnecting")
        assert errors, "the browser reports the refused connection"
        page.screenshot(path=str(SCREENSHOTS / f"inbox-{via}-unlisted-origin.png"))
        page.context.close()
