"""The delivery rules the running processes use, against what the config file says now.

Every process reads the config file once, at start. An admin who sets `delivery.allow_http =
true` while wahook runs has a file that says one thing and workers that do another until a
restart. So whatever reads the file says so, in the same words: the CLI (against the values
`make run` started with, kept in run.json), the pages (against their own process's values) and
a refused delivery (against the worker's), which then never repeats a hint ("set
delivery.allow_http") the file already follows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_config

RESTART = "restart wahook to apply the file (make run: Ctrl-C, then make run; under systemd: systemctl restart wahook)"


@dataclass(frozen=True)
class Change:
    """One delivery.* value the file now gives differently from what the processes run with."""

    key: str
    running: Any
    now: Any

    @property
    def now_text(self) -> str:
        return toml(self.now)

    @property
    def running_text(self) -> str:
        return toml(self.running)

    def words(self) -> str:
        return f"delivery.{self.key} = {toml(self.now)} in the file, still {toml(self.running)} in the running wahook"


def toml(value: Any) -> str:
    """A value as it is written in the config file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return str(value)


_cache: dict[str, tuple[tuple[int, int], dict[str, Any] | None]] = {}


def file_delivery(path: Path | str | None) -> dict[str, Any] | None:
    """The [delivery] section the file gives now, defaults filled in; None when there is no
    file or it does not load (a process started from it would stop with that error anyway).
    Read again only when the file's mtime or size changed: a burst of refusals reads it once."""
    if not path:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(str(path))
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        delivery = dict(load_config(path).sections["delivery"])
    except ConfigError:
        delivery = None
    _cache[str(path)] = (stamp, delivery)
    return delivery


def changes(running: dict[str, Any] | None, path: Path | str | None) -> list[Change]:
    """The delivery.* values that differ between `running` and the file at `path`."""
    now = file_delivery(path)
    if not running or now is None:
        return []
    return [Change(key, running[key], now[key]) for key in now if key in running and running[key] != now[key]]


LOCAL_INSTEAD = (
    "For a receiver on this machine or network, mark the endpoint local instead"
    " (--local, or Local receiver on the settings page): that needs no restart."
)


def about_addresses(found: list[Change]) -> bool:
    """Whether a change is one a local endpoint makes unnecessary."""
    return any(change.key in ("allow_http", "allow_private_urls") for change in found)


def describe(found: list[Change], path: Path | str) -> str:
    """What the CLI prints: what differs, and what to do."""
    listed = "; ".join(change.words() for change in found)
    text = f"{path} changed after wahook started: {listed}. Deliveries follow the running values: {RESTART}."
    return f"{text} {LOCAL_INSTEAD}" if about_addresses(found) else text


def refusal(config, message: str, rule: str | None, hint: str) -> str:
    """A delivery refused by `rule` (delivery.allow_http or allow_private_urls), in words that
    agree with the file: when the file now allows it, say the worker still runs with the old
    value and what to do, instead of a hint to set what is already set."""
    if not rule:
        return message
    now = file_delivery(getattr(config, "path", None))
    if now is None or now[rule] == config["delivery"][rule]:
        return message
    running = config["delivery"][rule]
    core = message[: len(message) - len(hint)] if hint and message.endswith(hint) else message
    return (
        f"{core} (wahook still runs with delivery.{rule} = {toml(running)}, read at start; {config.path}"
        f" now says {toml(now[rule])}: {RESTART}, or mark the endpoint local, which needs no restart)"
    )
