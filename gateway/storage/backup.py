"""`backup PATH`: a consistent copy of the SQLite database while web and workers keep running.

SQLite's online backup API copies every page in one step inside a single read transaction,
so the copy is the database as of one commit; in WAL mode that reader does not hold up
intake or delivery. The copy is written beside PATH under a temporary name, opened and
checked, and only then linked into place, so PATH is either a checked backup or absent.

Restore (docs/operations.md): stop wahook, put the copy at `storage.database` with no stale `-wal` or
`-shm` beside it, start. Deliveries pending in the copy go out; leases in it have lapsed.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.storage import db, sqlite_open


class BackupError(Exception):
    """A backup that was refused or failed; nothing is left at PATH."""


@dataclass(frozen=True)
class Checked:
    """What opening the copy found."""

    webhooks: int
    events: int
    deliveries: int
    waiting: int  # pending or retrying: they go out after a restore


def target_problem(target: Path) -> str | None:
    """Why `target` cannot receive a backup, or None."""
    if "\x00" in str(target):
        return "a file name cannot contain a NUL byte"
    if target.exists() or target.is_symlink():
        return f"{target} already exists; a backup never overwrites a file, choose a new name"
    if not target.parent.is_dir():
        return f"folder {target.parent} does not exist"
    if not os.access(target.parent, os.W_OK):
        return f"folder {target.parent} is not writable"
    return None


def check(path: Path) -> Checked:
    """Open a copy and prove it whole: integrity_check, then the counts a restore relies on."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise BackupError(f"the copy failed its integrity check: {'; '.join(result[:3])}")

        def count(sql: str) -> int:
            return conn.execute(sql).fetchone()[0]

        return Checked(
            count("SELECT count(*) FROM webhooks"),
            count("SELECT count(*) FROM events"),
            count("SELECT count(*) FROM deliveries"),
            count("SELECT count(*) FROM deliveries WHERE state IN ('pending', 'retrying')"),
        )
    except sqlite3.Error as exc:
        raise BackupError(f"the copy could not be read back: {exc}") from exc
    finally:
        conn.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def take(database: str | os.PathLike, target: str | os.PathLike) -> tuple[Path, int, Checked]:
    """Copy `database` to `target` (a new file); returns (absolute path, bytes, what the check found)."""
    target = Path(target).absolute()
    try:
        problem = target_problem(target)
    except OSError as exc:  # a name too long, a folder we may not look into
        raise BackupError(f"{target!s:.200} cannot be a backup file: {exc}") from exc
    if problem:
        raise BackupError(problem)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        source = db.connect(database)
        try:
            sqlite_open.create_private(partial)
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)  # pages=-1: every page in one step, one snapshot
            finally:
                copy.close()
        finally:
            source.close()
        checked = check(partial)
        _fsync(partial)
        try:
            os.link(partial, target)  # fails, rather than overwrite, if PATH appeared meanwhile
        except FileExistsError as exc:
            raise BackupError(f"{target} already exists; a backup never overwrites a file") from exc
        _fsync(target.parent)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"backup failed: {exc}") from exc
    finally:
        for leftover in (partial, *(partial.with_name(partial.name + s) for s in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
    return target, target.stat().st_size, checked
