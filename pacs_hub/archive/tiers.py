"""Storage tiers: a study no one has sent to for a while moves to the cold tier.

Two tiers (PRODUCT.md brick 3; dcm4chee's ONLINE/NEARLINE storages, anchors.md):

* **hot**: ``DATA_DIR/blobs`` (pack files and blob files, as received);
* **cold**: ``DATA_DIR/blobs/cold``, each instance losslessly compressed
  (:mod:`pacs_hub.storage.cold`), read back through a cache of decompressed copies, so
  every door (C-MOVE, C-GET, WADO-RS, restore) serves it as before, byte for byte.

:func:`move_study` moves a study (the ``archive-tiering`` task moves every study whose
last instance arrived more than ``PACS_HUB_COLD_AFTER_DAYS`` ago, :func:`candidates`;
``pacs-hub archive tier move`` any), :func:`recall_study` brings one back (a patient in
follow-up). Per batch of a study's instances: each one's bytes read and checked against
its SHA-256 (a damaged one stays where it is, reported: ``pacs-hub archive check`` says
more), written to the other tier and synced, then the rows re-pointed in one
transaction, each only if it still names the blob read (an instance destroyed or
replaced meanwhile keeps what it has). Nothing is acknowledged or lost on the way: an
instance's row names a durable copy at every moment.

A blob no row names any more is not erased at once (a reader may hold its old key, a
send may be reading it) but journaled in ``DATA_DIR/archive/tier-garbage.jsonl``, the
new copies with the old ones and before the commit, so a crash either way leaves the
unnamed one journaled; :func:`free_garbage` erases each after
:data:`GRACE_SECONDS` if no row names it then. One tier operation at a time
(``DATA_DIR/archive/tier.lock``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, case, func, select, update

from pacs_hub.archive.retention import UnknownStudy, now
from pacs_hub.errors import HubError
from pacs_hub.storage import cold
from pacs_hub.storage.blobs import BadBlobKey, BlobStore, sha256_hex
from pacs_hub.storage.database import Database
from pacs_hub.storage.durable import append_lines, held_alone, read_lines, write_lines
from pacs_hub.storage.models import Instance, Series, Study

__all__ = [
    "BATCH_BYTES",
    "GRACE_SECONDS",
    "Freed",
    "Moved",
    "TierBusy",
    "UnknownStudy",
    "alone",
    "candidates",
    "counts",
    "describe",
    "disk_bytes",
    "folder",
    "free_garbage",
    "garbage_path",
    "move_study",
    "now",
    "recall_study",
]
LOGGER = logging.getLogger(__name__)
GRACE_SECONDS = 600.0
"""A blob no row names is erased no sooner than this after it was replaced."""
BATCH_BYTES = 64 << 20
"""Bytes of a study moved per batch (one data sync, one transaction)."""
_IN_CHUNK = 500


class TierBusy(HubError):
    title = "Busy"
    http_status = 409


def folder(data_dir: Path) -> Path:
    return data_dir / "archive"


def garbage_path(data_dir: Path) -> Path:
    return folder(data_dir) / "tier-garbage.jsonl"


def alone(data_dir: Path) -> AbstractContextManager[None]:
    """Hold the tier lock; another tier operation, in any process, is refused."""
    busy = TierBusy("another tier operation is running (move, recall or free)")
    return held_alone(folder(data_dir) / "tier.lock", busy)


@dataclass
class Moved:
    """What moving (or recalling) one study did."""

    study_instance_uid: str
    instances: int = 0
    bytes: int = 0
    """Bytes of the instances moved, as received."""
    stored_bytes: int = 0
    """Bytes they take in the tier they went to (compressed, for the cold tier)."""
    damaged: list[str] = field(default_factory=list)
    """SOP Instance UIDs left where they were: their bytes no longer match their SHA-256."""
    changed: int = 0
    """Instances destroyed or replaced while they were copied (left as they are)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "instances": self.instances,
            "bytes": self.bytes,
            "stored_bytes": self.stored_bytes,
            "damaged": self.damaged,
            "changed": self.changed,
        }


