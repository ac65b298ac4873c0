"""Command line: `./wahook endpoint|deliveries|apikey|simulate|listen|backup ...` (the same as
`flask --app app ...`).

Every command prints JSON on stdout, so it can be piped into jq or a script. A refused
value prints {"error": ..., "field": ...} and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import requests
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from gateway import runstate
from gateway.api import api_keys, listen
from gateway.delivery import delivery_states, doorbell, endpoints, send
from gateway.intake import samples, webhook
from gateway.storage import backup, copydb, pg
from gateway.storage.db import get_db


def emit(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def refuse(message: str, field: str | None = None) -> NoReturn:
    emit({"error": message, **({"field": field} if field else {})})
    sys.exit(1)


def config():
    return current_app.config["WAHOOK"]


def drift_warning() -> str | None:
    """When the running wahook still uses delivery rules the config file no longer gives, say
    so on stderr (this command read the file; the processes that deliver did not) and return it."""
    warning = runstate.running_delivery_drift(config())
    if warning:
        click.echo(f"warning: {warning}", err=True)
    return warning


endpoint_cli = AppGroup("endpoint", help="Add, list, remove and test the endpoints events go to.")
deliveries_cli = AppGroup("deliveries", help="Act on deliveries.")
apikey_cli = AppGroup("apikey", help="Make, list and revoke keys for the publish, pull and stream API.")


@endpoint_cli.command("add")
@click.argument("url")
@click.option("--secret", default=None, help="whsec_<base64>; generated when left out.")
@click.option("--events", default="", help="Comma-separated event names; all events when left out.")
@click.option("--format", "format_", type=click.Choice(endpoints.FORMATS), default="events", show_default=True)
@click.option("--bearer-token", default="", help="Sent as Authorization: Bearer <token>.")
@click.option("--accounts", default="", help="Comma-separated WABA and phone number ids; all accounts when left out.")
@click.option(
    "--local",
    is_flag=True,
    help="A receiver on this machine or network: http:// and loopback or private addresses are allowed"
    " for this endpoint alone (never link-local or reserved ones). No restart needed.",
)
def endpoint_add(
    url: str, secret: str | None, events: str, format_: str, bearer_token: str, accounts: str, local: bool
) -> None:
    """Add an endpoint; prints it with its id and full secret (shown this once)."""
    try:
        row = endpoints.create(
            get_db(),
            config(),
            url,
            secret=secret,
            events=events,
            format=format_,
            bearer_token=bearer_token,
            accounts=accounts,
            local=local,
        )
    except endpoints.EndpointError as exc:
        refuse(exc.message, exc.field)
    warning = drift_warning()
    emit({**endpoints.as_dict(row, show_secret=True), **({"warning": warning} if warning else {})})


@endpoint_cli.command("list")
def endpoint_list() -> None:
    """List endpoints, secrets masked."""
    drift_warning()
    emit([endpoints.as_dict(row) for row in endpoints.list_all(get_db())])


@endpoint_cli.command("remove")
@click.argument("endpoint_id", type=int)
def endpoint_remove(endpoint_id: int) -> None:
    """Remove an endpoint; its waiting deliveries end as failed."""
    if not endpoints.remove(get_db(), endpoint_id):
        refuse(f"no endpoint {endpoint_id}")
    emit({"removed": endpoint_id})


@endpoint_cli.command("rotate-secret")
@click.argument("endpoint_id", type=int)
@click.option(
    "--keep-old-hours",
    metavar="HOURS",
    default="24",
    show_default=True,
    help="How long the old secret keeps signing alongside the new one (0 to 720; 0 = stop at once).",
)
def endpoint_rotate_secret(endpoint_id: int, keep_old_hours: str) -> None:
    """Give an endpoint a new secret; prints it with the new secret in full (shown this once)."""
    try:
        hours = endpoints.check_keep_old_hours(keep_old_hours)
        row = endpoints.rotate_secret(get_db(), endpoint_id, hours)
    except endpoints.EndpointError as exc:
        refuse(exc.message, exc.field)
    except KeyError:
        refuse(f"no endpoint {endpoint_id}")
    emit({**endpoints.as_dict(row, show_secret=True), "previous_secret_until": row["previous_secret_until"]})


@endpoint_cli.command("test")
@click.argument("endpoint_id", type=int)
def endpoint_test(endpoint_id: int) -> None:
    """Send a signed webhook.test event now; prints the outcome (exit 1 when it failed)."""
    try:
        outcome = send.send_test(get_db(), config(), endpoint_id)
    except KeyError:
        refuse(f"no endpoint {endpoint_id}")
    warning = drift_warning()
    emit({**outcome.summary(), **({"warning": warning} if warning else {})})
    if not outcome.ok:
        sys.exit(1)


def parse_since(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        refuse(f"--since must be an ISO 8601 time such as 2026-11-20T08:00:00Z, not {value!r}", "since")
    if moment.tzinfo is None:
        refuse("--since needs a time zone, e.g. 2026-11-20T08:00:00Z", "since")
    return moment.timestamp()


@deliveries_cli.command("retry")
@click.option("--failed", is_flag=True, help="Only failed deliveries.")
@click.option("--since", default=None, help="Only deliveries created at or after this ISO 8601 time.")
@click.option("--endpoint", "endpoint_id", type=int, default=None, help="Only deliveries to this endpoint.")
def deliveries_retry(failed: bool, since: str | None, endpoint_id: int | None) -> None:
    """Start a fresh retry cycle. With no option: every failed delivery. With --since or
    --endpoint and without --failed: delivered ones too, to replay what a receiver lost."""
    failed_only = failed or (since is None and endpoint_id is None)
    count = delivery_states.redeliver(
        get_db(),
        failed_only=failed_only,
        since=parse_since(since) if since else None,
        endpoint_id=endpoint_id,
    )
    if count:
        doorbell.wake(config())
    emit({"requeued": count})


def kinds_help(width: int = 72) -> str:
    """The sample kinds, comma-separated, broken only between names (click leaves a \\b block alone)."""
    lines, line = [], ""
    for kind in samples.KINDS:
        piece = f"{kind}, " if kind != samples.KINDS[-1] else kind
        if line and len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += piece
    return "\b\nKINDS:\n" + "\n".join([*lines, line])


def simulate_target() -> tuple[str, dict | None]:
    """Where `make run` serves: WAHOOK_BIND when set, else what run.json says, else 127.0.0.1:8000.

    Returns the intake URL and run.json's content (None when no `make run` is running).
    """
    info = runstate.read_run_info(config().data_dir)
    if os.environ.get("WAHOOK_BIND"):
        base = f"http://{os.environ['WAHOOK_BIND']}"
    elif info is not None:
        base = info["url"]
    else:
        base = "http://127.0.0.1:8000"
    return base.rstrip("/") + webhook.PATH, info


@apikey_cli.command("add")
@click.argument("name")
@click.option("--scopes", default="publish,read", show_default=True, help="Comma-separated: publish, read.")
def apikey_add(name: str, scopes: str) -> None:
    """Make an API key; prints it with the full key, shown this once and stored only as a hash."""
    try:
        made, key = api_keys.create(get_db(), name, scopes)
    except api_keys.ApiKeyError as exc:
        refuse(exc.message, exc.field)
    emit({**made.as_dict(), "key": key})


@apikey_cli.command("list")
def apikey_list() -> None:
    """List API keys (never the keys themselves), with when each was last used."""
    emit([key.as_dict() for key in api_keys.list_all(get_db())])


@apikey_cli.command("revoke")
@click.argument("key_id", type=int)
def apikey_revoke(key_id: int) -> None:
    """Revoke an API key: every request with it is refused (401) from now on."""
    if not api_keys.revoke(get_db(), key_id):
        refuse(f"no API key {key_id}")
    emit({"revoked": key_id})


@click.command("simulate", epilog=kinds_help())
@with_appcontext
@click.argument("kind", type=click.Choice(samples.KINDS), metavar="KIND")
@click.option(
    "--url",
    default=None,
    help="Intake URL; default: WAHOOK_BIND when set, else the address `make run` serves, else 127.0.0.1:8000.",
)
def simulate(kind: str, url: str | None) -> None:
    """Post a signed sample Meta webhook of KIND to the intake, to see events without Meta.

    It is signed with the install's local simulate key (data folder), which the intake always
    accepts and tells apart from Meta, so the monitor's "Last Meta webhook" never counts it (by
    meta.app_secret only when the data folder cannot hold that key).
    """
    secret = current_app.config["WAHOOK_SIMULATE_KEY"] or config()["meta"]["app_secret"]
    target, info = simulate_target()
    url = url or target
    warning = None
    if info and runstate.changed_since(Path(info.get("config") or ""), info.get("config_fingerprint")):
        warning = runstate.stale_config_message(Path(info["config"]))
        click.echo(f"warning: {warning}", err=True)
    raw = json.dumps(samples.sample(kind)).encode()
    signature = webhook.meta_signature(secret, raw)
    try:
        response = requests.post(
            url,
            data=raw,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
            timeout=10,
        )
    except requests.RequestException as exc:
        refuse(f"could not reach {url}: {exc} (is `make run` running?)")
    result = {"kind": kind, "url": url, "status_code": response.status_code, "response": response.text[:200]}
    emit({**result, **({"warning": warning} if warning else {})})
    if response.status_code != 200:
        sys.exit(1)


@click.command("backup")
@with_appcontext
@click.argument("path")
def backup_command(path: str) -> None:
    """Copy the database to PATH (a new file) while everything runs; the copy is opened and
    checked (integrity_check, counts) before it is put at PATH."""
    if config().database_url:
        refuse("backup copies a SQLite database; back PostgreSQL up with pg_dump", "path")
    try:
        written, size, _ = backup.take(config().database_path, path)
    except backup.BackupError as exc:
        refuse(str(exc), "path")
    emit({"path": str(written), "bytes": size})


@click.command("copy-db")
@with_appcontext
@click.argument("url")
def copy_db_command(url: str) -> None:
    """Copy the SQLite database into the empty PostgreSQL database at URL (then set
    storage.database to URL). Stop web processes and workers first: what they write during
    the copy stays behind."""
    if config().database_url:
        refuse("storage.database is already PostgreSQL; copy-db copies a SQLite database", "url")
    try:
        counts = copydb.copy(config().database_path, url)
    except copydb.CopyError as exc:
        refuse(str(exc), "url")
    emit({"copied": counts, "to": pg.redacted(url)})


def init_app(app: Flask) -> None:
    app.cli.add_command(copy_db_command)
    app.cli.add_command(endpoint_cli)
    app.cli.add_command(deliveries_cli)
    app.cli.add_command(apikey_cli)
    app.cli.add_command(simulate)
    app.cli.add_command(backup_command)
    app.cli.add_command(listen.listen)
