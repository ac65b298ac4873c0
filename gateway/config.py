"""Load and check wahook's TOML configuration.

Every key is optional; `DEFAULTS` holds each one with its default. A value of the
wrong type, an unknown section or key, or an impossible value raises `ConfigError`
with one line that names the key, so a process stops before it does anything.
"""

from __future__ import annotations

import copy
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PATH = "config.toml"

# Keys whose integer default also accepts a fraction; the other numbers are counts.
FRACTIONAL = {"delivery.timeout", "delivery.disable_after_hours", "meta.silence_hours"}

DEFAULTS: dict[str, dict[str, Any]] = {
    "meta": {
        "verify_token": "",
        "app_secret": "",
        "access_token": "",
        "graph_url": "https://graph.facebook.com/v23.0",
        "silence_hours": 0,
    },
    "storage": {"database": "data/wahook.db", "synchronous": "full", "retention_days": 30},
    "media": {"max_bytes": 104857600, "link_days": 7},
    "redis": {"url": "embedded"},
    "delivery": {
        "timeout": 10,
        "retry_schedule": [10, 10, 10],
        "allow_http": False,
        "allow_private_urls": False,
        "workers": 1,
        "auto_recover": True,
        "disable_after_hours": 72,
    },
    "api": {"allowed_origins": []},
    "admin": {"password": "", "secret_key": "", "metrics_token": ""},
}
# Keys whose list holds strings (checked in _check_origins), not numbers of seconds.
STRING_LISTS = {"api.allowed_origins"}


# storage.database starting with one of these selects PostgreSQL (see db.py).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


@dataclass(frozen=True)
class Config:
    """The checked configuration. `sections` keeps the TOML shape; the rest is derived."""

    sections: dict[str, dict[str, Any]]
    path: Path | None  # the file it came from, None when only defaults and overrides
    database_path: Path  # SQLite's file; with PostgreSQL, where that file would be (see data_dir)
    database_url: str = ""  # storage.database when it is a PostgreSQL URL

    @property
    def database(self) -> str:
        """What db.connection opens: the PostgreSQL URL, else the SQLite file's path."""
        return self.database_url or str(self.database_path)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]

    @property
    def data_dir(self) -> Path:
        """The folder holding the database; the embedded Redis and generated keys live here too.

        With PostgreSQL it is `data` next to the config file, or systemd's StateDirectory when
        set: each machine keeps its own."""
        return self.database_path.parent

    @property
    def redis_embedded(self) -> bool:
        return self.sections["redis"]["url"] == "embedded"


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python, but `timeout = true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # TOML has nan and inf; neither is a number of seconds.
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _check_value(key: str, value: Any, default: Any) -> None:
    """Raise ConfigError when `value` cannot stand where `default` stands."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, not {value!r}")
    elif key in STRING_LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{key} must be a list of strings such as ["https://inbox.example.com"], not {value!r}')
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise ConfigError(f"{key} must be a list of numbers of seconds, not {value!r}")
        if any(v < 0 for v in value):
            raise ConfigError(f"{key} must not contain negative delays")
    elif _is_int(default):
        ok = _is_number(value) if key in FRACTIONAL else _is_int(value)
        if not ok:
            kind = "a number" if key in FRACTIONAL else "a whole number"
            raise ConfigError(f"{key} must be {kind}, not {value!r}")


def _check_limits(sections: dict[str, dict[str, Any]]) -> None:
    """The checks a type alone cannot make."""
    delivery = sections["delivery"]
    if delivery["timeout"] <= 0:
        raise ConfigError(f"delivery.timeout must be more than 0 seconds, not {delivery['timeout']}")
    if delivery["timeout"] > 300:
        raise ConfigError("delivery.timeout must be at most 300 seconds")
    if delivery["workers"] < 1:
        raise ConfigError(f"delivery.workers must be at least 1, not {delivery['workers']}")
    if delivery["workers"] > 64:
        raise ConfigError(f"delivery.workers must be at most 64, not {delivery['workers']}")
    if len(delivery["retry_schedule"]) > 50:
        raise ConfigError("delivery.retry_schedule may hold at most 50 delays")
    if any(delay > 7 * 86400 for delay in delivery["retry_schedule"]):
        raise ConfigError("delivery.retry_schedule delays must be at most 604800 seconds (a week)")
    if not 1 <= sections["storage"]["retention_days"] <= 36500:
        raise ConfigError("storage.retention_days must be from 1 to 36500")
    if sections["storage"]["synchronous"] not in ("full", "normal"):
        raise ConfigError(f'storage.synchronous must be "full" or "normal", not {sections["storage"]["synchronous"]!r}')
    if delivery["disable_after_hours"] < 0:
        raise ConfigError("delivery.disable_after_hours must be 0 (never) or more")
    if sections["meta"]["silence_hours"] < 0:
        raise ConfigError("meta.silence_hours must be 0 (off) or more")
    if not sections["meta"]["graph_url"].startswith(("https://", "http://")):
        raise ConfigError(f"meta.graph_url must be an http:// or https:// URL, not {sections['meta']['graph_url']!r}")
    media = sections["media"]
    if media["max_bytes"] < 1:
        raise ConfigError(f"media.max_bytes must be at least 1, not {media['max_bytes']}")
    if not 1 <= media["link_days"] <= 3650:
        raise ConfigError("media.link_days must be from 1 to 3650")
    if not sections["storage"]["database"].strip():
        raise ConfigError("storage.database must name a file")
    _check_origins(sections["api"]["allowed_origins"])
    url = sections["redis"]["url"]
    if url != "embedded" and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f'redis.url must be "embedded" or a redis://, rediss:// or unix:// URL, not {url!r}')


def _check_origins(origins: list[str]) -> None:
    """Each allowed origin must be exactly what a browser sends in `Origin`: scheme://host[:port]."""
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in "/?#@ *"):
            raise ConfigError(
                f"api.allowed_origins: {origin!r} is not an origin; write scheme://host[:port] with no path,"
                ' as "https://inbox.example.com"'
            )


def merge(data: dict[str, Any], into: dict[str, dict[str, Any]]) -> None:
    """Check `data` (TOML-shaped) against DEFAULTS and copy it over `into`."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a table of sections")
    for section, values in data.items():
        if section not in DEFAULTS:
            known = ", ".join(DEFAULTS)
            raise ConfigError(f"unknown section [{section}] (known: {known})")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a section, not {values!r}")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"unknown key {section}.{key}")
            _check_value(f"{section}.{key}", value, DEFAULTS[section][key])
            into[section][key] = value


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the config file (`WAHOOK_CONFIG`, else ./config.toml), then apply `overrides`.

    A missing file means every default. A relative database path is taken from the
    config file's folder, so a service started from elsewhere finds the same data.
    """
    if path is None:
        path = os.environ.get("WAHOOK_CONFIG") or DEFAULT_PATH
    file = Path(path)
    sections = copy.deepcopy(DEFAULTS)
    found: Path | None = None
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
        merge(data, sections)
        found = file.resolve()
    if overrides:
        merge(overrides, sections)
    _check_limits(sections)
    base = found.parent if found else Path.cwd()
    setting = sections["storage"]["database"]
    url = setting if setting.startswith(POSTGRES_SCHEMES) else ""
    database = Path(DEFAULTS["storage"]["database"] if url else setting).expanduser()
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if url and state:
        # With PostgreSQL the data folder only holds this machine's own files (keys, an
        # embedded Redis): under systemd, its StateDirectory rather than next to /etc's config.
        database = Path(state) / database.name
    if not database.is_absolute():
        database = base / database
    return Config(sections=sections, path=found, database_path=database, database_url=url)
