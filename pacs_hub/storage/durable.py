"""Small state files written so that a crash never leaves one half written.

* :func:`write_json`: a whole JSON document, written to a temporary file, fsynced,
  renamed over the old one, and the folder synced (the rename is durable too);
* :func:`append_line` / :func:`read_lines`: a journal of JSON lines, each appended and
  fsynced; a line a crash cut short is skipped when read back.

Used by the backup state (:mod:`pacs_hub.backup.state`), the integrity sweep, the
retention count and the destruction records (:mod:`pacs_hub.archive`).
"""

from __future__ import annotations

import json
import os
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
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        sync_folder(path.parent)


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
