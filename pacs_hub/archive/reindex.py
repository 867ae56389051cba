"""Rebuilding the index from the blobs (ARCHITECTURE.md invariant 5).

Every blob the hub writes can be read back without the index: a pack record carries
the blob's length and SHA-256 (:mod:`pacs_hub.storage.packs`; a cold pack's, the
compressed blob's lengths and SHA-256, :mod:`pacs_hub.storage.cold`), a blob file is
named by its SHA-256, and the blob is the Part 10 file as received. :func:`reindex` reads
them all, checks each against its SHA-256, and indexes every instance the index does
not hold, through the index step of the ingest path (:func:`~pacs_hub.storage.index.
add_instance`: the same rows, counters and patient identity links as a C-STORE). So
an index lost with its disk (an embedded SQLite file), or restored from an older
backup (a PostgreSQL dump of last night), is made whole again; run on a whole index it
changes nothing.

What the blobs do not hold cannot come back: the AE title each instance came from
(left empty), the establishment a study was recorded under, and the default Issuer of
Patient ID given to a sender's patients that had none. An instance is stamped with
its blob's modification time as its reception time, so that routing and the prefetch
of priors (:mod:`pacs_hub.regional.arrivals`) do not take old studies for new ones.

Blobs of instances destroyed at the end of their retention are not brought back:
their pack records are erased, and the destruction's record file names their SHA-256
(for a destruction interrupted between deleting the rows and erasing the bytes).
Blobs no index row should name are said, not indexed: one damaged (its bytes no longer
hash to its SHA-256), and one whose SOP Instance UID is indexed with other bytes (a
copy the duplicate policy kept out, or replaced). Packs are read oldest first, so of
two unindexed blobs of one instance the one written first is indexed, as the default
policy (keep the first) did. The hub must be stopped (the command takes the data
folder as ``serve`` does).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection

from pacs_hub.dicom import dicomjson
from pacs_hub.dicom.header import InstanceHeader, parse_instance
from pacs_hub.errors import HubError
from pacs_hub.storage import cold, packs
from pacs_hub.storage.blob_ref import BlobRef
from pacs_hub.storage.blobs import PACKED_MAX, PACKS, BlobStore, pack_key, sha256_file
from pacs_hub.storage.database import Database
from pacs_hub.storage.index import Outcome, StoredBlob, add_instance, existing_instance

LOGGER = logging.getLogger(__name__)
BATCH = 200
"""Instances indexed per transaction."""
TASK = 64
"""Blobs handed to a reading process at a time."""
POOL_MIN_BYTES = 256 << 20
"""Blobs below this size in all are read here (starting reading processes costs seconds)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A blob, or stretch of a pack, that was not indexed, and why."""

    where: str
    """The blob key, or ``packs/<pack>@<start>+<length>`` for bytes that are no blob."""
    reason: str
    sop_instance_uid: str = ""
    """The instance the bytes seem to hold, when they can still be read as one."""


@dataclass(slots=True)
class ReindexReport:
    """What :func:`reindex` found and did."""

    blobs: int = 0
    """Whole blobs read."""
    indexed: int = 0
    """Instances added to the index."""
    already: int = 0
    """Blobs the index already named (same SOP Instance UID, same bytes)."""
    damaged: list[Skipped] = field(default_factory=list)
    """Blobs or stretches whose bytes are not what was written."""
    conflicts: list[Skipped] = field(default_factory=list)
    """Blobs of an instance the index holds with other bytes."""
    unreadable: list[Skipped] = field(default_factory=list)
    """Whole blobs that are no instance the hub can index."""
    incomplete_ends: list[Skipped] = field(default_factory=list)
    """Bytes after a pack's last record that stop short of one: a write a crash
    interrupted (never acknowledged), or a damaged last record."""
    erased: int = 0
    """Pack records erased by a destruction or a tier move (stepped over)."""
    destroyed: int = 0
    """Whole blobs of instances a destruction's record names as destroyed (a destruction
    interrupted before it erased them): not indexed again."""

    @property
    def problems(self) -> int:
        """Blobs that should be indexed and are not: damaged, conflicting, unreadable."""
        return len(self.damaged) + len(self.conflicts) + len(self.unreadable)


@dataclass(frozen=True, slots=True)
class _Blob:
    """A whole blob found, to be read as an instance (by a reading process)."""

    key: str
    sha256: str
    ref: BlobRef
    own_file: bool
    """A blob file (read as a file: pixel data left unread), not a pack's record."""
    written: datetime
    data: bytes | None = None
    """The bytes of a cold blob, decompressed and checked as it was found."""


