"""GET /metrics: the series SPEC 9 names, read from the database, agreeing across processes."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

import worker
from app import create_app
from conftest import ROOT, element, instance_sections, post_form, sign, text_message, wait_until
from gateway.intake import event_names
from gateway.ops import metrics
from gateway.storage import db
from receiver import Behaviour

pytestmark = pytest.mark.engines


def samples(text: str) -> dict[tuple, float]:
    """Every sample of a scrape, keyed by (name, sorted labels), parsed by Prometheus' own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def assert_totals_match_a_recount(conn) -> None:
    """The deliveries gauge the triggers keep equals counting the rows now (summed over the
    rows PostgreSQL keeps per database session)."""
    summed = "SELECT label, label2, sum(value) FROM metric_totals WHERE kind = 'deliveries' GROUP BY label, label2"
    kept = {(row[0], row[1]): row[2] for row in conn.execute(summed) if row[2]}
    counted = {
        (str(row[0]), row[1]): row[2]
        for row in conn.execute("SELECT coalesce(endpoint_id, 0), state, count(*) FROM deliveries GROUP BY 1, 2")
    }
    assert kept == counted


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return samples(response.get_data(as_text=True))


def test_known_traffic_with_two_web_processes(processes, storage_database, add_endpoint, make_receiver):
    """Post N, deliver N to one endpoint, fail N at the other after every retry, with two web
    processes and two workers: the counters say so, whichever process answers the scrape."""
    good, bad = make_receiver(), make_receiver()
    bad.behaviour = Behaviour(status=500)
    a = add_endpoint(good.url, events="message.received")
    b = add_endpoint(bad.url, events="message.received")
    base = processes.start_web(workers=2)
    n = 12
    with requests.Session() as session:
        for i in range(n):
            raw = json.dumps(text_message(wamid=f"wamid.metrics{i}")).encode()
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
            assert session.post(base + "/api/webhooks/whatsapp", data=raw, headers=headers, timeout=10).ok
        for _ in range(3):
            assert session.post(base + "/api/webhooks/whatsapp", data=b"{}", timeout=10).status_code == 401
        before = samples(session.get(base + "/metrics", timeout=10).text)
        assert value(before, "wahook_deliveries", endpoint=str(a["id"]), state="pending") == n
        assert value(before, "wahook_oldest_pending_seconds", endpoint=str(a["id"])) > 0
        processes.start_worker()
        processes.start_worker()  # two workers share the work; the totals are the database's

        def settled():
            found = samples(session.get(base + "/metrics", timeout=10).text)
            return found if value(found, "wahook_deliveries", endpoint=str(b["id"]), state="failed") == n else None

        found = wait_until(settled, timeout=60, interval=0.3, message="every delivery to the failing endpoint failed")
        # Each scrape may be answered by either web process: they must agree.
        assert samples(session.get(base + "/metrics", timeout=10).text) == found

    assert value(found, "wahook_webhooks_received_total", outcome="received") == n
    assert value(found, "wahook_webhooks_received_total", outcome="rejected") == 3
    assert value(found, "wahook_events_total", event="message.received") == n
    assert value(found, "wahook_delivery_attempts_total", endpoint=str(a["id"]), result="success") == n
    assert value(found, "wahook_delivery_attempts_total", endpoint=str(a["id"]), result="failure") == 0
    # One attempt and two retries each (the tests' retry schedule has two delays).
    assert value(found, "wahook_delivery_attempts_total", endpoint=str(b["id"]), result="failure") == 3 * n
    assert value(found, "wahook_deliveries", endpoint=str(a["id"]), state="delivered") == n
    assert value(found, "wahook_deliveries", endpoint=str(a["id"]), state="pending") == 0
    conn = db.connect(storage_database)
    assert_totals_match_a_recount(conn)
    conn.close()
    assert value(found, "wahook_oldest_pending_seconds", endpoint=str(a["id"])) == 0
    assert abs(value(found, "wahook_last_meta_webhook_timestamp_seconds") - time.time()) < 120
    assert len(good.requests) == n


def test_endpoint_label_is_the_id_never_the_url(client, add_endpoint, post_webhook):
    add_endpoint("http://127.0.0.1:9/hook?token=sekrit-in-the-url")
    assert post_webhook(text_message()).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert "sekrit" not in text and "127.0.0.1" not in text
    assert 'endpoint="1"' in text


