"""Outages (outages.py): a receiver down for longer than the retry schedule gets everything by
itself once it is back, once, oldest first; probes, disabling after `disable_after_hours`, and the
operational events, against real receivers, real workers and a short retry schedule."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from app import create_app
from conftest import Processes, attempt_due, instance_sections, text_message, wait_until
from gateway.delivery import delivery_states, doorbell, endpoints, outages
from gateway.storage import db
from receiver import Behaviour

pytestmark = pytest.mark.engines

SHORT_SCHEDULE = [0.2, 0.2]
SHORT_PROBE = 2.0  # seconds to the first probe: still ten times the schedule, a fifth of the default
DOWN = Behaviour(status=502, body=b"redeploying")
WATCHED = "endpoint.recovered,endpoint.disabled,delivery.failed"


# Meta traffic only: the first message of a customer also makes a contact.created.
MESSAGES = "message.received"


def sections_for(tmp_path, redis_url, database: str, **delivery_changes) -> dict:
    sections = instance_sections(tmp_path, redis_url, database)
    sections["delivery"].update(retry_schedule=SHORT_SCHEDULE, **delivery_changes)
    return sections


@pytest.fixture
def app(request, tmp_path, redis_url, storage_database):
    """The shared `app`, on the test's engine, with a retry schedule that is over in 0.4 s (and
    `delivery` changes given by indirect parametrization)."""
    sections = sections_for(tmp_path, redis_url, storage_database, **getattr(request, "param", {}))
    application = create_app({"TESTING": True, "config_path": str(tmp_path / "config.toml"), **sections})
    doorbell.redis_connection(application.config["WAHOOK"]).flushall()
    yield application
    db.close_all()


@pytest.fixture
def outage(make_receiver, add_endpoint):
    """A receiver answering 502 with its endpoint, and another whose endpoint watches the
    operational events: (down, watch, the down one's endpoint)."""
    down, watch = make_receiver(), make_receiver()
    down.behaviour = DOWN
    endpoint = add_endpoint(down.url, events=MESSAGES)
    add_endpoint(watch.url, events=WATCHED)
    return down, watch, endpoint


def answered(receiver, status: int = 200) -> list[dict]:
    """The bodies a receiver answered with `status`, in arrival order."""
    return [json.loads(r.body) for r in list(receiver.requests) if r.status == status]


def count(conn, endpoint_id: int, state: str) -> int:
    sql = "SELECT count(*) FROM deliveries WHERE endpoint_id = ? AND state = ?"
    return conn.execute(sql, (endpoint_id, state)).fetchone()[0]


def operational(watch, name: str) -> list[dict]:
    return [body for body in answered(watch) if body["event"] == name]


def fail_through_the_schedule(app, conn, endpoint_id: int) -> None:
    for _ in range(len(SHORT_SCHEDULE) + 1):
        wait_until(lambda: attempt_due(app, conn, endpoint_id), timeout=5, message="a due attempt")
    assert count(conn, endpoint_id, "failed") == 1


def test_each_engine_stores_the_outage_it_is_named_for(app, conn, engine):
    assert db.engine(conn) == engine
    assert db.is_postgres(app.config["WAHOOK"].database) == (engine == "postgresql")


# --- recovery ---------------------------------------------------------------------------------


def test_a_receiver_down_past_the_whole_schedule_gets_every_event_by_itself_once_oldest_first(
    conn, post_webhook, outage, running_worker, monkeypatch
):
    monkeypatch.setattr(outages, "PROBE_FIRST", SHORT_PROBE)
    down, watch, endpoint = outage
    wamids = [f"wamid.OUTAGE{n}" for n in range(5)]
    for wamid in wamids:
        assert post_webhook(text_message(wamid)).status_code == 200
    wait_until(lambda: count(conn, endpoint["id"], "failed") == 5, timeout=20, message="all 5 failed")
    assert outages.endpoint_state(endpoints.get(conn, endpoint["id"])) == "failing"

    down.behaviour = Behaviour(status=200)  # back; no new traffic, nobody clicks
    wait_until(lambda: len(answered(down)) == 5, timeout=30, message="every event redelivered")
    time.sleep(1.5)  # and nothing more comes
    got = answered(down)
    assert [body["message_id"] for body in got] == wamids  # once each, oldest first
    # It was noticed by a probe, PROBE_FIRST after the last failure, not by a retry.
    last_failure = max(r.at for r in down.requests if r.status == 502)
    first_ok = min(r.at for r in down.requests if r.status == 200)
    assert first_ok - last_failure >= outages.PROBE_FIRST - 0.5

    (recovered,) = wait_until(lambda: operational(watch, "endpoint.recovered"), message="endpoint.recovered")
    assert recovered["endpoint_id"] == endpoint["id"] and recovered["url"] == down.url
    assert recovered["redelivering"] == 4  # the probe that found it up was the fifth
    assert recovered["failing_since"].endswith("Z")
    failed = operational(watch, "delivery.failed")
    assert sorted(f["failed_event_id"] for f in failed) == sorted(body["event_id"] for body in got)
    assert {(f["endpoint_id"], f["failed_event"], f["attempts"], f["last_error"]) for f in failed} == {
        (endpoint["id"], "message.received", 3, "HTTP 502")
    }
    # Operational events never go to the endpoint they are about.
    assert {body["event"] for body in answered(down, 200) + answered(down, 502)} == {"message.received"}
    wait_until(
        lambda: outages.endpoint_state(endpoints.get(conn, endpoint["id"])) == "healthy",
        message="healthy once the recovery is over",
    )
    assert count(conn, endpoint["id"], "failed") == 0


def test_recovery_goes_on_after_the_worker_is_killed_half_way(
    tmp_path, redis_url, storage_database, conn, post_webhook, make_receiver, add_endpoint
):
    processes = Processes(tmp_path, sections_for(tmp_path, redis_url, storage_database))
    processes.env["WAHOOK_PROBE_FIRST"] = str(SHORT_PROBE)
    down = make_receiver()
    down.behaviour = DOWN
    endpoint = add_endpoint(down.url, events=MESSAGES)
    try:
        first = processes.start_worker()
        wamids = [f"wamid.KILL{n:02}" for n in range(60)]
        for wamid in wamids:
            assert post_webhook(text_message(wamid)).status_code == 200
        wait_until(lambda: count(conn, endpoint["id"], "failed") == 60, timeout=60, message="all 60 failed")
        down.behaviour = Behaviour(status=200)
        wait_until(lambda: len(answered(down)) >= 15, timeout=30, message="the recovery under way")
        # 20 a second: the recovery is still going when the worker dies.
        assert outages.endpoint_state(endpoints.get(conn, endpoint["id"])) == "recovering"
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        at_kill = len(answered(down))
        assert at_kill < 60
        processes.start_worker()
        wait_until(
            lambda: {b["message_id"] for b in answered(down)} == set(wamids),
            timeout=60,
            message="every event after the kill",
        )
        wait_until(lambda: count(conn, endpoint["id"], "delivered") == 60, timeout=30, message="all recorded")
    finally:
        processes.stop_all()
    got = [body["message_id"] for body in answered(down)]
    # Oldest first until the kill; a batch sent but not yet recorded when the worker died may
    # come again (at least once), nothing else does.
    assert got[:at_kill] == wamids[:at_kill]
    assert len(got) - len(set(got)) <= outages.RECOVERY_PER_SECOND


def test_a_flapping_receiver_gets_no_duplicates_and_no_storm_of_events(
    conn, post_webhook, make_receiver, add_endpoint, running_worker
):
    flappy, watch = make_receiver(), make_receiver()
    endpoint = add_endpoint(flappy.url, events=MESSAGES)
    add_endpoint(watch.url, events=WATCHED)
    stop = threading.Event()
    ups = []

    def flap() -> None:  # up 1 s, down 1 s
        up = True
        while not stop.wait(1.0):
            up = not up
            flappy.behaviour = Behaviour(status=200) if up else DOWN
            ups.append(up)

    flapper = threading.Thread(target=flap)
    flapper.start()
    wamids = [f"wamid.FLAP{n:02}" for n in range(40)]
    try:
        for wamid in wamids:
            assert post_webhook(text_message(wamid)).status_code == 200
            time.sleep(0.2)
    finally:
        stop.set()
        flapper.join()
    flappy.behaviour = Behaviour(status=200)
    wait_until(
        lambda: count(conn, endpoint["id"], "delivered") == 40, timeout=40, message="everything delivered at last"
    )
    assert any(r.status == 502 for r in flappy.requests)  # it did flap under the traffic
    got = [body["message_id"] for body in answered(flappy)]
    assert sorted(got) == sorted(wamids)  # each answered 2xx exactly once
    failed = operational(watch, "delivery.failed")
    assert len(failed) == len({f["failed_event_id"] for f in failed}) <= 40  # once per delivery at most
    assert len(operational(watch, "endpoint.recovered")) <= ups.count(True) + 1  # once per comeback at most
    assert not operational(watch, "endpoint.disabled")


# --- probes -----------------------------------------------------------------------------------


def test_probes_wait_10_s_after_the_last_failure_then_double_up_to_10_minutes(
    app, conn, post_webhook, receiver, add_endpoint
):
    config = app.config["WAHOOK"]
    receiver.behaviour = DOWN
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message())
    fail_through_the_schedule(app, conn, endpoint["id"])
    row = endpoints.get(conn, endpoint["id"])
    last_failure = receiver.requests[-1].at
    assert row["failing_since"] == pytest.approx(receiver.requests[0].at, abs=0.5)
    assert row["next_probe_at"] == pytest.approx(last_failure + 10, abs=0.5)
    outages.sweep(conn, config)
    assert count(conn, endpoint["id"], "failed") == 1  # not yet due: no probe
    intervals = []
    for _ in range(8):
        conn.execute("UPDATE endpoints SET next_probe_at = ? WHERE id = ?", (time.time() - 1, endpoint["id"]))
        outages.sweep(conn, config)  # the probe: the oldest failed delivery, due now
        assert count(conn, endpoint["id"], "retrying") == 1
        (result,) = attempt_due(app, conn, endpoint["id"])
        assert not result[1].ok and count(conn, endpoint["id"], "failed") == 1  # no new retry cycle
        row = endpoints.get(conn, endpoint["id"])
        intervals.append(row["probe_interval"])
        # The next probe is that far from the one just made (a busy machine may take a moment since).
        assert row["probe_interval"] - 5 < row["next_probe_at"] - time.time() <= row["probe_interval"]
    assert intervals == [20, 40, 80, 160, 320, 600, 600, 600]
    assert len(receiver.requests) == 3 + 8
    receiver.behaviour = Behaviour(status=200)
    conn.execute("UPDATE endpoints SET next_probe_at = ? WHERE id = ?", (time.time() - 1, endpoint["id"]))
    outages.sweep(conn, config)
    (result,) = attempt_due(app, conn, endpoint["id"])
    assert result[1].ok and count(conn, endpoint["id"], "delivered") == 1
    assert outages.endpoint_state(endpoints.get(conn, endpoint["id"])) == "healthy"


