"""Endpoints: where events go. Validation, secrets, and the table's reads and writes.

Used by the CLI and the settings page alike, so both refuse the same things with the
same words. URL safety rules live in safe_http; they are checked here when an endpoint
is saved and again by the worker at every send.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from typing import Any

from gateway.delivery import accounts, delivery_states, outbox
from gateway.intake import event_names
from gateway.net import address_rules, safe_http
from gateway.storage import db
from gateway.storage.db import transaction

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
# Standard Webhooks secrets are 24 to 64 random bytes; we generate 32.
SECRET_MIN_BYTES, SECRET_MAX_BYTES = 24, 64
FORMATS = ("events", "meta")
MAX_URL_LENGTH = 2048
MAX_KEEP_OLD_HOURS = 720  # 30 days: an overlap is for switching receivers, not for keeping two secrets
TOKEN_RE = re.compile(r"[\x21-\x7e]{1,512}")  # printable, no spaces or line breaks: it goes in a header


class EndpointError(ValueError):
    """A value the admin must change; `field` names the form field it belongs to."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key_bytes(secret: str) -> bytes:
    """The HMAC key Standard Webhooks uses: the base64 part of whsec_<base64>, decoded."""
    return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)


def check_secret(secret: str) -> str | None:
    """None when `secret` has the whsec_<base64> form, else what is wrong with it."""
    if not secret.startswith(SECRET_PREFIX):
        return "secret must start with whsec_ (or leave it empty to generate one)"
    try:
        size = len(secret_key_bytes(secret))
    except (binascii.Error, ValueError):
        return "secret must be whsec_ followed by base64"
    if not SECRET_MIN_BYTES <= size <= SECRET_MAX_BYTES:
        return f"secret must encode {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes, not {size}"
    return None


def mask(value: str) -> str:
    """Enough of a secret to recognise it, not enough to use it."""
    if not value:
        return ""
    if value.startswith(SECRET_PREFIX):
        return value[: len(SECRET_PREFIX) + 4] + "…"
    return value[:2] + "…"


def clean_events(value: Any) -> list[str]:
    """The event filter as a sorted list of names and `prefix.*` entries; [] selects every event."""
    try:
        return event_names.clean_filter(value)
    except ValueError as exc:
        raise EndpointError("events", str(exc)) from None


def check_fields(config, values: dict[str, Any], local_now: bool = False) -> dict[str, Any]:
    """Validate the editable fields present in `values`; returns them cleaned. `local_now`:
    whether the endpoint is local already, for a URL changed without saying it again."""
    cleaned: dict[str, Any] = {}
    delivery = config["delivery"]
    if "local" in values:
        cleaned["local"] = 1 if values["local"] else 0
    if "url" in values:
        url = str(values["url"] or "").strip()
        if not url:
            raise EndpointError("url", "URL is required")
        if len(url) > MAX_URL_LENGTH:
            raise EndpointError("url", f"URL is longer than {MAX_URL_LENGTH} characters")
        problem = safe_http.check_url(
            url,
            allow_http=delivery["allow_http"],
            allow_private=delivery["allow_private_urls"],
            local=bool(cleaned.get("local", local_now)),
        )
        if problem:
            raise EndpointError("url", problem)
        cleaned["url"] = url
    if "events" in values:
        cleaned["events"] = json.dumps(clean_events(values["events"]))
    if "accounts" in values:
        try:
            cleaned["accounts"] = json.dumps(accounts.clean(values["accounts"]))
        except ValueError as exc:
            raise EndpointError("accounts", str(exc)) from None
    if "format" in values:
        if values["format"] not in FORMATS:
            raise EndpointError("format", f"format must be one of {', '.join(FORMATS)}")
        cleaned["format"] = values["format"]
    if "bearer_token" in values:
        token = str(values["bearer_token"] or "").strip()
        if token and not TOKEN_RE.fullmatch(token):
            raise EndpointError("bearer_token", "bearer token must be printable characters without spaces")
        cleaned["bearer_token"] = token
    if values.get("secret"):
        problem = check_secret(values["secret"])
        if problem:
            raise EndpointError("secret", problem)
        cleaned["secret"] = values["secret"]
    if "enabled" in values:
        cleaned["enabled"] = 1 if values["enabled"] else 0
        if cleaned["enabled"]:
            # A fresh start: the failures before it was disabled are no streak to recover from.
            cleaned.update(
                disabled_reason="", failing_since=None, next_probe_at=None, probe_interval=None, recovering_until=None
            )
    return cleaned


def as_dict(row: db.Row, show_secret: bool = False) -> dict[str, Any]:
    """An endpoint as the CLI prints it and the pages show it."""
    return {
        "id": row["id"],
        "url": row["url"],
        "secret": row["secret"] if show_secret else mask(row["secret"]),
        "events": json.loads(row["events"]),
        "format": row["format"],
        "accounts": json.loads(row["accounts"] or "[]"),
        "bearer_token": row["bearer_token"] if show_secret else mask(row["bearer_token"]),
        "enabled": bool(row["enabled"]),
        "local": bool(row["local"]),
        "disabled_reason": row["disabled_reason"],
        "created_at": row["created_at"],
    }