def candidates(conn: Connection, before: datetime, limit: int | None = None) -> list[str]:
    """Studies that received no instance since ``before`` and still have one in the hot
    tier, the longest untouched first."""
    hot = (
        select(Instance.id)
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == Study.id, ~Instance.blob_key.startswith(f"{cold.COLD}/"))
        .exists()
    )
    stmt = (
        select(Study.study_instance_uid)
        .where(Study.updated_at < before, hot)
        .order_by(Study.updated_at, Study.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(conn.execute(stmt).scalars())


def _instances(conn: Connection, uid: str, to_cold: bool) -> list[Any]:
    study = conn.execute(select(Study.id).where(Study.study_instance_uid == uid)).scalar()
    if study is None:
        raise UnknownStudy(f"no study {uid} in the archive")
    in_cold = Instance.blob_key.startswith(f"{cold.COLD}/")
    stmt = (
        select(
            Instance.id,
            Instance.sop_instance_uid,
            Instance.blob_key,
            Instance.sha256,
            Instance.size_bytes,
        )
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == study, ~in_cold if to_cold else in_cold)
        .order_by(Instance.id)
    )
    return list(conn.execute(stmt))


def _batches(rows: Sequence[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    size = 0
    for row in rows:
        if batch and size + row.size_bytes > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row.size_bytes
    if batch:
        yield batch


def move_study(database: Database, store: BlobStore, uid: str, *, to_cold: bool = True) -> Moved:
    """Move study ``uid``'s instances to the cold tier (``to_cold`` False: back to the
    hot tier); hold :func:`alone` around it."""
    with database.read_connection() as conn:
        rows = _instances(conn, uid, to_cold)
    moved = Moved(uid)
    for batch in _batches(rows):
        _move_batch(database, store, batch, to_cold, moved)
    if moved.instances:
        LOGGER.info(
            "tiers: %d instance(s) (%.1f MB, %.1f MB stored) moved to the %s tier",
            moved.instances,
            moved.bytes / 1e6,
            moved.stored_bytes / 1e6,
            "cold" if to_cold else "hot",
        )
    return moved


def recall_study(database: Database, store: BlobStore, uid: str) -> Moved:
    """Bring study ``uid`` back to the hot tier (:func:`move_study`)."""
    return move_study(database, store, uid, to_cold=False)


def _read(store: BlobStore, row: Any) -> bytes | None:
    """The instance's bytes, None when they are unreadable or no longer match."""
    try:
        data = (
            cold.read(store.blobs, row.blob_key)
            if cold.is_cold(row.blob_key)
            else store.ref(row.blob_key, row.size_bytes).read_bytes()
        )
    except (OSError, ValueError):
        return None
    if len(data) != row.size_bytes or sha256_hex(data) != row.sha256:
        return None
    return data


def _move_batch(
    database: Database, store: BlobStore, batch: list[Any], to_cold: bool, moved: Moved
) -> None:
    good: list[tuple[Any, bytes]] = []
    for row in batch:
        data = _read(store, row)
        if data is None:
            moved.damaged.append(row.sop_instance_uid)
            LOGGER.warning("tiers: blob %s is damaged; its instance stays", row.blob_key)
        else:
            good.append((row, data))
    if not good:
        return
    items = [(data, row.sha256) for row, data in good]
    keys = store.put_cold(items) if to_cold else store.put_many(items)
    stamp = now().isoformat()
    append_lines(
        garbage_path(store.root),
        [
            {"key": key, "sha256": row.sha256, "at": stamp}
            for (row, _data), new in zip(good, keys, strict=True)
            for key in (row.blob_key, new)
        ],
    )
    with database.engine.begin() as conn:
        for (row, data), key in zip(good, keys, strict=True):
            done = conn.execute(
                update(Instance)
                .where(Instance.id == row.id, Instance.blob_key == row.blob_key)
                .values(blob_key=key)
            ).rowcount
            if not done:
                moved.changed += 1
                continue
            moved.instances += 1
            moved.bytes += len(data)
            moved.stored_bytes += cold.place(key).stored if to_cold else len(data)


@dataclass(frozen=True)
class Freed:
    """What :func:`free_garbage` did."""

    erased: int
    kept: int
    """Blobs journaled that a row names again (a move that did not commit, a recall)."""
    waiting: int
    """Blobs journaled less than the grace period ago."""


def free_garbage(database: Database, store: BlobStore, grace: float = GRACE_SECONDS) -> Freed:
    """Erase the journaled blobs older than ``grace`` seconds that no row names; hold
    :func:`alone` around it."""
    path = garbage_path(store.root)
    lines = read_lines(path)
    if not lines:
        return Freed(0, 0, 0)
    horizon = (now() - timedelta(seconds=grace)).isoformat()
    ready: list[dict[str, Any]] = []
    waiting: list[dict[str, Any]] = []
    for line in lines:
        (ready if str(line.get("at", "")) <= horizon else waiting).append(line)
    digests = sorted({str(line.get("sha256", "")) for line in ready})
    named: set[str] = set()
    with database.read_connection() as conn:
        for start in range(0, len(digests), _IN_CHUNK):
            chunk = digests[start : start + _IN_CHUNK]
            stmt = select(Instance.blob_key).where(Instance.sha256.in_(chunk))
            named.update(conn.execute(stmt).scalars())
    erased = kept = 0
    for key in dict.fromkeys(str(line.get("key", "")) for line in ready):
        if key in named:
            kept += 1
            continue
        try:
            erased += bool(store.erase(key))
        except (BadBlobKey, ValueError) as exc:
            LOGGER.warning("tiers: blob %s not erased: %s", key[:80], exc)
    write_lines(path, waiting)
    if erased:
        LOGGER.info("tiers: %d blob(s) no instance names any more erased", erased)
    return Freed(erased, kept, len(waiting))


def counts(conn: Connection) -> dict[str, dict[str, int]]:
    """Instances and their bytes (as received) per tier."""
    tier = case((Instance.blob_key.startswith(f"{cold.COLD}/"), "cold"), else_="hot")
    stmt = select(tier, func.count(), func.coalesce(func.sum(Instance.size_bytes), 0)).group_by(
        tier
    )
    found = {name: {"instances": 0, "bytes": 0} for name in ("hot", "cold")}
    for name, number, size in conn.execute(stmt):
        found[name] = {"instances": int(number), "bytes": int(size)}
    return found


def disk_bytes(folder_path: Path, pattern: str) -> int:
    """Bytes the files matching ``pattern`` in ``folder_path`` take on disk (holes of
    erased records not counted)."""
    total = 0
    for path in folder_path.glob(pattern):
        try:
            total += path.stat().st_blocks * 512
        except OSError:
            continue
    return total


def describe(database: Database, store: BlobStore, cache_bytes: int) -> dict[str, Any]:
    """Both tiers' counts, the cold tier's size on disk, its cache and the journal."""
    with database.read_connection() as conn:
        found = counts(conn)
    stored = disk_bytes(store.blobs / cold.COLD, f"*{cold.SUFFIX}")
    use = cold.cache_use(store.blobs)
    found["cold"]["disk_bytes"] = stored
    raw = found["cold"]["bytes"]
    return {
        "tiers": found,
        "cold_ratio": round(raw / stored, 2) if stored else None,
        "cache": {"files": use.files, "bytes": use.bytes, "max_bytes": cache_bytes},
        "garbage_waiting": len(read_lines(garbage_path(store.root))),
    }