def test_no_probe_while_deliveries_are_on_their_way(app, conn, post_webhook, receiver, add_endpoint):
    receiver.behaviour = DOWN
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    post_webhook(text_message("wamid.FIRST"))
    fail_through_the_schedule(app, conn, endpoint["id"])
    post_webhook(text_message("wamid.SECOND"))  # pending: its own attempts tell whether it is back
    conn.execute("UPDATE endpoints SET next_probe_at = ? WHERE id = ?", (time.time() - 1, endpoint["id"]))
    outages.sweep(conn, app.config["WAHOOK"])
    assert count(conn, endpoint["id"], "failed") == 1 and count(conn, endpoint["id"], "pending") == 1
    assert endpoints.get(conn, endpoint["id"])["next_probe_at"] > time.time() + 5


@pytest.mark.parametrize("app", [{"auto_recover": False}], indirect=True)
def test_without_auto_recover_failed_deliveries_wait_for_a_click(
    app, conn, post_webhook, receiver, add_endpoint, make_receiver
):
    watch = make_receiver()
    receiver.behaviour = DOWN
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    add_endpoint(watch.url, events=WATCHED)
    post_webhook(text_message("wamid.LOST"))
    fail_through_the_schedule(app, conn, endpoint["id"])
    conn.execute("UPDATE endpoints SET next_probe_at = ? WHERE id = ?", (time.time() - 1, endpoint["id"]))
    outages.sweep(conn, app.config["WAHOOK"])
    assert count(conn, endpoint["id"], "failed") == 1  # no probe
    receiver.behaviour = Behaviour(status=200)
    post_webhook(text_message("wamid.NEW"))
    attempt_due(app, conn, endpoint["id"])
    assert count(conn, endpoint["id"], "failed") == 1 and count(conn, endpoint["id"], "delivered") == 1
    (body,) = [json.loads(r["body"]) for r in conn.execute("SELECT body FROM events WHERE name = 'endpoint.recovered'")]
    assert body["redelivering"] == 0 and body["endpoint_id"] == endpoint["id"]


