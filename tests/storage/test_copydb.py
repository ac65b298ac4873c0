"""copy-db URL: a SQLite install's rows, byte for byte, into an empty PostgreSQL database that
then runs the same gateway; a non-empty or unreachable target is refused with a JSON error."""

from __future__ import annotations

import json

import pytest

from app import create_app
from conftest import cli_json, instance_sections, sign, text_message, wait_until
from gateway.storage import db


def rows(conn, table: str, columns: list[str]) -> list[tuple]:
    """The rows of `table` in `columns`: those SQLite has (PostgreSQL keeps a few of its own,
    such as the writing transaction's id, for reading in commit order)."""
    listed = ", ".join(columns)
    return sorted((tuple(r) for r in conn.execute(f"SELECT {listed} FROM {table}")), key=repr)  # noqa: S608


def test_copy_db_moves_an_install_to_postgresql(
    app, runner, conn, post_webhook, add_endpoint, receiver, running_worker, postgres_server, tmp_path, redis_url
):
    add_endpoint(receiver.url, events="message.received")
    add_endpoint("http://127.0.0.1:9/gone", format="meta")  # nobody listens: attempts fail
    for i in range(3):
        assert post_webhook(text_message(wamid=f"wamid.copy{i}", text="café ☕")).status_code == 200
    assert post_webhook(b"{not json", secret="wrong").status_code == 401  # a counted rejection
    receiver.wait_for(3)
    # Every meta delivery tried once (none still pending), so the copy's only pending ones are new.
    failed_tries = "SELECT count(DISTINCT delivery_id) FROM attempts WHERE ok = 0"
    wait_until(lambda: conn.execute(failed_tries).fetchone()[0] >= 3)
    running_worker.stop(grace=0.5)
    url = postgres_server.new_database()

    code, out = cli_json(runner, "copy-db", url)

    assert code == 0, out
    target = db.connect(url)
    assert out["copied"]["webhooks"] == 3 and out["copied"]["deliveries"] == 6
    for table in db.tables(conn):
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        assert rows(target, table, columns) == rows(conn, table, columns), table  # metric_totals too
    # The same gateway runs on the copy: new rows get ids after the copied ones.
    moved = create_app({"config_path": str(tmp_path / "pg.toml"), **instance_sections(tmp_path, redis_url, url)})
    raw = json.dumps(text_message(wamid="wamid.after")).encode()
    answer = moved.test_client().post("/api/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw)})
    assert answer.status_code == 200
    assert target.execute("SELECT max(id) FROM webhooks").fetchone()[0] == 4
    assert target.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchone()[0] == 2

    code, out = cli_json(runner, "copy-db", url)  # twice: the target has rows now
    assert code == 1 and out["field"] == "url" and "not empty" in out["error"]
    assert target.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 4
    db.close_all()


def test_copy_db_refuses_what_it_cannot_copy_into(runner, postgres_server):
    for url, said in [
        ("mysql://u:p@host/db", "postgresql:// URL"),
        ("/tmp/other.db", "postgresql:// URL"),
        ("postgresql://wahook:hunter2-pw@127.0.0.1:1/none", "cannot connect to PostgreSQL"),
    ]:
        code, out = cli_json(runner, "copy-db", url)
        assert code == 1 and out["field"] == "url" and said in out["error"], out
        assert "hunter2-pw" not in json.dumps(out)


@pytest.mark.engines
def test_copy_db_from_a_postgresql_install_is_refused(app, runner, engine):
    code, out = cli_json(runner, "copy-db", "postgresql://u@/x?host=/nonexistent")
    assert code == 1
    assert ("already PostgreSQL" in out["error"]) == (engine == "postgresql")
