"""The admin pages in a real browser: headless Chromium (Debian's package, else Playwright's
own; provision finds or installs one) driven by Playwright, against real gunicorn and
worker processes and a local receiver.

Screenshots of every page land in test-output/screenshots/ for a person to look at.
"""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

import provision
from conftest import ADMIN_PASSWORD, ROOT, sign, text_message, wait_until
from gateway.storage import db
from receiver import Behaviour

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser():
    try:
        executable = provision.chromium_executable()
    except provision.Missing as exc:
        pytest.fail(str(exc), pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=30_000)
        yield launched
        launched.close()


@pytest.fixture
def server(processes):
    """Real gunicorn and one real worker; yields the base URL."""
    # The pages redeliver failed deliveries by hand; an outage probe (10 s after the last
    # failure) must not redeliver them first while a busy machine is slow to click.
    processes.env["WAHOOK_PROBE_FIRST"] = "3600"
    base = processes.start_web()
    processes.start_worker()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture
def database(processes):
    """A connection to the processes' database, for waiting on what the worker did."""
    conn = db.connect(processes.tmp_path / "data" / "wahook.db")
    yield conn
    conn.close()


def new_page(browser: Browser, width: int, height: int) -> tuple[Page, list[str]]:
    """A fresh browser context (no cookies) and a list collecting what went wrong in it."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    # A page answered with 400 (a form to correct) is expected; a stylesheet, script or icon
    # that fails to load, a script error or a CSP violation is not.
    page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and not m.text.startswith("Failed to load") else None,
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}") if r.status >= 400 and r.request.resource_type != "document" else None
        ),
    )
    return page, errors


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, base: str, screenshot: str | None = None) -> None:
    page.goto(base + "/monitor")
    expect(page).to_have_url(base + "/login?next=/monitor")
    if screenshot:
        shot(page, screenshot)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(base + "/monitor")


def post_meta(base: str, body: dict) -> None:
    raw = json.dumps(body).encode()
    response = requests.post(
        base + "/api/webhooks/whatsapp",
        data=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)},
        timeout=5,
    )
    assert response.status_code == 200


def add_endpoint(page: Page, base: str, url: str, screenshot: str | None = None) -> None:
    page.goto(base + "/settings")
    page.fill("#url", url)
    page.check("input[value='message.received']")
    page.click("button:has-text('Add endpoint')")
    expect(page.locator("h1")).to_have_text("Endpoint added")
    expect(page.locator("#secret")).to_have_value(re.compile(r"^whsec_"))
    if screenshot:
        shot(page, screenshot)
    page.click("text=Done, back to settings")


def no_sideways_scroll(page: Page) -> None:
    # As a user sees it: with its stylesheet. A click that loads a page returns once the new page
    # has begun to arrive; measured before style.css had come, on a loaded machine, the settings
    # page was 494 px wide in a 375 px window, which is its width unstyled.
    page.wait_for_load_state("load")
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.viewport_size["width"]
    assert width <= viewport, f"{page.url} is {width} px wide in a {viewport} px window"


def delivery_states(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())


def redeliver_from_the_monitor(page: Page, database: sqlite3.Connection, button: str, flash: str, total: int) -> None:
    """Press a redeliver button, then wait until all `total` deliveries are delivered and the Failed card says 0."""
    page.locator(button).first.click()
    expect(page.locator(".flash")).to_contain_text(flash)
    wait_until(lambda: delivery_states(database) == {"delivered": total}, timeout=30, message=f"{total} delivered")
    page.reload()
    expect(page.locator("#failed-total")).to_have_text("0")


def test_admin_flow_in_a_browser(browser, server, database, receiver):
    base = server
    page, errors = new_page(browser, 1280, 900)
    log_in(page, base, screenshot="login")

    # Add an endpoint and send it a test.
    add_endpoint(page, base, receiver.url, screenshot="secret")
    expect(page.locator("button.copy").first).to_be_visible()  # app.js ran under the CSP
    page.click("button:has-text('Send test')")
    outcome = page.locator("#test-outcome")
    expect(outcome).to_contain_text("Test delivered")
    expect(outcome).to_contain_text("HTTP 200")
    assert json.loads(receiver.requests[0].body)["event"] == "webhook.test"
    shot(page, "settings")

    # A message from Meta: its attempt on the monitor, its event in the log.
    post_meta(base, text_message("wamid.BROWSER1", text="Hello from the browser test"))
    receiver.wait_for(2, timeout=15)
    wait_until(lambda: delivery_states(database).get("delivered") == 2, timeout=10, message="delivered")
    page.goto(base + "/monitor")
    expect(page.locator("#attempts")).to_contain_text("message.received")
    expect(page.locator("#overall")).to_have_text("All deliveries are healthy.")
    page.goto(base + "/events")
    expect(page.locator("article.webhook")).to_have_count(1)
    expect(page.locator("article.webhook")).to_contain_text("Sheena Nelson: [text] Hello from the browser test")
    shot(page, "events")
    page.click("a.webhook-link")
    # The customer's contact.created comes first, then the message.
    expect(page.locator("pre.json", has_text='"message_id": "wamid.BROWSER1"')).to_have_count(1)
    shot(page, "event-detail")

    # A receiver that fails every retry, then a redelivery from the monitor.
    receiver.behaviour = Behaviour(status=500, body=b"Internal Server Error")
    post_meta(base, text_message("wamid.BROWSER2", text="This one fails first"))
    wait_until(lambda: delivery_states(database).get("failed") == 1, timeout=20, message="a failed delivery")
    page.goto(base + "/monitor")
    expect(page.locator("#overall")).to_contain_text("1 endpoint is failing")
    expect(page.locator("#ep-1-status")).to_contain_text("failing since")
    expect(page.locator("#ep-1-streak")).to_have_text("3 failed attempts in a row")
    expect(page.locator("#failed-total")).to_have_text("1")
    shot(page, "monitor")
    receiver.behaviour = Behaviour(status=200)
    redeliver_from_the_monitor(page, database, "#failed button:has-text('Redeliver')", "queued again", 3)
    expect(page.locator("#ep-1-status")).to_contain_text("healthy")
    shot(page, "monitor-after-redeliver")
    assert [json.loads(r.body).get("message_id") for r in receiver.requests][-1] == "wamid.BROWSER2"

    # A bad URL is explained next to its field; deleting asks first.
    page.goto(base + "/settings")
    page.click("#endpoint-1 >> text=Edit")
    page.fill("#url", "ftp://example.com/hook")
    page.click("button:has-text('Save')")
    expect(page.locator("#url-error")).to_contain_text("must start with")
    shot(page, "edit-error")
    page.click("text=Cancel")
    page.click("#endpoint-1 >> text=Delete…")
    expect(page.locator("h1")).to_have_text("Delete endpoint #1?")
    shot(page, "confirm-delete")
    page.click("text=Cancel")
    expect(page.locator("#endpoint-1")).to_contain_text(receiver.url)

    # Logging out ends the session.
    page.click("button:has-text('Log out')")
    expect(page).to_have_url(base + "/login")
    page.goto(base + "/settings")
    expect(page).to_have_url(base + "/login?next=/settings")
    assert errors == [], errors


def test_pages_fit_a_phone(browser, server, database, receiver):
    base = server
    page, errors = new_page(browser, 375, 812)
    log_in(page, base)
    add_endpoint(page, base, receiver.url)
    # An API key, so its row is on the page too: made once, then listed by its prefix.
    page.fill("#api-key-name", "campaign tool on a phone")
    page.click("button:has-text('Make API key')")
    expect(page.locator("h1")).to_have_text("API key made")
    expect(page.locator("#api-key")).to_have_value(re.compile(r"^wak_"))
    no_sideways_scroll(page)
    page.click("text=Done, back to settings")
    expect(page.locator("#api-keys")).to_contain_text("campaign tool on a phone")
    page.click("button:has-text('Send test')")
    expect(page.locator("#test-outcome")).to_contain_text("Test delivered")
    no_sideways_scroll(page)
    shot(page, "settings-phone")
    post_meta(base, text_message("wamid.PHONE", text="A message read on a phone " + "long " * 30))
    wait_until(lambda: delivery_states(database).get("delivered") == 2, timeout=15, message="delivered")
    for path, name in (("/monitor", "monitor-phone"), ("/events", "events-phone"), ("/events/1", "event-phone")):
        page.goto(base + path)
        no_sideways_scroll(page)
        shot(page, name)
    assert errors == [], errors


PHONE_MONITOR_MAX_PX = 4500  # 13 failures once made the phone-width monitor 8,961 px tall; now about 3,900


def underlined_code_links(page: Page) -> list[str]:
    """Links around a name in code whose underline would run through its underscores."""
    return page.evaluate(
        """[...document.querySelectorAll('a')].filter(a => a.querySelector(':scope > code'))
             .filter(a => getComputedStyle(a).textDecorationLine !== 'none').map(a => a.textContent)"""
    )


def test_pages_agree_with_the_data(browser, server, database, make_receiver):
    base = server
    receiver, doomed = make_receiver(), make_receiver()
    page, errors = new_page(browser, 1280, 900)
    log_in(page, base)
    add_endpoint(page, base, receiver.url)

    # 13 failures: a test send and 12 messages to a receiver that is down.
    receiver.behaviour = Behaviour(status=500, body=b"down")
    page.click("button:has-text('Send test')")
    expect(page.locator("#test-outcome")).to_contain_text("Test failed")
    for n in range(12):
        post_meta(base, text_message(f"wamid.DOWN{n}", text=f"Message {n} while the receiver is down"))
    wait_until(lambda: delivery_states(database).get("failed") == 13, timeout=60, message="13 failed deliveries")

    phone, phone_errors = new_page(browser, 375, 812)
    log_in(phone, base)
    expect(phone.locator("#failed-total")).to_have_text("13")
    shot(phone, "monitor-phone-13-failed")
    height = phone.evaluate("document.documentElement.scrollHeight")
    print(f"phone-width monitor with 13 failures: {height} px")
    assert height <= PHONE_MONITOR_MAX_PX, f"the phone-width monitor is {height} px tall with 13 failures"
    no_sideways_scroll(phone)

    page.goto(base + "/monitor")
    expect(page.locator("#failed-total")).to_have_text("13")
    expect(page.locator("#failed-page")).to_have_text("1 of 2 pages")
    expect(page.locator("#failed tbody tr")).to_have_count(10)
    assert underlined_code_links(page) == []
    shot(page, "monitor-13-failed")
    page.click("#failed >> text=Older →")
    expect(page.locator("#failed tbody tr")).to_have_count(3)
    expect(page.locator("#failed")).to_contain_text("webhook.test")  # the oldest: the failed test send
    page.goto(base + "/settings")
    expect(page.locator("#endpoint-1-health")).to_contain_text("failing since")
    expect(page.locator("#endpoint-1-last")).to_contain_text("500")
    expect(page.locator("#endpoint-1-failed")).to_have_text("13 waiting for a redelivery")
    shot(page, "settings-health")

    # Redeliver all failed covers every one the card counts, the test send included.
    receiver.behaviour = Behaviour(status=200)
    page.goto(base + "/monitor")
    redeliver_from_the_monitor(
        page, database, "button:has-text('Redeliver all failed')", "13 failed deliveries queued again.", 13
    )
    expect(page.locator("#overall")).to_have_text("All deliveries are healthy.")
    shot(page, "monitor-all-redelivered")

    # The event page shows every attempt, across both retry cycles.
    page.goto(base + "/events/1")
    expect(page.locator(".attempt-count").first).to_have_text("· 4 attempts, last 200")
    expect(page.locator(".history").first.locator("li")).to_have_count(4)
    shot(page, "event-every-attempt")

    # A template update without a language, and the search.
    template = text_message()
    template["entry"][0]["changes"] = [
        {
            "field": "message_template_status_update",
            "value": {"event": "APPROVED", "message_template_id": 1, "message_template_name": "order_confirmation"},
        }
    ]
    post_meta(base, template)
    page.goto(base + "/events")
    expect(page.locator("article.webhook").first).to_contain_text("order_confirmation: approved")
    assert underlined_code_links(page) == []
    page.fill("#customer", "+1 650 555 1234")
    page.fill("#message_id", "wamid.DOWN3")
    page.click("button:has-text('Search')")
    expect(page.locator("article.webhook")).to_have_count(1)
    expect(page.locator("article.webhook")).to_contain_text("Message 3 while the receiver is down")
    shot(page, "events-search")
    page.fill("#message_id", "")
    page.select_option("#state", "delivered")
    page.click("button:has-text('Search')")
    expect(page.locator("article.webhook")).to_have_count(12)

    # A deleted endpoint's failure is counted apart and dismissed; its id is not given again.
    page.goto(base + "/settings")
    add_endpoint(page, base, doomed.url)
    doomed.behaviour = Behaviour(status=500)
    post_meta(base, text_message("wamid.DOOMED", text="Only the second endpoint fails this one"))
    wait_until(lambda: delivery_states(database).get("failed") == 1, timeout=20, message="a failure for #2")
    page.click("#endpoint-2 >> text=Delete…")
    page.click("button:has-text('Delete endpoint')")
    add_endpoint(page, base, doomed.url)
    expect(page.locator("#endpoint-3")).to_contain_text(doomed.url)
    expect(page.locator("#endpoint-3-health")).to_have_text("no attempt yet")
    page.goto(base + "/monitor")
    expect(page.locator("#failed-total")).to_have_text("0")
    expect(page.locator("#orphaned-total")).to_have_text("1")
    expect(page.locator("#overall")).to_have_text(
        "All deliveries are healthy. 1 failed delivery of deleted endpoints can be dismissed."
    )
    shot(page, "monitor-deleted-endpoint")
    page.click("button:has-text('Dismiss all')")
    expect(page.locator(".flash")).to_contain_text("1 failed delivery of deleted endpoints dismissed")
    expect(page.locator("#orphaned")).to_have_count(0)
    assert errors == [] and phone_errors == [], errors + phone_errors


def test_monitor_says_meta_is_refused_until_the_app_secret_is_set(browser, fresh_processes, tmp_path):
    # A fresh install: no App secret. A simulated webhook (signed with the local key) gets in,
    # one signed as Meta would is refused, and the monitor says why and what to do.
    base = fresh_processes.start_web(workers=1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    local_key = (tmp_path / "data" / "simulate_key").read_text().strip()
    raw = json.dumps(text_message("wamid.SIMULATED")).encode()
    for secret, status in ((local_key, 200), ("what-meta-signs-with", 401)):
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, secret)}
        assert (
            requests.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=5).status_code == status
        )
    page, errors = new_page(browser, 1280, 900)
    log_in(page, base)
    notice = page.locator("#app-secret-notice")
    expect(notice).to_contain_text("Meta's App secret is not set")
    expect(notice).to_contain_text("refused with 401")
    expect(notice).to_contain_text(str(fresh_processes.config_path))
    expect(notice).to_contain_text("./wahook simulate")
    expect(page.locator("#rejected-hour")).to_have_text("1")
    expect(page.locator("#config-stale-notice")).to_have_count(0)
    shot(page, "monitor-app-secret-not-set")

    # The file edited while running: the page says the server still runs the old values.
    text = fresh_processes.config_path.read_text()
    fresh_processes.config_path.write_text(text.replace('app_secret = ""', 'app_secret = "now-set"'))
    page.reload()
    expect(page.locator("#config-stale-notice")).to_contain_text("still use the old values")
    expect(page.locator("#app-secret-notice")).to_be_visible()  # still true of what runs
    shot(page, "monitor-config-changed")
    assert errors == [], errors