# --- disabling and operational events ----------------------------------------------------------


@pytest.mark.parametrize("app", [{"disable_after_hours": 0.0005}], indirect=True)  # 1.8 s
def test_an_endpoint_failing_for_disable_after_hours_is_disabled_with_the_reason(
    app, conn, post_webhook, outage, running_worker, runner
):
    down, watch, endpoint = outage
    post_webhook(text_message())
    row = wait_until(
        lambda: (r := endpoints.get(conn, endpoint["id"]))["enabled"] == 0 and r, timeout=20, message="disabled"
    )
    assert row["disabled_reason"].startswith("every attempt failed for 0.0005 hours (failing since 20")
    (event,) = wait_until(lambda: operational(watch, "endpoint.disabled"), message="endpoint.disabled")
    assert event == {**event, "endpoint_id": endpoint["id"], "url": down.url, "reason": row["disabled_reason"]}
    listed = json.loads(runner.invoke(args=["endpoint", "list"]).output)
    assert listed[0]["enabled"] is False and listed[0]["disabled_reason"] == row["disabled_reason"]
    time.sleep(1.5)
    assert len(operational(watch, "endpoint.disabled")) == 1


def test_endpoint_disabled_goes_out_for_a_410_and_for_the_admin_once_each(
    conn, post_webhook, make_receiver, add_endpoint, running_worker
):
    gone, other, watch = make_receiver(), make_receiver(), make_receiver()
    gone.behaviour = Behaviour(status=410)
    first = add_endpoint(gone.url, events=MESSAGES)
    second = add_endpoint(other.url, events=MESSAGES)
    add_endpoint(watch.url, events="endpoint.disabled")
    post_webhook(text_message())
    (event,) = wait_until(lambda: operational(watch, "endpoint.disabled"), message="endpoint.disabled for the 410")
    assert event["endpoint_id"] == first["id"] and "410 Gone" in event["reason"]
    endpoints.disable(conn, second["id"], "by the admin")
    endpoints.disable(conn, second["id"], "by the admin")  # already disabled: nothing new
    wait_until(lambda: len(operational(watch, "endpoint.disabled")) == 2, message="endpoint.disabled for the admin")
    time.sleep(1)
    events = operational(watch, "endpoint.disabled")
    assert len(events) == 2 and events[1] == {**events[1], "endpoint_id": second["id"], "reason": "by the admin"}
    # The endpoint an event is about never gets it; an empty filter does not select it.
    assert all(json.loads(r.body)["event"] == "message.received" for r in gone.requests + other.requests)


