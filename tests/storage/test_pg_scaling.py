"""PostgreSQL with several web processes and machines (SPEC 9): an intake waits only for one
about the same customer or message, costs a few round trips to a database on another
machine, pull never skips or repeats an event that commits late, and the counters stay exact
without a row every intake updates."""

from __future__ import annotations

import importlib.util
import json
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from app import create_app
from conftest import ROOT, instance_sections, sign, status_update, text_message, wait_until
from gateway.delivery import endpoints, outbox
from gateway.intake.event_catalog import search_columns
from gateway.storage import concurrency, db
from gateway.storage.db import get_db


def _bench_module(name: str):
    """A module of bench/, loaded from its file: putting bench/ on sys.path would make a later
    `import run` in the same test process find bench/run.py instead of the launcher."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LatencyProxy = _bench_module("latency_proxy").LatencyProxy

pytestmark = pytest.mark.engines("postgresql")

URL = "/api/webhooks/whatsapp"
MAX_ROUND_TRIPS = 6  # per intake, BEGIN and COMMIT included


def post(client, body: dict):
    raw = json.dumps(body).encode()
    return client.post(URL, data=raw, headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)})


def socket_path(url: str) -> str:
    """The Unix socket of the test server (it listens on no TCP port)."""
    return parse_qs(urlsplit(url).query)["host"][0] + "/.s.PGSQL.5432"


def through(url: str, port: int) -> str:
    """`url` reached over TCP through the proxy on `port`."""
    parts = urlsplit(url)
    return f"postgresql://{parts.username}@127.0.0.1:{port}{parts.path}"


def statuses(*pairs: tuple[str, str]) -> dict:
    body = status_update("wamid.unused")
    body["entry"][0]["changes"][0]["value"]["statuses"] = [
        {"id": wamid, "status": state, "timestamp": "1749416390", "recipient_id": "16505551234"}
        for wamid, state in pairs
    ]
    return body


def waiting_for_a_lock(conn) -> int:
    return conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]


def test_an_intake_costs_at_most_6_round_trips(tmp_path, redis_url, storage_database, engine):
    """Counted at a proxy between wahook and PostgreSQL, as a database on another machine sees
    them: every round trip of a POST, BEGIN and COMMIT included, with an endpoint to fan out to."""
    with LatencyProxy(socket_path(storage_database), delay=0) as proxy:
        sections = instance_sections(tmp_path, redis_url, through(storage_database, proxy.port))
        app = create_app({"TESTING": True, "config_path": str(tmp_path / "none.toml"), **sections})
        with app.app_context():
            endpoints.create(get_db(), app.config["WAHOOK"], "http://127.0.0.1:9/hook")
        client = app.test_client()
        assert post(client, statuses(("wamid.WARM", "sent"))).status_code == 200  # connects and migrates
        counted = {}
        for name, body in [
            ("one status", statuses(("wamid.RT1", "delivered"))),
            ("a stale status", statuses(("wamid.RT1", "sent"))),
            ("three statuses", statuses(("wamid.RT2", "sent"), ("wamid.RT2", "read"), ("wamid.RT3", "delivered"))),
            ("a new customer's message", text_message("wamid.RT4")),
            ("a known customer, renamed", renamed(text_message("wamid.RT5"))),
        ]:
            proxy.reset()
            assert post(client, body).status_code == 200, name
            counted[name] = proxy.turns
        db.close_all()
    check = db.connect(storage_database)
    stored = check.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    check.close()
    assert stored >= 8  # every body was fanned out, not refused
    assert all(0 < turns <= MAX_ROUND_TRIPS for turns in counted.values()), counted
    assert counted["one status"] <= 3, counted


def renamed(body: dict) -> dict:
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "Someone Else"
    return body


def test_intakes_of_other_customers_do_not_wait_and_pull_keeps_commit_order(app, client, conn, make_key, engine):
    """An intake's transaction is held open (as a slow machine would): an intake about another
    message commits meanwhile, one about the same message waits for it, and a reader pulling
    all along gets every event once, the held one first, though its id was taken first and its
    commit came last but one."""
    held = db.connect(app.config["WAHOOK"].database)
    held.execute("BEGIN")
    concurrency.lock_keys(held, ["status:wamid.SLOW"])  # what the intake of wamid.SLOW's status holds
    text = '{"event":"campaign.held","event_id":"evt_held"}'
    event = outbox.NewEvent(
        "evt_held", "campaign.held", "held", text, search_columns("campaign.held", json.loads(text))
    )
    outbox.add_events(held, [event], 0.0)
    try:
        check_turns(client, conn, make_key("read"), held)
    finally:
        db.rollback(held)
        held.close()


def check_turns(client, conn, key: str, held) -> None:
    """The body of the test above, while `held` is open."""

    answers: dict[str, int] = {}

    def intake(wamid: str) -> None:
        answers[wamid] = post(client, statuses((wamid, "read"))).status_code

    other = threading.Thread(target=intake, args=("wamid.OTHER",))
    other.start()
    other.join(timeout=30)
    assert answers.get("wamid.OTHER") == 200  # committed while the other transaction is open

    pulled: list[str] = []
    cursor = None

    def pull() -> None:
        nonlocal cursor
        query = "?limit=1000" + (f"&after={cursor}" if cursor else "")
        page = client.get("/api/v1/events" + query, headers={"Authorization": f"Bearer {key}"}).get_json()
        pulled.extend(e["event_id"] for e in page["events"])
        cursor = page["next"] or cursor

    pull()
    assert pulled == []  # wamid.OTHER's event waits behind the older transaction still open

    same = threading.Thread(target=intake, args=("wamid.SLOW",))
    same.start()
    wait_until(lambda: waiting_for_a_lock(conn) == 1, timeout=30, message="the same message's intake to wait")
    assert "wamid.SLOW" not in answers
    held.execute("COMMIT")
    same.join(timeout=30)
    assert answers["wamid.SLOW"] == 200
    pull()
    pull()
    names = [conn.execute("SELECT body FROM events WHERE event_id = ?", (e,)).fetchone()[0] for e in pulled]
    found = [json.loads(body).get("message_id", json.loads(body)["event"]) for body in names]
    assert found == ["campaign.held", "wamid.OTHER", "wamid.SLOW"]
    slow = json.loads(names[2])
    assert (slow["stale"], slow["current_status"]) == (False, "read")


def test_pull_orders_transaction_ids_as_numbers_not_as_text(conn, engine):
    """Events of transactions 9 and 10 (a running cluster passes such a boundary, 999 to 1000,
    every so often): read in pages, they come in commit order, each once. Ordered as text, 10
    came before 9, and the page after 9 repeated 10."""
    from gateway.api import event_reader

    with db.transaction(conn):
        for number, tx in enumerate(["8", "9", "10", "11"]):
            conn.execute(
                "INSERT INTO events (event_id, name, dedupe_key, body, created_at, tx)"
                " VALUES (?, 'campaign.step', ?, '{}', 0, CAST(? AS xid8))",
                (f"evt_tx{tx}", f"tx{number}", tx),
            )
    read, after = [], 0
    while rows := event_reader.page(conn, after, 1, []):
        read += [row["event_id"] for row in rows]
        after = event_reader.position(rows[-1])
    assert read == ["evt_tx8", "evt_tx9", "evt_tx10", "evt_tx11"]
    assert event_reader.latest_row(conn) == event_reader.cursor_row(conn, "evt_tx11")


def test_counters_have_no_row_every_intake_updates_and_stay_exact(app, client, conn, engine):
    """Two transactions that both store events do not wait on a counter row; /metrics counts
    every webhook once, also after the rows of sessions that ended are folded together."""
    first, second = db.connect(app.config["WAHOOK"].database), db.connect(app.config["WAHOOK"].database)
    second.execute("SET lock_timeout = '10s'")  # behind one shared row, its insert would fail
    for session, name in ((first, "a"), (second, "b")):
        session.execute("BEGIN")
        event = outbox.NewEvent(f"evt_{name}", "campaign.counted", name, "{}", search_columns("campaign.counted", {}))
        outbox.add_events(session, [event], 0.0)
    for session in (first, second):
        session.execute("COMMIT")
    for n in range(3):
        assert post(client, statuses((f"wamid.COUNT{n}", "sent"))).status_code == 200
    first.close()
    second.close()
    wait_until(
        lambda: (
            conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()[0] == 1
        ),
        timeout=30,
        message="the other sessions to end",
    )
    before = metric_lines(client)
    assert 'wahook_events_total{event="campaign.counted"} 2.0' in before
    assert 'wahook_webhooks_received_total{outcome="received"} 3.0' in before
    rows = conn.execute("SELECT count(*) FROM metric_totals").fetchone()[0]
    db.close_all()  # the app's own session ends too
    watch = db.connect(app.config["WAHOOK"].database)
    assert concurrency.fold_counter_shards(watch) > 0
    assert watch.execute("SELECT count(*) FROM metric_totals").fetchone()[0] < rows
    watch.close()
    assert metric_lines(client) == before


def metric_lines(client) -> list[str]:
    text = client.get("/metrics").get_data(as_text=True)
    return [line for line in text.splitlines() if line.startswith(("wahook_events_total", "wahook_webhooks_received"))]