@dataclass(frozen=True, slots=True)
class _Readable:
    """A whole blob read as an instance: what indexing it needs (not its bytes)."""

    blob: StoredBlob
    written: datetime
    header: InstanceHeader
    metadata: bytes


def blob_sources(blobs: BlobStore) -> list[Path]:
    """Every pack, blob file and cold pack under the store, oldest (last modified)
    first (a cold copy is newer than the hot one it replaced)."""
    files = list((blobs.blobs / PACKS).glob(f"*{packs.PACK_SUFFIX}"))
    files += blobs.blobs.glob("[0-9a-f][0-9a-f]/*.dcm")
    files += cold.cold_packs(blobs.blobs)
    return sorted(files, key=lambda path: (path.stat().st_mtime_ns, path.name))


def _modified(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)


def _seems(data: bytes) -> str:
    """The SOP Instance UID damaged bytes seem to hold ('' when they cannot be read)."""
    try:
        return parse_instance(data)[0].sop_instance_uid
    except Exception:  # damaged bytes: anything may fail
        return ""


def _blobs_of(path: Path, report: ReindexReport) -> Iterator[_Blob]:
    """The whole blobs of one pack or blob file; what is not one goes to ``report``."""
    written = _modified(path)
    if path.suffix == cold.SUFFIX:
        yield from _cold_blobs_of(path, written, report)
        return
    if path.suffix == packs.PACK_SUFFIX:
        for item in packs.survey(path):
            if isinstance(item, packs.Erased):
                report.erased += 1
                continue
            if isinstance(item, packs.Found):
                record = item.record
                key = pack_key(path.name, record.offset, record.size)
                ref = BlobRef(path, record.offset, record.size)
                yield _Blob(key, record.sha256, ref, False, written)
                continue
            where = f"{PACKS}/{path.name}@{item.start}+{item.length}"
            with path.open("rb") as fp:
                fp.seek(item.start + packs.HEADER.size)
                seems = _seems(fp.read(max(0, min(item.length - packs.HEADER.size, PACKED_MAX))))
            if item.end:
                report.incomplete_ends.append(Skipped(where, "no whole record", seems))
            else:
                report.damaged.append(Skipped(where, "damaged record", seems))
        return
    key = f"{path.parent.name}/{path.name}"
    sha256 = sha256_file(path)
    if sha256 != path.stem:
        report.damaged.append(Skipped(key, "checksum mismatch", _seems(path.read_bytes())))
        return
    yield _Blob(key, sha256, BlobRef.whole(path), True, written)


def _cold_blobs_of(path: Path, written: datetime, report: ReindexReport) -> Iterator[_Blob]:
    """The whole blobs of a cold pack (:func:`cold.survey`)."""
    for item in cold.survey(path):
        if isinstance(item, packs.Erased):
            report.erased += 1
        elif isinstance(item, cold.Found):
            ref = BlobRef(path, 0, len(item.data))
            yield _Blob(item.key, item.sha256, ref, False, written, item.data)
        else:
            where = f"{cold.COLD}/{path.name}@{item.start}+{item.length}"
            skipped = Skipped(where, "no whole record" if item.end else "damaged record")
            (report.incomplete_ends if item.end else report.damaged).append(skipped)


def _read(blob: _Blob) -> _Readable | Skipped:
    """``blob`` read as an instance, or why it is not one."""
    try:
        if blob.data is not None:
            source: Path | bytes = blob.data
        else:
            source = blob.ref.file if blob.own_file else blob.ref.read_bytes()
        header, dataset = parse_instance(source)
        metadata = dicomjson.encode(dataset)
    except HubError as exc:
        return Skipped(blob.key, exc.message)
    except Exception as exc:  # a blob no ingest would have written: say it, go on
        return Skipped(blob.key, f"{type(exc).__name__}: {exc}")
    stored = StoredBlob(blob.key, blob.sha256, blob.ref.size)
    return _Readable(stored, blob.written, header, metadata)


def _read_all(blobs: list[_Blob]) -> list[_Readable | Skipped]:
    """One reading task: :func:`_read` of each blob, in order."""
    return [_read(blob) for blob in blobs]