def test_delivery_failed_once_per_delivery_and_again_only_for_a_new_cycle(
    app, conn, post_webhook, receiver, add_endpoint, make_receiver
):
    everything, watch = make_receiver(), make_receiver()
    receiver.behaviour = DOWN
    endpoint = add_endpoint(receiver.url, events=MESSAGES)
    quiet = add_endpoint(everything.url)  # an empty filter: no operational events
    watcher = add_endpoint(watch.url, events="delivery.failed")
    post_webhook(text_message("wamid.ONCE"))
    attempt_due(app, conn, quiet["id"])
    fail_through_the_schedule(app, conn, endpoint["id"])

    def failed_events() -> list[dict]:
        return [json.loads(r["body"]) for r in conn.execute("SELECT body FROM events WHERE name = 'delivery.failed'")]

    (first,) = failed_events()
    assert first["endpoint_id"] == endpoint["id"] and first["attempts"] == 3 and first["last_error"] == "HTTP 502"
    names = {r[0]: r[1] for r in conn.execute("SELECT endpoint_id, count(*) FROM deliveries GROUP BY endpoint_id")}
    # Only the watcher gets it; the empty filter got the message and its contact.created.
    assert names == {endpoint["id"]: 1, quiet["id"]: 2, watcher["id"]: 1}
    for _ in range(2):  # probes fail again: no new delivery.failed
        conn.execute("UPDATE endpoints SET next_probe_at = ? WHERE id = ?", (time.time() - 1, endpoint["id"]))
        outages.sweep(conn, app.config["WAHOOK"])
        attempt_due(app, conn, endpoint["id"])
    assert len(failed_events()) == 1
    assert delivery_states.redeliver(conn, endpoint_id=endpoint["id"]) == 1  # by hand: a new cycle
    fail_through_the_schedule(app, conn, endpoint["id"])
    assert len(failed_events()) == 2


