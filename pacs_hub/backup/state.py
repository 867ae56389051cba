"""Durable state of each enrolled establishment: one JSON file in ``DATA_DIR/backup/``.

No table holds it (no migration): ``<code>.json`` keeps the enrolment (the PACS node),
the stand-in mode, the backfill (every study found on the PACS, with its instance count
and whether it is safe in the hub), the last reconciliation and each restore's progress
per study. Every change is a read-modify-write under an exclusive ``flock`` on
``<code>.lock`` (the hub's task thread, the CLI and the API may write at once), written
to a temporary file, fsynced and renamed over the old one: a crash (kill -9) leaves the
previous or the new state, never half of one, so backfills and restores resume.

Per-study progress (a backfill's or a restore's) is not a rewrite of that file: each
study's outcome is one JSON line appended to ``<code>.journal`` (:func:`record`,
under the lock, fsynced), folded into the state by every :func:`load` and
:func:`update`; an update writes the folded state and empties the journal, and
:func:`record` folds it itself once it passes :data:`COMPACT_BYTES`. A line cut short
by a crash is ignored (its study is simply done again: pulls and sends are
idempotent), so a kill -9 still leaves a state the next run resumes from.

Instances stored through the stand-in AE title are appended to ``<code>.outage``
(one SOP Instance UID a line, ``O_APPEND``), which several gateway processes can share.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacs_hub.config import Settings
from pacs_hub.errors import HubError
from pacs_hub.storage.durable import write_json

State = dict[str, Any]
COMPACT_BYTES = 1 << 20
CODE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
STANDIN_MODES = ("auto", "on", "off")


class NotEnrolled(HubError):
    """The establishment is not enrolled as a backup client."""

    dicom_status = 0xC000
    http_status = 404
    title = "Establishment not enrolled for backup"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with a Z."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def folder(settings: Settings) -> Path:
    """``DATA_DIR/backup``, created when missing."""
    path = settings.data_dir / "backup"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _path(settings: Settings, code: str, suffix: str) -> Path:
    if not CODE.match(code):
        raise NotEnrolled(f"establishment code {code[:40]!r}: expected 1-32 of A-Z a-z 0-9 _ . -")
    return folder(settings) / f"{code}{suffix}"


def enrolled(settings: Settings) -> list[str]:
    """Codes of every enrolled establishment, sorted."""
    path = settings.data_dir / "backup"  # not created: the gateway asks on every call
    return sorted(p.stem for p in path.glob("*.json")) if path.is_dir() else []


def load(settings: Settings, code: str) -> State:
    """The state of ``code`` (its journal folded in); :class:`NotEnrolled` when it has none."""
    path = _path(settings, code, ".json")
    if not path.exists():
        raise NotEnrolled(f"establishment {code!r} is not enrolled ('pacs-hub backup enrol')")
    with _locked(settings, code, fcntl.LOCK_SH):  # not between a compaction's two steps
        data: State = json.loads(path.read_text())
        _fold(data, _path(settings, code, ".journal"))
    return data


def _fold(data: State, journal: Path) -> None:
    """Apply the journal's complete lines to ``data``, in order."""
    try:
        lines = journal.read_bytes().split(b"\n")
    except FileNotFoundError:
        return
    for line in lines:
        try:
            entry = json.loads(line)
            section, uid = entry["s"], entry["u"]
        except (ValueError, KeyError, TypeError):
            continue  # empty, or cut short by a crash
        study = ((data.get(section) or {}).get("studies") or {}).get(uid)
        if study is None:
            continue  # a study of a run since replaced
        study.update(entry.get("v") or {})
        for key, amount in (entry.get("add") or {}).items():
            data[section][key] = int(data[section].get(key) or 0) + int(amount)


def record(
    settings: Settings,
    code: str,
    section: str,
    uid: str,
    values: dict[str, Any],
    add: dict[str, int] | None = None,
) -> None:
    """Record one study's outcome in ``section`` (``backfill``, ``restore``): one journal
    line, not a rewrite of the state file (folded in once the journal is large)."""
    line = json.dumps(
        {"s": section, "u": uid, "v": values, "add": add or {}}, separators=(",", ":")
    )
    with _locked(settings, code):
        journal = _path(settings, code, ".journal")
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode() + b"\n")
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > COMPACT_BYTES:
            _compact(settings, code, lambda _state: None, create=False)


def _write(path: Path, state: State) -> None:
    write_json(path, state)


@contextmanager
def _locked(settings: Settings, code: str, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    with _path(settings, code, ".lock").open("a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update(
    settings: Settings, code: str, change: Callable[[State], None], *, create: bool = False
) -> State:
    """Apply ``change`` to the state of ``code`` atomically; the new state."""
    with _locked(settings, code):
        return _compact(settings, code, change, create=create)


def _compact(
    settings: Settings, code: str, change: Callable[[State], None], *, create: bool
) -> State:
    """Read the state and its journal, apply ``change``, write it, empty the journal
    (the caller holds the lock). A crash between the write and the truncation folds
    the same lines again next time: each sets values, so nothing changes but the ETA
    counters."""
    path = _path(settings, code, ".json")
    journal = _path(settings, code, ".journal")
    if path.exists():
        state: State = json.loads(path.read_text())
        _fold(state, journal)
    elif create:
        state = {"establishment": code}
    else:
        raise NotEnrolled(f"establishment {code!r} is not enrolled ('pacs-hub backup enrol')")
    change(state)
    state["updated_at"] = now_iso()
    _write(path, state)
    if journal.exists():
        os.truncate(journal, 0)
    return state


@contextmanager
def exclusive(settings: Settings, code: str, job: str) -> Iterator[bool]:
    """Hold the ``job`` lock of ``code`` without waiting: yields False when another has it."""
    with _path(settings, code, f".{job}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mark_outage(settings: Settings, code: str, sop_instance_uid: str) -> None:
    """Record an instance stored while the hub stood in for ``code``'s PACS."""
    path = _path(settings, code, ".outage")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, sop_instance_uid.encode("ascii", "replace") + b"\n")
    finally:
        os.close(fd)


def outage_instances(settings: Settings, code: str) -> list[str]:
    """SOP Instance UIDs stored during an outage of ``code``'s PACS (oldest first, once)."""
    path = _path(settings, code, ".outage")
    if not path.exists():
        return []
    return list(dict.fromkeys(line for line in path.read_text().split("\n") if line))


def clear_outage(settings: Settings, code: str, returned: set[str]) -> int:
    """Forget the outage marks of ``returned`` instances (restored to the PACS); how many.

    Rewritten atomically under the state lock; run once the stand-in has ended (the
    gateway appends without the lock).
    """
    with _locked(settings, code):
        kept = [uid for uid in outage_instances(settings, code) if uid not in returned]
        path = _path(settings, code, ".outage")
        before = len(outage_instances(settings, code))
        if before == len(kept):
            return 0
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text("".join(f"{uid}\n" for uid in kept))
        os.replace(temporary, path)
        return before - len(kept)
