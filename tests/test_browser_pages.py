"""The pages that say what the gateway does by itself, and local endpoints, in a real browser
against real gunicorn and worker processes with the default (strict) delivery rules. Each
changed page is saved to test-output/screenshots/ for a person to look at."""

from __future__ import annotations

import json

import pytest
import requests
from playwright.sync_api import Page, expect

from conftest import Processes, instance_sections, sign, text_message, wait_until
from gateway.delivery import outages
from gateway.storage import db
from receiver import Behaviour
from test_browser import SCREENSHOTS, browser, log_in, new_page, no_sideways_scroll, post_meta, shot

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the module-scoped Chromium, shared with test_browser
TOKEN = "tok_" + "Q7w8E9r0" * 5


@pytest.fixture
def strict(tmp_path, redis_url, storage_database):
    """gunicorn and one worker with https:// and public addresses only, a retry schedule over in
    0.4 s; yields (base URL, database connection, processes)."""
    sections = instance_sections(tmp_path, redis_url, storage_database)
    sections["delivery"].update(allow_http=False, allow_private_urls=False, retry_schedule=[0.2, 0.2])
    processes = Processes(tmp_path, sections)
    base = processes.start_web()
    processes.start_worker()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    conn = db.connect(tmp_path / "data" / "wahook.db")
    yield base, conn, processes
    conn.close()
    processes.stop_all()


def add_local_endpoint(page: Page, base: str, url: str, events: list[str]) -> None:
    page.goto(base + "/settings")
    page.fill("#url", url)
    for name in events:
        page.check(f"input[value='{name}']")
    page.click("button:has-text('Add endpoint')")
    expect(page.locator("#url-error")).to_contain_text("mark the endpoint local")
    shot(page, "settings-local-refused")
    page.check("#local")
    page.click("button:has-text('Add endpoint')")
    expect(page.locator("h1")).to_have_text("Endpoint added")
    page.click("text=Done, back to settings")


def states(conn) -> dict[str, int]:
    """The local endpoint's (#1) deliveries by state."""
    sql = "SELECT state, count(*) FROM deliveries WHERE endpoint_id = 1 GROUP BY state"
    return dict(conn.execute(sql).fetchall())


def token_lines(page: Page) -> int:
    """On how many lines the first recent attempt's URL shows TOKEN (1: not broken inside it)."""
    return page.evaluate(
        """(token) => {
            const cell = document.querySelector('#attempts td.url');
            const walk = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
            for (let node = walk.nextNode(); node; node = walk.nextNode()) {
                const at = node.data.indexOf(token);
                if (at < 0) continue;
                const range = document.createRange();
                range.setStart(node, at);
                range.setEnd(node, at + token.length);
                return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
            }
            return 0;
        }""",
        TOKEN,
    )


