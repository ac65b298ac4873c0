"""The config file of a first start: config.toml written from the example with fresh secrets.

`make run` (run.py) calls `create_config` when there is no config.toml yet, and
`fill_empty_secrets` on every start, so an install whose verify token or admin password was
left empty is usable and not open. The file is edited as text, line by line, so every
comment the self-hoster wrote stays where it was.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
# Filled into config.toml when empty, so a fresh install is usable and not open.
GENERATED = (("meta", "verify_token"), ("admin", "password"))

SECTION_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?$")
EMPTY_KEY_RE = re.compile(r"^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)(?:\"\"|'')(\s*(?:#.*)?)$")


def fill_in(text: str, values: dict[tuple[str, str], str]) -> str:
    """Set each (section, key) in TOML `text`: an empty `key = ""` line of that section is
    given the value; a key that is absent is added under its section (or a new one).
    Everything else, comments included, stays as it was."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    pending = dict(values)
    section = None
    section_end: dict[str, int] = {}  # index after a section's last line
    for index, line in enumerate(lines):
        header = SECTION_RE.match(line)
        if header:
            section = header.group(1)
        elif section and (empty := EMPTY_KEY_RE.match(line.rstrip("\r\n"))):
            indent, key, equals, comment = empty.groups()
            if (section, key) in pending:
                lines[index] = f'{indent}{key}{equals}"{pending.pop((section, key))}"{comment}\n'
        if section:
            section_end[section] = index + 1
    additions: dict[int, list[str]] = {}
    for (sect, key), value in pending.items():
        line = f'{key} = "{value}"\n'
        if sect in section_end:
            additions.setdefault(section_end[sect], []).append(line)
        else:
            additions.setdefault(len(lines), []).append(f"\n[{sect}]\n{line}")
    for index in sorted(additions, reverse=True):
        lines[index:index] = additions[index]
    return "".join(lines)


def create_config(path: Path) -> None:
    """Write config.toml from the example with fresh secrets; never replaces a file."""
    text = fill_in(EXAMPLE.read_text(encoding="utf-8"), {key: secrets.token_urlsafe(24) for key in GENERATED})
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: a file that appeared meanwhile is kept. 0600: it holds secrets.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def fill_empty_secrets(path: Path, config) -> list[str]:
    """Give an empty verify token or admin password in an existing file a random value.

    Only empty values are touched, and only when the result still parses to the same
    settings plus the new values; otherwise the file is left alone. Returns the keys filled.
    """
    missing = tuple(key for key in GENERATED if not config[key[0]][key[1]])
    if not missing or config.path is None:
        return []
    values = {key: secrets.token_urlsafe(24) for key in missing}
    try:
        before = path.read_text(encoding="utf-8")
        after = fill_in(before, values)
        expected = tomllib.loads(before)
        for (section, key), value in values.items():
            expected.setdefault(section, {})[key] = value
        if tomllib.loads(after) != expected:
            return []
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, path.stat().st_mode & 0o777)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(after)
        os.replace(temp, path)
    except (OSError, ValueError):
        return []  # a read-only or hand-made file: run with what it says
    return [f"{section}.{key}" for section, key in missing]