def test_operational_events_never_carry_the_endpoints_query_or_credentials(
    app, conn, client, post_webhook, make_receiver, add_endpoint, make_key
):
    """Receiver URLs are often capability URLs (`…/hook?token=…`). Operational events reach
    `read` API keys and other endpoints, so they name the endpoint by id and by its URL without
    query string and fragment (SPEC 3), in what is sent and in what the API hands out."""
    down = make_receiver()
    down.behaviour = DOWN
    watch = make_receiver()
    endpoint = add_endpoint(f"{down.url}?token=capability-sekrit#part", events=MESSAGES)
    watcher = add_endpoint(watch.url, events=WATCHED)
    assert post_webhook(text_message()).status_code == 200
    fail_through_the_schedule(app, conn, endpoint["id"])
    endpoints.disable(conn, endpoint["id"], "disabled by the admin")
    wait_until(
        lambda: attempt_due(app, conn, watcher["id"]) is not None and len(answered(watch)) == 2,
        message="both operational events",
    )

    reader = make_key("read")
    pulled = client.get("/api/v1/events?limit=100", headers={"Authorization": f"Bearer {reader}"})
    assert pulled.status_code == 200
    assert "capability-sekrit" not in pulled.text and "#part" not in pulled.text
    sent = [json.loads(r.body) for r in watch.requests]
    assert "capability-sekrit" not in json.dumps(sent)
    for body in [*sent, *(e for e in pulled.json["events"] if e["event"] in WATCHED.split(","))]:
        assert body["endpoint_id"] == endpoint["id"]
        assert body["url"] == down.url


def test_operational_events_stored_before_lose_the_endpoints_query_on_upgrade(engine, tmp_path, request):
    # An empty database (storage_database's PostgreSQL one comes migrated to the newest version).
    empty = request.getfixturevalue("postgres_server").new_database() if engine == "postgresql" else tmp_path / "w.db"
    conn = db.connect(empty)
    db.migrate(conn, [m for m in db.migrations(db.engine(conn)) if m[0] < 11])
    stored = {
        "evt_1": ("delivery.failed", {"endpoint_id": 1, "url": "https://crm.example/hook?token=sekrit", "attempts": 3}),
        "evt_2": ("endpoint.disabled", {"endpoint_id": 1, "url": "https://crm.example/h#sekrit?x", "reason": "410"}),
        "evt_3": ("endpoint.recovered", {"endpoint_id": 2, "url": "https://crm.example/plain", "redelivering": 0}),
        "evt_4": ("message.received", {"text": "see https://x.example/?token=mine"}),
    }
    for event_id, (name, body) in stored.items():
        conn.execute(
            "INSERT INTO events (event_id, name, created_at, body) VALUES (?, ?, 1, ?)",
            (event_id, name, json.dumps({"event": name, **body})),
        )
    db.migrate(conn)
    found = {row[0]: json.loads(row[1]) for row in conn.execute("SELECT event_id, body FROM events")}
    assert found["evt_1"] == {
        "event": "delivery.failed",
        "endpoint_id": 1,
        "url": "https://crm.example/hook",
        "attempts": 3,
    }
    assert found["evt_2"]["url"] == "https://crm.example/h" and found["evt_2"]["reason"] == "410"
    assert found["evt_3"]["url"] == "https://crm.example/plain"
    assert found["evt_4"]["text"] == "see https://x.example/?token=mine"  # a customer's words are theirs
    conn.close()
