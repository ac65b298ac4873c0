"""What a running wahook leaves in its data folder for the commands run beside it.

- Generated keys (`secret_key` for sessions, `simulate_key` for `simulate`): made once,
  0600, and kept, so every process of an install agrees on them.
- `run.json`, written by `make run`: the address it serves, its pid and the config file's
  fingerprint when it started. `simulate` posts there without being told the address
  again, and says when the config file changed since, because the running processes
  still use the values they read at start.

The simulate key never leaves the data folder: anyone who can read it can also write the
database, so accepting webhooks signed with it gives nobody anything new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from gateway.ops import config_drift
from gateway.storage import private_paths

RUN_FILE = "run.json"
SIMULATE_KEY_FILE = "simulate_key"
SESSION_KEY_FILE = "secret_key"


def generated_key(path: Path) -> str:
    """The key in `path`, generated there first (0600) when the file does not exist.

    The key is written to a temporary file and linked into place, so a process starting at
    the same moment finds either no file or the whole key, never an empty one.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(48))
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process was first: use its key
        finally:
            temp.unlink()
    return path.read_text(encoding="ascii").strip()


def simulate_key(data_dir: Path) -> str:
    """The install's local key for signing simulated webhooks; "" (no such key, nothing
    accepted with it) when the data folder cannot hold one, e.g. a read-only folder."""
    try:
        return generated_key(data_dir / SIMULATE_KEY_FILE)
    except (OSError, UnicodeDecodeError):
        return ""


def fingerprint(path: Path | None) -> dict[str, Any] | None:
    """The config file's mtime and content hash; None when there is no file to read."""
    if path is None:
        return None
    try:
        raw = path.read_bytes()
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return {"mtime": mtime, "sha256": hashlib.sha256(raw).hexdigest()}


def changed_since(path: Path | None, loaded: dict[str, Any] | None) -> bool:
    """True when the file's content is no longer what a process loaded at start.

    The hash decides, not the mtime: saving a file unchanged changes nothing that runs.
    """
    if path is None or loaded is None:
        return False
    now = fingerprint(path)
    return now is None or now["sha256"] != loaded["sha256"]


def stale_config_message(path: Path) -> str:
    return (
        f"{path} changed after wahook started: the running processes still use the old values."
        " Restart `make run` (Ctrl-C, then `make run`) to apply them."
    )


def write_run_info(data_dir: Path, info: dict[str, Any]) -> None:
    """Write run.json atomically, so a reader never sees half of it."""
    temp = data_dir / f".{RUN_FILE}.{os.getpid()}.tmp"
    with private_paths.create_private(temp) as f:
        f.write((json.dumps(info, indent=2) + "\n").encode("utf-8"))
    os.replace(temp, data_dir / RUN_FILE)


def remove_run_info(data_dir: Path, pid: int) -> None:
    """Remove run.json if it is still this launcher's."""
    info = read_run_info(data_dir, check_alive=False)
    if info is not None and info.get("pid") == pid:
        with contextlib.suppress(OSError):
            (data_dir / RUN_FILE).unlink()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def read_run_info(data_dir: Path, check_alive: bool = True) -> dict[str, Any] | None:
    """run.json when it is readable and well formed (and its launcher still runs); else None.

    A launcher killed with SIGKILL leaves the file behind; its pid tells it apart.
    """
    try:
        info = json.loads((data_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("url"), str) or not isinstance(info.get("pid"), int):
        return None
    if check_alive and not pid_alive(info["pid"]):
        return None
    return info


class ConfigWatch:
    """Looks at the config file every `interval` seconds and says once per new content that
    the running processes still use the old values (and once when it is back as loaded)."""

    def __init__(
        self, path: Path | None, loaded: dict[str, Any] | None, interval: float = 2.0, delivery: dict | None = None
    ) -> None:
        self.path = path
        self.loaded = loaded
        self.delivery = delivery  # the [delivery] rules the processes run with
        self.interval = interval
        self.next_check = 0.0
        self.announced = loaded["sha256"] if loaded else None

    def check(self, now: float) -> str | None:
        """A line to print when the file's content changed since the last one; else None."""
        if self.path is None or self.loaded is None or now < self.next_check:
            return None
        self.next_check = now + self.interval
        current = fingerprint(self.path)
        digest = current["sha256"] if current else None
        if digest == self.announced:
            return None
        self.announced = digest
        if digest == self.loaded["sha256"]:
            return f"{self.path} is back to the values wahook is running with."
        found = config_drift.changes(self.delivery, self.path)
        if not found:
            return stale_config_message(self.path)
        listed = "; ".join(change.words() for change in found)
        extra = f" {config_drift.LOCAL_INSTEAD}" if config_drift.about_addresses(found) else ""
        return f"{stale_config_message(self.path)} Delivery rules: {listed}.{extra}"


def page_notices(config, loaded: dict[str, Any] | None) -> dict[str, Any]:
    """What the monitor warns about: no App secret yet, and a config file edited since start
    (with the delivery rules it changed, which this process still runs with)."""
    stale = changed_since(config.path, loaded)
    return {
        "app_secret_missing": not config["meta"]["app_secret"],
        "config_stale": stale,
        "config_file": str(config.path) if config.path else "",
        "delivery_drift": config_drift.changes(config["delivery"], config.path) if stale else [],
    }


def running_delivery_drift(config) -> str | None:
    """For a command run beside `make run`: the delivery rules the file now gives differently
    from those the running processes read at start (run.json), in words; None when they agree."""
    info = read_run_info(config.data_dir)
    if not info or not isinstance(info.get("delivery"), dict):
        return None
    found = config_drift.changes(info["delivery"], info.get("config"))
    return config_drift.describe(found, info["config"]) if found else None
