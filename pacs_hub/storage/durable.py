"""Small state files written so that a crash never leaves one half written.

* :func:`write_json`: a whole JSON document, written to a temporary file, fsynced,
  renamed over the old one, and the folder synced (the rename is durable too);
* :func:`append_line`, :func:`append_lines` / :func:`read_lines`: a journal of JSON
  lines, appended and fsynced; a line a crash cut short is skipped when read back;
  :func:`write_lines` replaces a journal atomically;
* :func:`held_alone`: a lock file one process at a time holds (a destruction being
  executed, a tier operation).

Used by the backup state (:mod:`pacs_hub.backup.state`), the integrity sweep, the
retention count, the destruction records and the tiers' journal (:mod:`pacs_hub.archive`).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacs_hub.storage.packs import sync_folder


def write_json(path: Path, value: object, *, indent: int | None = None) -> None:
    """Write ``value`` as JSON to ``path`` atomically and durably (``indent`` None:
    compact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")  # writers of other processes
    separators = (",", ":") if indent is None else None
    with temporary.open("w") as fp:
        json.dump(value, fp, indent=indent, separators=separators, sort_keys=True)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(temporary, path)
    sync_folder(path.parent)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at ``path`` ({} when absent, unreadable or not an object)."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def append_line(path: Path, line: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` and make it durable (the file's creation too)."""
    append_lines(path, [line])


def append_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    """Append JSON lines to ``path`` with one write and one fsync (the file's creation
    made durable too)."""
    if not lines:
        return
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(_as_lines(lines))
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        sync_folder(path.parent)


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    """Replace ``path`` by these JSON lines, atomically and durably (:func:`write_json`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    with temporary.open("wb") as fp:
        fp.write(_as_lines(lines))
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(temporary, path)
    sync_folder(path.parent)


def _as_lines(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode()


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path`` (none when it is absent)."""
    try:
        texts = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for text in texts:
        try:
            found.append(json.loads(text))
        except json.JSONDecodeError:  # cut short by a crash
            continue
    return found


@contextmanager
def held_alone(path: Path, refused: Exception) -> Iterator[None]:
    """Hold the lock file ``path`` (``flock``, released when the block ends or the
    process dies); raise ``refused`` when another process or block holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refused from None
        yield
    finally:
        os.close(fd)  # releases the lock
