"""Pack files: many blobs appended to one file, one data sync per blob or per batch.

Writing each received instance to a file of its own costs, besides its bytes, a new
inode, a rename and a sync of two folders' metadata; for a small instance that is
most of the work of storing it. A pack writer appends each blob to a file it alone
writes and makes it durable with one ``fdatasync`` (which also makes the new file
length durable, so the bytes can be read back after a crash), then the caller
commits the blob's place (pack name, offset, size) to the index. A batch (the parts of
one STOW-RS request, :meth:`PackWriter.append_many`) is appended in one go and made
durable with one ``fdatasync``; appends of several threads at once share their syncs
(:meth:`PackWriter._sync_through`, a group commit). So:

* a blob in the index was synced before its row was committed (durable before
  acknowledged, ARCHITECTURE.md invariant 2);
* a crash between the two leaves unreferenced bytes at the end of a pack: wasted
  space, never a wrong answer; a writer never appends to a pack it did not create,
  so it never needs to know where an interrupted pack's last good blob ends;
* a pack is written by one process, one blob at a time under a lock (threads of
  that process serialise only their ``pwrite``; a sync covers every blob written
  before it began, and a blob's append returns only after such a sync ended).

A pack is closed for writing when it reaches :data:`PACK_BYTES`, or after a failed
write or sync (so no good blob ever follows a bad one); the next blob starts a new
pack, whose folder entry is synced once, when it is created.

Each blob is preceded by a record header (:data:`HEADER`: the magic ``PHUBBLOB``, the
blob's length, its SHA-256), so a pack can be read back without the index
(:func:`records`, :func:`survey`): the index can be rebuilt from the blobs
(:mod:`pacs_hub.archive.reindex`, ARCHITECTURE.md invariant 5), and a pack's end
left by a crash is seen as such (short, or not a record).

A blob destroyed at the end of its retention (:mod:`pacs_hub.archive.destruction`) is
*erased* in place (:func:`erase`): its bytes are zeroed (a hole punched where the file
system can, so the space is freed) and its header's magic becomes ``PHUBGONE`` (same
length, no checksum), so a survey steps over it and no rebuild brings it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import struct
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pacs_hub.errors import OutOfResources

PACK_BYTES = 1 << 30
"""A pack takes no new blob once it holds this many bytes."""
PACK_SUFFIX = ".pack"
MAGIC = b"PHUBBLOB"
ERASED = b"PHUBGONE"
"""Magic of an erased record's header (its length kept, its checksum zero)."""
_PREFIX = MAGIC[:4]
_NO_DIGEST = bytes(32)
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (fallocate(2))
_ZEROS = bytes(1 << 20)
HEADER = struct.Struct("<8sQ32s")
"""A record header: magic, blob length, SHA-256 of the blob (48 bytes)."""
_sync = getattr(os, "fdatasync", os.fsync)
_RELEASE_BYTES = 64 << 20
"""A survey hands back the pages of a pack it has read past every this many bytes."""


@dataclass(frozen=True, slots=True)
class Record:
    """One blob found in a pack: ``size`` bytes at ``offset``, their recorded SHA-256."""

    offset: int
    size: int
    sha256: str


@dataclass(slots=True, eq=False)  # compared and hashed by identity
class _Pack:
    fd: int
    name: str
    pid: int
    end: int = 0
    writers: int = 0
    retired: bool = False
    synced: int = 0
    """Bytes of the pack a finished data sync made durable."""
    syncing: bool = False
    """A thread is in the data sync of this pack."""
    failed: OSError | None = None
    """Why a data sync of this pack failed: nothing written to it is known durable."""