def _index(database: Database, batch: list[_Readable], report: ReindexReport) -> None:
    """Index a batch in one transaction (one by one when it fails, to say which)."""
    try:
        with database.engine.begin() as conn:
            outcomes = [_index_one(conn, item) for item in batch]
    except Exception:
        if len(batch) > 1:
            for item in batch:
                _index(database, [item], report)
            return
        LOGGER.exception("blob %s not indexed", batch[0].blob.key)
        reason = "the index refused it (see the log)"
        report.unreadable.append(
            Skipped(batch[0].blob.key, reason, batch[0].header.sop_instance_uid)
        )
        return
    for item, outcome in zip(batch, outcomes, strict=True):
        if outcome is Outcome.STORED:
            report.indexed += 1
        elif outcome is Outcome.DUPLICATE:
            report.already += 1
        else:
            reason = "its SOP Instance UID is indexed with other bytes"
            report.conflicts.append(Skipped(item.blob.key, reason, item.header.sop_instance_uid))


def _index_one(conn: Connection, item: _Readable) -> Outcome:
    """Index one instance in the caller's transaction, unless its UID is indexed."""
    known = existing_instance(conn, item.header.sop_instance_uid)
    if known is not None:
        return Outcome.DUPLICATE if known.sha256 == item.blob.sha256 else Outcome.CONFLICT
    add_instance(conn, item.header, item.blob, "", item.written, item.metadata)
    return Outcome.STORED


def _tasks(
    sources: list[Path],
    report: ReindexReport,
    on_source: Callable[[Path], None] | None,
    destroyed: frozenset[str],
) -> Iterator[list[_Blob]]:
    """The whole blobs of every pack and blob file, in order, :data:`TASK` at a time
    (those ``destroyed`` names by SHA-256 counted, left out)."""
    task: list[_Blob] = []
    for source in sources:
        for blob in _blobs_of(source, report):
            report.blobs += 1
            if blob.sha256 in destroyed:
                report.destroyed += 1
                continue
            task.append(blob)
            if len(task) >= TASK:
                yield task
                task = []
        if on_source is not None:
            on_source(source)
    if task:
        yield task


def _read_in_order(tasks: Iterator[list[_Blob]], jobs: int) -> Iterator[list[_Readable | Skipped]]:
    """Each task's blobs read as instances, in the tasks' order: here when ``jobs`` is 1,
    else by ``jobs`` processes, at most two tasks each ahead."""
    if jobs <= 1:
        yield from map(_read_all, tasks)
        return
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        ahead: deque[Future[list[_Readable | Skipped]]] = deque()
        for task in tasks:
            ahead.append(pool.submit(_read_all, task))
            if len(ahead) >= 2 * jobs:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def reindex(
    database: Database,
    blobs: BlobStore,
    *,
    jobs: int = 1,
    on_source: Callable[[Path], None] | None = None,
    destroyed: frozenset[str] = frozenset(),
) -> ReindexReport:
    """Index every whole blob of ``blobs`` the index does not hold (the hub stopped),
    but those whose SHA-256 is in ``destroyed`` (:func:`pacs_hub.archive.destruction.
    destroyed_digests`: instances destroyed at the end of their retention).

    This process finds the blobs (and checks their SHA-256) and indexes them, in the
    order they were found; ``jobs`` processes read them as instances meanwhile (0: one
    per core for :data:`POOL_MIN_BYTES` of blobs or more, else none). ``on_source`` is
    called with each pack or blob file once its blobs are found.
    """
    sources = blob_sources(blobs)
    if not jobs:  # starting the processes costs seconds: worth it for a large archive only
        large = sum(path.stat().st_size for path in sources) >= POOL_MIN_BYTES
        jobs = len(os.sched_getaffinity(0)) if large else 1
    report = ReindexReport()
    pending: list[_Readable] = []
    for results in _read_in_order(_tasks(sources, report, on_source, destroyed), jobs):
        for result in results:
            if isinstance(result, Skipped):
                report.unreadable.append(result)
            else:
                pending.append(result)
        if len(pending) >= BATCH:
            _index(database, pending, report)
            pending = []
    if pending:
        _index(database, pending, report)
    for skipped in report.damaged + report.conflicts + report.unreadable:
        LOGGER.error("blob not indexed: %s: %s", skipped.where, skipped.reason)
    return report