def test_counters_survive_pruning_and_deliveries_follow_their_rows(client, conn, add_endpoint, post_webhook):
    """Pruning old history takes nothing from a counter; the deliveries gauge shows what is stored."""
    endpoint = add_endpoint("http://127.0.0.1:9/hook", events="message.received")
    for i in range(3):
        assert post_webhook(text_message(wamid=f"wamid.prune{i}")).status_code == 200
    conn.execute(
        "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, ok) SELECT id, endpoint_id, 1, 5, 0"
        " FROM deliveries"
    )
    before = scrape(client)
    assert value(before, "wahook_deliveries", endpoint=str(endpoint["id"]), state="pending") == 3
    conn.execute("UPDATE webhooks SET received_at = 1")
    worker.prune(conn, retention_days=1)
    after = scrape(client)
    assert value(after, "wahook_webhooks_received_total", outcome="received") == 3
    assert value(after, "wahook_events_total", event="message.received") == 3
    assert value(after, "wahook_delivery_attempts_total", endpoint=str(endpoint["id"]), result="failure") == 3
    assert value(after, "wahook_deliveries", endpoint=str(endpoint["id"]), state="pending") == 0
    assert_totals_match_a_recount(conn)
    assert ("wahook_last_meta_webhook_timestamp_seconds", ()) not in after


def test_a_deleted_endpoint_leaves_the_gauges(client, conn, runner, add_endpoint, post_webhook):
    endpoint = add_endpoint("http://127.0.0.1:9/hook")
    other = add_endpoint("http://127.0.0.1:9/other")
    assert post_webhook(text_message()).status_code == 200
    conn.execute("UPDATE deliveries SET state = 'failed' WHERE endpoint_id = ?", (other["id"],))
    assert runner.invoke(args=["deliveries", "retry"]).exit_code == 0  # failed -> pending again
    assert_totals_match_a_recount(conn)
    assert runner.invoke(args=["endpoint", "remove", str(endpoint["id"])]).exit_code == 0
    assert runner.invoke(args=["endpoint", "remove", str(other["id"])]).exit_code == 0
    assert_totals_match_a_recount(conn)  # failed, then moved to no endpoint
    found = scrape(client)
    assert not [key for key in found if key[0] == "wahook_deliveries"]
    assert value(found, "wahook_events_total", event="message.received") == 1


def test_failed_deliveries_agree_with_the_monitor_before_and_after_a_dismissal(admin, conn, add_endpoint, post_webhook):
    """The monitor counts failures of a deleted endpoint apart until they are dismissed;
    /metrics never counts them as failed, dismissed or not."""
    kept = add_endpoint("http://127.0.0.1:9/kept", events="message.received")
    gone = add_endpoint("http://127.0.0.1:9/gone", events="message.received")
    assert post_webhook(text_message()).status_code == 200
    conn.execute("UPDATE deliveries SET state = 'failed', attempts = 3, last_error = 'HTTP 500'")
    post_form(admin, f"/settings/endpoints/{gone['id']}/delete")

    def failed_in_metrics() -> float:
        found = scrape(admin)
        return sum(
            v for (name, labels), v in found.items() if name == "wahook_deliveries" and ("state", "failed") in labels
        )

    assert element(admin.get("/monitor").text, "failed-total") == "1"
    assert failed_in_metrics() == 1
    assert value(scrape(admin), "wahook_deliveries", endpoint=str(kept["id"]), state="failed") == 1
    assert "dismissed" in post_form(admin, "/monitor/dismiss-orphaned", follow_redirects=True).text
    assert conn.execute("SELECT count(*) FROM deliveries WHERE dismissed_at IS NOT NULL").fetchone()[0] == 1
    assert failed_in_metrics() == 1


def test_oldest_pending_age(client, conn, add_endpoint, post_webhook):
    endpoint = add_endpoint("http://127.0.0.1:9/hook", events="message.received")
    assert post_webhook(text_message()).status_code == 200
    conn.execute("UPDATE deliveries SET created_at = created_at - 600")
    age = value(scrape(client), "wahook_oldest_pending_seconds", endpoint=str(endpoint["id"]))
    assert 600 <= age < 700