class PackWriter:
    """Appends blobs to pack files under ``folder``; thread-safe, one per process use."""

    def __init__(
        self,
        folder: Path,
        pack_bytes: int = PACK_BYTES,
        *,
        suffix: str = PACK_SUFFIX,
        framed: bool = True,
    ) -> None:
        """``framed`` False: the blobs appended carry their own record header (the cold
        tier's, :mod:`pacs_hub.storage.cold`) and the offsets returned are theirs."""
        self.folder = folder
        self.pack_bytes = pack_bytes
        self.suffix = suffix
        self.framed = framed
        self._lock = threading.Lock()
        self._synced = threading.Condition(self._lock)
        self._pack: _Pack | None = None

    def append(self, data: bytes | memoryview, sha256: str) -> tuple[str, int]:
        """Write ``data`` (whose SHA-256 is ``sha256``) durably; return (pack file name,
        offset of the blob's first byte) once it is synced.

        Raises :class:`OutOfResources` when the disk is full (PS3.4 B.2.3, 0xA700).
        """
        return self.append_many([(data, sha256)])[0]

    def append_many(self, blobs: Sequence[tuple[bytes | memoryview, str]]) -> list[tuple[str, int]]:
        """Write several blobs, each ``(data, sha256)``, one after the other, with one data
        sync per pack they went to (one unless a pack filled up on the way); return
        each one's (pack file name, offset) once all are synced. Raises as
        :meth:`append`; then none of them may be indexed."""
        try:
            placed, ends = self._write(blobs)
            try:
                for pack, end in ends.items():
                    self._sync_through(pack, end)
            except BaseException:
                with self._lock:
                    for pack in ends:
                        self._retire(pack)
                raise
            finally:
                with self._lock:
                    for pack in ends:
                        self._release(pack)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OutOfResources(f"storage full: {os.strerror(exc.errno)}") from exc
            raise
        return [(pack.name, offset) for pack, offset in placed]

    def _sync_through(self, pack: _Pack, end: int) -> None:
        """Make ``pack`` durable at least up to offset ``end`` (group commit).

        A thread whose bytes are written syncs the pack itself unless another thread's
        data sync is in progress; then it waits for that one, and if it began before
        these bytes were written, the next sync (by this thread or another that waited)
        covers every byte written by then. Concurrent appends (the associations of a
        gateway, the requests of an HTTP process) so share their ``fdatasync`` calls.
        """
        with self._lock:
            while pack.failed is None and pack.synced < end and pack.syncing:
                self._synced.wait()
            if pack.failed is not None:
                raise OSError(pack.failed.errno, f"an earlier data sync failed: {pack.failed}")
            if pack.synced >= end:
                return
            pack.syncing = True
            target = pack.end  # appends happen under the lock: every byte before is written
        try:
            _sync(pack.fd)
        except BaseException as exc:
            with self._lock:
                if isinstance(exc, OSError):
                    pack.failed = exc
                pack.syncing = False
                self._synced.notify_all()
            raise
        with self._lock:
            pack.synced = max(pack.synced, target)
            pack.syncing = False
            self._synced.notify_all()

    def _write(
        self, blobs: Sequence[tuple[bytes | memoryview, str]]
    ) -> tuple[list[tuple[_Pack, int]], dict[_Pack, int]]:
        """Append the blobs with their record headers (not yet synced): each one's pack
        and offset, and each pack written to (counted as such until released) with the
        end of the last blob written to it, in order."""
        placed: list[tuple[_Pack, int]] = []
        ends: dict[_Pack, int] = {}
        with self._lock:
            try:
                for data, sha256 in blobs:
                    header = (
                        HEADER.pack(MAGIC, len(data), bytes.fromhex(sha256)) if self.framed else b""
                    )
                    pack = self._current(len(header) + len(data))
                    if pack not in ends:
                        pack.writers += 1
                    start = pack.end
                    pack.end += len(header) + len(data)
                    placed.append((pack, start + len(header)))
                    ends[pack] = pack.end
                    _pwrite_all(pack.fd, (header, data), start)
            except BaseException:
                for pack in ends:
                    self._retire(pack)
                    self._release(pack)
                raise
        return placed, ends

    def close(self) -> None:
        """Close the current pack (blobs already appended stay readable)."""
        with self._lock:
            if self._pack is not None:
                self._retire(self._pack)

    def __del__(self) -> None:  # the last store of this folder in this process is gone
        pack = self._pack
        if pack is not None and pack.pid == os.getpid() and pack.writers == 0:
            with contextlib.suppress(OSError):
                os.close(pack.fd)

    def _current(self, size: int) -> _Pack:
        """The pack to append ``size`` bytes to (a new one when full, or after a fork)."""
        pack = self._pack
        if pack is not None and (
            pack.pid != os.getpid() or (pack.end and pack.end + size > self.pack_bytes)
        ):
            if pack.pid == os.getpid():
                self._retire(pack)
            pack = None  # after a fork, the parent's pack is the parent's alone
        if pack is None:
            pack = self._pack = self._create()
        return pack

    def _create(self) -> _Pack:
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            sync_folder(self.folder.parent)  # the folder's own entry, before any pack in it
        name = f"{uuid.uuid4().hex}{self.suffix}"
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            sync_folder(self.folder)  # the pack's entry is durable before any blob in it
        except BaseException:
            os.close(fd)
            raise
        return _Pack(fd, name, os.getpid())

    def _retire(self, pack: _Pack) -> None:
        """No new blob goes to ``pack``; its file closes when its last writer is done."""
        if self._pack is pack:
            self._pack = None
        if not pack.retired:
            pack.retired = True
            if pack.writers == 0:
                os.close(pack.fd)

    def _release(self, pack: _Pack) -> None:
        pack.writers -= 1
        if pack.retired and pack.writers == 0:
            os.close(pack.fd)