def get(conn: db.Connection, endpoint_id: int) -> db.Row | None:
    return conn.execute("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()


def list_all(conn: db.Connection) -> list[db.Row]:
    return conn.execute("SELECT * FROM endpoints ORDER BY id").fetchall()


def create(conn: db.Connection, config, url: str, **fields: Any) -> db.Row:
    """Add an endpoint; a secret is generated unless one is given. Raises EndpointError."""
    values = check_fields(config, {"url": url, **fields})
    values.setdefault("secret", generate_secret())
    values.setdefault("events", "[]")
    now = time.time()
    values.update(created_at=now, updated_at=now)
    with transaction(conn):
        # Past every id ever used (db migration 4), so a deleted endpoint's id is never given again.
        values["id"] = conn.execute(
            # CASE, not max(a, b): SQLite's two-argument max is greatest() on PostgreSQL.
            "UPDATE endpoint_ids SET last = CASE WHEN last > (SELECT coalesce(max(id), 0) FROM endpoints) THEN last"
            " ELSE (SELECT coalesce(max(id), 0) FROM endpoints) END + 1 RETURNING last"
        ).fetchone()[0]
        columns = ", ".join(values)
        endpoint_id = conn.execute(
            f"INSERT INTO endpoints ({columns}) VALUES ({', '.join('?' for _ in values)}) RETURNING id",  # noqa: S608
            tuple(values.values()),
        ).fetchone()[0]
    return get(conn, endpoint_id)


def update(conn: db.Connection, config, endpoint_id: int, **fields: Any) -> db.Row:
    """Change some fields of an endpoint. Raises EndpointError, or KeyError if it is gone."""
    row = get(conn, endpoint_id)
    if row is None:
        raise KeyError(endpoint_id)
    if "local" in fields and "url" not in fields:
        fields = {**fields, "url": row["url"]}  # no longer local: is its URL still allowed?
    values = check_fields(config, fields, local_now=bool(row["local"]))
    values["updated_at"] = time.time()
    assignments = ", ".join(f"{name} = ?" for name in values)
    with transaction(conn):
        changed = conn.execute(
            f"UPDATE endpoints SET {assignments} WHERE id = ?",  # noqa: S608 (names are ours)
            (*values.values(), endpoint_id),
        ).rowcount
    if not changed:
        raise KeyError(endpoint_id)
    return get(conn, endpoint_id)


def check_keep_old_hours(value: Any) -> float:
    """The overlap a rotation gives the old secret, in hours: a number from 0 to MAX_KEEP_OLD_HOURS."""
    try:
        hours = float(str(value).strip())
    except ValueError:
        raise EndpointError("keep_old_hours", f"keep-old-hours must be a number of hours, not {value!r}") from None
    if not 0 <= hours <= MAX_KEEP_OLD_HOURS:  # also refuses nan
        raise EndpointError("keep_old_hours", f"keep-old-hours must be from 0 to {MAX_KEEP_OLD_HOURS}")
    return hours


def rotate_secret(conn: db.Connection, endpoint_id: int, keep_old_hours: float = 0) -> db.Row:
    """Give the endpoint a new generated secret; the old one keeps signing alongside it for
    `keep_old_hours` (0: it stops at once). Returns the row, whose new secret is shown once."""
    secret = generate_secret()
    now = time.time()
    with transaction(conn):
        if not conn.execute(
            "UPDATE endpoints SET previous_secret = CASE WHEN ? > 0 THEN secret ELSE '' END,"
            " previous_secret_until = CASE WHEN ? > 0 THEN ? END, secret = ?, updated_at = ? WHERE id = ?",
            (keep_old_hours, keep_old_hours, now + keep_old_hours * 3600, secret, now, endpoint_id),
        ).rowcount:
            raise KeyError(endpoint_id)
    return get(conn, endpoint_id)


def signing_secrets(row: db.Row, now: float) -> list[str]:
    """The secrets a delivery is signed with: the current one, then the old one during an overlap."""
    if row["previous_secret"] and (row["previous_secret_until"] or 0) > now:
        return [row["secret"], row["previous_secret"]]
    return [row["secret"]]


def mark_disabled(conn: db.Connection, endpoint_id: int, reason: str) -> None:
    """Stop sending to an endpoint (a 410 from it, disable_after_hours, or the admin), failing
    what was waiting, and send `endpoint.disabled` to the endpoints that select it when it was
    enabled until now. Call inside a transaction; `disable` is the same in one of its own."""
    now = time.time()
    row = get(conn, endpoint_id)
    conn.execute(
        "UPDATE endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?, failing_since = NULL,"
        " next_probe_at = NULL, probe_interval = NULL, recovering_until = NULL WHERE id = ?",
        (reason, now, endpoint_id),
    )
    delivery_states.fail_waiting(conn, endpoint_id, f"endpoint disabled: {reason}")
    if row is not None and row["enabled"]:
        outbox.publish(
            conn,
            "endpoint.disabled",
            {"endpoint_id": endpoint_id, "url": address_rules.shown_url(row["url"]), "reason": reason},
            dedupe_key=f"endpoint.disabled:{endpoint_id}:{now!r}",
            exclude_endpoint=endpoint_id,
        )


def disable(conn: db.Connection, endpoint_id: int, reason: str) -> None:
    with transaction(conn):
        mark_disabled(conn, endpoint_id, reason)


def remove(conn: db.Connection, endpoint_id: int) -> bool:
    """Delete an endpoint. Its waiting deliveries end as failed; the history stays."""
    with transaction(conn):
        delivery_states.fail_waiting(conn, endpoint_id, "endpoint deleted")
        return conn.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,)).rowcount > 0