def test_local_endpoint_outage_recovery_and_sources_in_a_browser(browser, strict, make_receiver):
    base, conn, processes = strict
    down, watch = make_receiver(), make_receiver()
    page, errors = new_page(browser, 1280, 900)
    log_in(page, base)

    # A local receiver, added on the settings page with the strict global rules.
    add_local_endpoint(page, base, f"{down.url}?token={TOKEN}&v=2", ["message.received"])
    expect(page.locator("#endpoint-1-local")).to_have_text("local")
    shot(page, "settings-local-endpoint")
    page.click("#endpoint-1 >> text=Edit")
    expect(page.locator("#local")).to_be_checked()
    shot(page, "edit-local-endpoint")
    code, watcher = processes.cli("endpoint", "add", watch.url, "--local", "--events", "delivery.failed")
    assert code == 0 and watcher["local"] is True

    # simulate's posts are not Meta's.
    raw = json.dumps(text_message("wamid.SIMULATED")).encode()
    key = (processes.tmp_path / "data" / "simulate_key").read_text().strip()
    answer = requests.post(
        base + "/api/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw, key)}, timeout=5
    )
    assert answer.status_code == 200
    wait_until(lambda: states(conn).get("delivered") == 1, timeout=15, message="the simulated message delivered")
    page.goto(base + "/monitor")
    expect(page.locator("#last-webhook")).to_have_text("never")
    expect(page.locator("#last-simulated")).to_contain_text("not counted")
    assert token_lines(page) == 1
    shot(page, "monitor-simulate-not-counted")

    # An outage: the monitor says recovery will redeliver, not "press Redeliver all".
    down.behaviour = Behaviour(status=502, body=b"redeploying")
    for n in range(3):
        post_meta(base, text_message(f"wamid.OUT{n}", text=f"During the outage {n}"))
    wait_until(
        lambda: (
            conn.execute("SELECT count(*) FROM deliveries WHERE state = 'failed' AND endpoint_id = 1").fetchone()[0]
            == 3
        ),
        timeout=30,
        message="3 failed deliveries",
    )
    page.goto(base + "/monitor")
    expect(page.locator("#overall")).to_contain_text("redelivers its failed deliveries by itself")
    expect(page.locator("#auto-recovery-notice")).to_contain_text("3 of these will be redelivered by themselves")
    expect(page.locator("#ep-1-recovery")).to_contain_text("will be redelivered by themselves when it answers again")
    expect(page.locator("#failed button.primary")).to_have_count(0)
    shot(page, "monitor-outage-auto-recovery")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    no_sideways_scroll(page)
    shot(page, "monitor-outage-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Back: the probe (10 s after the last failure) finds it, recovery redelivers the rest.
    down.behaviour = Behaviour(status=200)
    wait_until(
        lambda: (
            conn.execute("SELECT count(*) FROM deliveries WHERE state = 'delivered' AND endpoint_id = 1").fetchone()[0]
            == 4
        ),
        timeout=outages.PROBE_FIRST + 30,
        interval=0.5,
        message="every delivery of the outage redelivered",
    )
    page.goto(base + "/monitor")
    expect(page.locator("#ep-1-recovered")).to_contain_text("2 failed deliveries from the outage redelivered")
    expect(page.locator("#ep-1-error .old-error")).to_have_count(1)
    expect(page.locator("#ep-1-error .error-text")).to_have_count(0)
    shot(page, "monitor-after-recovery")

    # The event log lists what the gateway and the API made, and the test sends, by source.
    page.goto(base + "/settings")
    page.click("#endpoint-1 >> button:has-text('Send test')")
    expect(page.locator("#test-outcome")).to_contain_text("Test delivered")
    page.goto(base + "/events")
    own = page.locator("#own-events")
    expect(own.locator(".source-gateway").first).to_have_text("gateway")
    expect(own.locator(".source-test")).to_have_count(1)
    expect(own).to_contain_text("delivery.failed")
    expect(own).to_contain_text("message.received to endpoint #1 failed after 3 attempts")
    expect(own).to_contain_text("endpoint.recovered")
    expect(page.locator("article.webhook .source-meta").first).to_have_text("Meta")
    expect(page.locator("article.webhook .source-test")).to_have_text("test: simulate")  # the simulated one
    shot(page, "events-by-source")
    own.locator("a", has_text="endpoint.recovered").click()
    expect(page.locator("#event-source")).to_contain_text("made by wahook itself")
    shot(page, "own-event")
    page.goto(base + "/events")
    page.locator("article.webhook", has=page.locator(".source-test")).locator("a.webhook-link").click()
    expect(page.locator("#webhook-source")).to_contain_text("posted by simulate")
    shot(page, "event-detail-simulated")

    # The config file edited while it runs: the pages name the rules still in use.
    text = processes.config_path.read_text()
    processes.config_path.write_text(text.replace("allow_http = false", "allow_http = true"))
    page.goto(base + "/settings")
    notice = page.locator("#delivery-drift-notice")
    expect(notice).to_contain_text("delivery.allow_http = true")
    expect(notice).to_contain_text("wahook still runs with false")
    shot(page, "settings-delivery-drift")
    page.goto(base + "/monitor")
    expect(page.locator("#delivery-drift-notice")).to_contain_text("Local receiver")
    assert errors == []