def test_migration_counts_what_was_stored_before_it(storage_database):
    """A database from before the totals existed starts with them equal to its rows."""
    conn = db.connect(storage_database)
    db.migrate(conn, [m for m in db.migrations(db.engine(conn)) if m[0] < 9])
    now = time.time()
    conn.execute("INSERT INTO endpoints (url, secret, created_at, updated_at) VALUES ('u', 's', ?, ?)", (now, now))
    conn.execute("INSERT INTO webhooks (webhook_id, received_at, body) VALUES ('whk_1', ?, ?)", (now, b"\0"))
    conn.execute("INSERT INTO rejections (minute, reason, count) VALUES (1, 'wrong signature', 4)")
    conn.execute("INSERT INTO events (event_id, name, created_at, body) VALUES ('evt_1', 'a.b', ?, '{}')", (now,))
    conn.execute(
        "INSERT INTO deliveries (endpoint_id, endpoint_url, event_id, event_name, message_id, state, next_attempt_at,"
        " created_at, updated_at) VALUES (1, 'u', 1, 'a.b', 'evt_1', 'failed', ?, ?, ?)",
        (now, now, now),
    )
    conn.execute(
        "INSERT INTO attempts (delivery_id, endpoint_id, attempted_at, duration_ms, ok) VALUES (1, 1, ?, 3, 0)", (now,)
    )
    db.migrate(conn)
    totals = {tuple(row[:3]): row[3] for row in conn.execute("SELECT kind, label, label2, value FROM metric_totals")}
    assert totals == {
        ("webhooks", "received", ""): 1,
        ("webhooks", "rejected", ""): 4,
        ("events", "a.b", ""): 1,
        ("attempts", "1", "failure"): 1,
        ("deliveries", "1", "failed"): 1,
    }
    conn.close()


def test_bearer_token(tmp_path, redis_url):
    sections = instance_sections(tmp_path, redis_url)
    sections["admin"]["metrics_token"] = "scrape-token-123"
    client = create_app({"config_path": str(tmp_path / "c.toml"), **sections}).test_client()
    refused = (None, "Bearer wrong", "Bearer scrape-token-12", "Basic scrape-token-123", "scrape-token-123", "Bearer é")
    for header in refused:
        response = client.get("/metrics", headers={"Authorization": header} if header else {})
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "wahook_" not in response.get_data(as_text=True)
    response = client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
    assert response.status_code == 200 and "wahook_webhooks_received_total" in response.get_data(as_text=True)
    db.close_all()


def test_no_login_without_a_token(client):
    response = client.get("/metrics")
    assert response.status_code == 200 and "wahook_workers 0.0" in response.get_data(as_text=True)


def test_alert_rules_parse_and_use_only_series_we_export(client, add_endpoint, post_webhook):
    """deploy/prometheus-alerts.yml is valid YAML with the three alerts, each on series /metrics has."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text(encoding="utf-8"))
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert set(alerts) == {"WahookDeliveriesWaiting", "WahookEndpointFailing", "WahookMetaSilent"}
    add_endpoint("http://127.0.0.1:9/hook")
    assert post_webhook(text_message()).status_code == 200
    exported = {name for name, _ in scrape(client)}
    for rule in alerts.values():
        assert {"expr", "labels", "annotations"} <= rule.keys()
        used = set(re.findall(r"wahook_\w+", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)


def test_published_names_cannot_grow_the_metrics_without_bound(client, make_key, post_webhook):
    """A publish key inventing names: past a bound they are counted together as event="other",
    while wahook's own names (Meta's, the gateway's) keep their series."""
    publisher = make_key("publish")
    headers = {"Authorization": f"Bearer {publisher}"}
    invented = metrics.EVENT_SERIES_MAX + 50
    for n in range(invented):
        response = client.post("/api/v1/events", json={"event": f"made.up{n}", "data": {}}, headers=headers)
        assert response.status_code == 202
    assert post_webhook(text_message()).status_code == 200
    found = scrape(client)
    series = {dict(labels)["event"]: v for (name, labels), v in found.items() if name == "wahook_events_total"}
    assert len([name for name in series if name.startswith("made.up")]) <= metrics.EVENT_SERIES_MAX
    assert series["message.received"] == 1 and series["contact.created"] == 1
    assert sum(v for name, v in series.items() if name.startswith("made.up")) + series["other"] == invented
    assert series["other"] >= 50
    # A name that has its series keeps counting there.
    assert client.post("/api/v1/events", json={"event": "made.up0", "data": {}}, headers=headers).status_code == 202
    assert value(scrape(client), "wahook_events_total", event="made.up0") == 2


def test_the_bound_exempts_every_name_wahook_makes_on_both_engines():
    """The triggers write the bound and wahook's own prefixes out: they must match the code's."""
    for engine_name in ("sqlite", "postgresql"):
        text = dict(db.migrations(engine_name))[13]
        trigger = text[text.index("metric_event") :]
        assert f"< {metrics.EVENT_SERIES_MAX}" in trigger
        for prefix in event_names.RESERVED_PREFIXES:
            assert f"'{prefix.rstrip('.')}'" in trigger, prefix
