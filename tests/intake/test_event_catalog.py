"""event_catalog.search_columns: what an event's row is searched and routed by, written by the
intake, equal to what the database computed from the stored JSON before migration 14."""

from __future__ import annotations

import json

import pytest

from gateway.intake import meta_parser, samples
from gateway.intake.event_catalog import search_columns
from gateway.storage import db

pytestmark = pytest.mark.engines

COLUMNS = "customer, customer_user_id, message_id, waba_id, phone_number_id"
# Bodies no sample draws: a customer given as a number, empty strings passed over, an echo's
# customer is the one it went to, and text that only escapes can keep.
ODD_BODIES = [
    ("message.received", {"from": 447700900123, "message_id": "", "waba_id": "W1"}),
    ("message.received", {"recipient": "", "from": "", "wa_id": "4477", "user_id": "US.1"}),
    ("message.echo", {"from": "15550783881", "to": "4477009", "to_user_id": "US.2", "phone_number_id": "P1"}),
    ("campaign.sent", {"note": "no customer here"}),
    ("message.received", {"from": "emoji \\ud83d cut", "message_id": "wamid.X"}),
]


def drawn_events() -> list[tuple[str, dict]]:
    """(name, body) of every event the parser draws from every sample kind, and the odd ones."""
    found = [
        (event.name, event.body) for kind in samples.KINDS for event in meta_parser.parse(samples.sample(kind), 1.0)
    ]
    return found + ODD_BODIES


def test_every_sample_gets_the_columns_migration_14_gives_events_stored_before(engine, tmp_path, request):
    empty = request.getfixturevalue("postgres_server").new_database() if engine == "postgresql" else tmp_path / "w.db"
    conn = db.connect(empty)
    db.migrate(conn, [m for m in db.migrations(db.engine(conn)) if m[0] < 14])
    events = drawn_events()
    with db.transaction(conn):
        for n, (name, body) in enumerate(events):
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
            conn.execute(
                "INSERT INTO events (event_id, name, created_at, body) VALUES (?, ?, 1, ?)", (f"evt_{n}", name, text)
            )
    db.migrate(conn)
    stored = {row[0]: tuple(row[1:]) for row in conn.execute(f"SELECT event_id, {COLUMNS} FROM events")}  # noqa: S608
    conn.close()
    assert len(stored) == len(events) > 40
    for n, (name, body) in enumerate(events):
        assert search_columns(name, json.loads(json.dumps(body))) == stored[f"evt_{n}"], (name, body)
    assert any(columns[0] for columns in stored.values()) and any(columns[1] for columns in stored.values())


def test_the_customer_is_the_first_of_its_names_with_a_value():
    assert search_columns("message.received", {"recipient": "", "from": "4477", "wa_id": "1"})[0] == "4477"
    assert search_columns("message.echo", {"from": "business", "to": "4477"})[0] == "4477"
    assert search_columns("message.received", {"from": "business", "to": "4477"})[0] == "business"
    assert search_columns("x.y", {})[0:3] == (None, None, None)
