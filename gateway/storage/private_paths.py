"""Folders and files only their owner may read, whatever the umask wahook was started with.

The data folder holds the database, keys, Redis' files, run.json and customers' media: all of it
gets the database's care (folders 0700, files 0600). Shells and services commonly run with umask
022, which would leave new files readable by every local user, so the entry points (`make run`,
gunicorn, the worker) tighten the umask of their process and its children, and the places that
make folders and files set the mode themselves as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

OWNER_ONLY = 0o077  # the bits a private folder or file must not have


def tighten_umask() -> None:
    """Files this process and its children create from now on are owner-only."""
    os.umask(os.umask(OWNER_ONLY) | OWNER_ONLY)


def private_dir(path: Path) -> Path:
    """Make `path` (and missing parents) a folder only its owner can enter; an existing one that
    others could read is closed to them. Returns `path`."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if mode & OWNER_ONLY:
        path.chmod(mode & ~OWNER_ONLY & 0o7777)
    return path


def create_private(path: Path) -> BinaryIO:
    """A new file (refused if it exists) open for writing, readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