def records(path: Path) -> Iterator[Record]:
    """Every whole blob of the pack at ``path``, in order, each checked against its
    recorded SHA-256 (erased ones left out); stops at the first place that is not a
    whole, intact record (the end a crash or a failed write left, after which a writer
    wrote nothing)."""
    for item in survey(path):
        if isinstance(item, Unreadable):
            return
        if isinstance(item, Found):
            yield item.record


@dataclass(frozen=True, slots=True)
class Found:
    """A whole blob found by :func:`survey`: its record and its bytes."""

    record: Record
    data: bytes


@dataclass(frozen=True, slots=True)
class Unreadable:
    """``length`` bytes at ``start`` of a pack that are no whole, intact record.

    ``end`` is True for the bytes after the last record that stop short of one (what a
    crash during an append leaves: never acknowledged, nothing lost); False for a
    damaged record followed by others (bit rot: what it held is lost from this pack).
    """

    start: int
    length: int
    end: bool


@dataclass(frozen=True, slots=True)
class Erased:
    """A record erased by :func:`erase`: ``size`` zeroed bytes at ``offset``."""

    offset: int
    size: int


def survey(path: Path) -> Iterator[Found | Erased | Unreadable]:
    """Every record of the pack at ``path`` in order, whole ones with their bytes, and
    each stretch that is not one.

    Unlike :func:`records`, a damaged record does not stop the reading: the next
    record is found by its magic (each candidate checked against its SHA-256, so
    magic bytes inside a blob are no record), as the index rebuild needs.
    """
    with path.open("rb") as fp:
        if os.fstat(fp.fileno()).st_size == 0:
            return
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            position, length, released = 0, len(mapped), 0
            while position < length:
                if position - released >= _RELEASE_BYTES:  # pages read: not this process's
                    done = position - position % mmap.PAGESIZE
                    mapped.madvise(mmap.MADV_DONTNEED, released, done - released)
                    released = done
                found = _record_at(mapped, position)
                if isinstance(found, Found):
                    yield found
                    position = found.record.offset + found.record.size
                    continue
                if isinstance(found, Erased):
                    yield found
                    position = found.offset + found.size
                    continue
                following = mapped.find(_PREFIX, position + 1)
                while following >= 0 and _record_at(mapped, following) is None:
                    following = mapped.find(_PREFIX, following + 1)
                stop = length if following < 0 else following
                yield Unreadable(position, stop - position, end=following < 0)
                position = stop


def _record_at(mapped: mmap.mmap, position: int) -> Found | Erased | None:
    """The whole, intact (or erased) record at ``position`` of a mapped pack, if any."""
    if len(mapped) - position < HEADER.size:
        return None
    magic, size, digest = HEADER.unpack_from(mapped, position)
    start = position + HEADER.size
    if magic == ERASED and digest == _NO_DIGEST and start + size <= len(mapped):
        return Erased(start, size)
    if magic != MAGIC or start + size > len(mapped):
        return None
    data = mapped[start : start + size]
    if hashlib.sha256(data).digest() != digest:
        return None
    return Found(Record(start, size, digest.hex()), data)


def erase(path: Path, offset: int, size: int) -> bool:
    """Erase the blob of ``size`` bytes at ``offset`` of the pack at ``path``: zero its
    bytes (punching a hole where the file system can), then mark its header erased,
    and make both durable. True when erased now, False when it already was.

    Raises ValueError when no record of that size starts there (nothing is written).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        header = os.pread(fd, HEADER.size, offset - HEADER.size) if offset >= HEADER.size else b""
        if len(header) != HEADER.size:
            raise ValueError(f"no record at {path.name}:{offset}")
        magic, length, _digest = HEADER.unpack(header)
        if length != size or magic not in (MAGIC, ERASED):
            raise ValueError(f"no record of {size} bytes at {path.name}:{offset}")
        if magic == ERASED:
            return False
        zero(fd, offset, size)
        os.pwrite(fd, HEADER.pack(ERASED, size, _NO_DIGEST), offset - HEADER.size)
        _sync(fd)
        return True
    finally:
        os.close(fd)


def zero(fd: int, offset: int, size: int) -> None:
    """Zero ``size`` bytes at ``offset``: a punched hole, else written zeros."""
    if size and _punch_hole(fd, offset, size):
        return
    end = offset + size
    while offset < end:
        offset += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), end - offset)], offset)


def _punch_hole(fd: int, offset: int, size: int) -> bool:
    """``fallocate(PUNCH_HOLE | KEEP_SIZE)``; False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return int(fallocate(fd, _PUNCH_HOLE, offset, size)) == 0


def _pwrite_all(fd: int, parts: tuple[bytes | memoryview, ...], offset: int) -> None:
    """Write ``parts`` one after the other at ``offset``, whatever ``pwritev`` takes
    at a time."""
    views = [memoryview(part).cast("B") for part in parts]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views:
            views[0] = views[0][written:]


def sync_folder(folder: Path) -> None:
    """Make ``folder``'s entries (files created, renamed in) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
