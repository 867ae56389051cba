"""The cold tier: blobs kept losslessly compressed in cold packs, read through a cache.

PRODUCT.md brick 3 asks for "lossless compression, storage tiers" (dcm4chee's
NEARLINE storage with its retrieve cache, Orthanc's ``StorageCompression``,
../shared/reference/anchors.md). A blob moved to the cold tier
(:mod:`pacs_hub.archive.tiers`) is the Part 10 file exactly as received, compressed
with Zstandard (RFC 8878, with its content checksum): decompressing it gives back the
same bytes, so its SHA-256, what C-MOVE/C-GET, WADO-RS and a restore send, and the
received transfer syntax are unchanged (no transcoding; issue 2's "stored exactly as
received"). CT and MR compress to about 40 % of their size.

Layout, under ``DATA_DIR/blobs/cold`` (a mount point for slower, cheaper storage):

* ``<uuid>.zpack`` cold packs, written by a :class:`~pacs_hub.storage.packs.PackWriter`
  (one ``pwrite`` per blob, one ``fdatasync`` per batch): each record is a
  :data:`HEADER` (magic ``PHUBZSTD``, compressed length, original length, SHA-256 of
  the original bytes) then the compressed bytes, so the index can be rebuilt from
  cold packs too (:func:`survey`); an erased record's magic is ``PHUBZGON``;
* blob keys ``cold/<pack>:<offset>:<compressed size>:<size>``.

Reading (:func:`cached_ref`): the first reader decompresses the blob into
``DATA_DIR/blobs/cold-cache`` (temp file, rename) and every reader gets a
:class:`~pacs_hub.storage.blob_ref.BlobRef` of that copy, so no reader (egress, WADO-RS,
frames, backup restore) knows the tier. The cache is trimmed to
``PACS_HUB_COLD_CACHE_MB``, least recently used first (:func:`trim_cache`), and emptied
when the hub starts (:func:`clear_cache`): a copy a power cut tore is never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from pacs_hub.storage import packs
from pacs_hub.storage.blob_ref import BlobRef, pread_all
from pacs_hub.storage.packs import Erased, PackWriter, Unreadable

COLD = "cold"
"""Folder of the cold packs under the blobs folder, and the prefix of their keys."""
CACHE = "cold-cache"
"""Folder of the decompressed copies under the blobs folder."""
SUFFIX = ".zpack"
MAGIC = b"PHUBZSTD"
ERASED = b"PHUBZGON"
_PREFIX = b"PHUBZ"
HEADER = struct.Struct("<8sQQ32s")
"""A cold record header: magic, compressed length, original length, SHA-256 of the
original bytes (56 bytes)."""
LEVEL = 3
"""Zstandard level: ~90 MB/s compression and ~350 MB/s decompression per core here for
2.5x on CT (level 19 gains 10 % more for 40x the time)."""
KEEP_SECONDS = 600.0
"""A cached copy used within this long is never trimmed (a reader may be sending it)."""
_TOUCH_SECONDS = 60.0
_NO_DIGEST = bytes(32)

_WRITERS: weakref.WeakValueDictionary[Path, PackWriter] = weakref.WeakValueDictionary()
_WRITERS_LOCK = threading.Lock()


class ColdRecordError(OSError):
    """A cold key that names no intact record (damaged pack, wrong key)."""


def is_cold(key: str) -> bool:
    """True for the key of a blob in the cold tier."""
    return key.startswith(f"{COLD}/")


def cold_key(name: str, offset: int, stored: int, size: int) -> str:
    """The key of a cold blob: ``stored`` compressed bytes at ``offset`` of pack
    ``name``, ``size`` bytes once decompressed."""
    return f"{COLD}/{name}:{offset}:{stored}:{size}"


@dataclass(frozen=True, slots=True)
class ColdPlace:
    """Where a cold blob is (:func:`place`)."""

    name: str
    offset: int
    stored: int
    size: int

    def path(self, blobs: Path) -> Path:
        return blobs / COLD / self.name


def place(key: str) -> ColdPlace:
    """The place a cold key names. Raises ValueError for a key no cold writer makes."""
    try:
        name, offset, stored, size = key[len(COLD) + 1 :].split(":")
        found = ColdPlace(name, int(offset), int(stored), int(size))
    except ValueError:
        raise ValueError(f"not a cold blob key: {key[:80]!r}") from None
    bad_name = "/" in name or name.startswith(".")
    if (
        not is_cold(key)
        or bad_name
        or found.offset < HEADER.size
        or min(found.stored, found.size) < 0
    ):
        raise ValueError(f"not a cold blob key: {key[:80]!r}")
    return found


def writer(blobs: Path) -> PackWriter:
    """The process's cold pack writer for the blobs folder ``blobs`` (kept by its
    :class:`~pacs_hub.storage.blobs.BlobStore`, shared by every store of the folder)."""
    folder = blobs / COLD
    with _WRITERS_LOCK:
        found = _WRITERS.get(folder)
        if found is None:
            found = _WRITERS[folder] = PackWriter(folder, suffix=SUFFIX, framed=False)
        return found


def put_many(pack_writer: PackWriter, items: Sequence[tuple[bytes, str]]) -> list[str]:
    """Compress each ``(data, sha256)`` and append them with ``pack_writer``
    (:func:`writer`), made durable with one data sync; their cold keys, in order.
    Raises as :meth:`PackWriter.append_many` (:class:`~pacs_hub.errors.OutOfResources`
    when the disk is full)."""
    compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
    records: list[tuple[bytes | memoryview, str]] = []
    sizes: list[tuple[int, int]] = []
    for data, sha256 in items:
        packed = compressor.compress(data)
        header = HEADER.pack(MAGIC, len(packed), len(data), bytes.fromhex(sha256))
        records.append((header + packed, sha256))
        sizes.append((len(packed), len(data)))
    placed = pack_writer.append_many(records)
    return [
        cold_key(name, start + HEADER.size, stored, size)
        for (name, start), (stored, size) in zip(placed, sizes, strict=True)
    ]


def read(blobs: Path, key: str) -> bytes:
    """The original bytes of cold blob ``key``. Raises FileNotFoundError when its pack
    is gone or the record erased, :class:`ColdRecordError` when the record is damaged."""
    where = place(key)
    fd = os.open(where.path(blobs), os.O_RDONLY)
    try:
        raw = pread_all(fd, HEADER.size + where.stored, where.offset - HEADER.size)
    finally:
        os.close(fd)
    if len(raw) < HEADER.size + where.stored:
        raise ColdRecordError(f"cold record {where.name}@{where.offset} cut short")
    magic, stored, size, _digest = HEADER.unpack_from(raw)
    if magic == ERASED:
        raise FileNotFoundError(f"cold record {where.name}@{where.offset} erased")
    if magic != MAGIC or stored != where.stored or size != where.size:
        raise ColdRecordError(f"no cold record at {where.name}@{where.offset}")
    try:
        data = zstandard.ZstdDecompressor().decompress(
            memoryview(raw)[HEADER.size :], max_output_size=size
        )
    except zstandard.ZstdError as exc:
        raise ColdRecordError(f"cold record {where.name}@{where.offset} damaged: {exc}") from None
    if len(data) != size:
        raise ColdRecordError(f"cold record {where.name}@{where.offset} decompresses short")
    return data


def problem(blobs: Path, key: str, sha256: str) -> str | None:
    """What is wrong with cold blob ``key`` (None: it decompresses to bytes hashing to
    ``sha256``); the words of :meth:`~pacs_hub.storage.blobs.BlobStore.problem`."""
    try:
        data = read(blobs, key)
    except (FileNotFoundError, ValueError):
        return "missing"
    except ColdRecordError as exc:
        return f"unreadable: {exc}"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return None if hashlib.sha256(data).hexdigest() == sha256 else "checksum mismatch"


def exists(blobs: Path, key: str) -> bool:
    """True when cold blob ``key``'s record is there, whole and not erased (its bytes
    are not decompressed)."""
    try:
        where = place(key)
        fd = os.open(where.path(blobs), os.O_RDONLY)
    except (OSError, ValueError):
        return False
    try:
        header = os.pread(fd, HEADER.size, where.offset - HEADER.size)
        length = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if len(header) != HEADER.size:
        return False
    magic, stored, size, _digest = HEADER.unpack(header)
    return (
        magic == MAGIC
        and (stored, size) == (where.stored, where.size)
        and where.offset + stored <= length
    )


def _cache_file(blobs: Path, where: ColdPlace) -> Path:
    return blobs / CACHE / f"{Path(where.name).stem}-{where.offset}.dcm"


def cached_ref(blobs: Path, key: str) -> BlobRef:
    """A :class:`BlobRef` of the decompressed copy of cold blob ``key``, made now if the
    cache has none. Raises as :func:`read`."""
    where = place(key)
    path = _cache_file(blobs, where)
    try:
        status = path.stat()
    except FileNotFoundError:
        status = None
    if status is not None and status.st_size == where.size:
        if time.time() - status.st_mtime > _TOUCH_SECONDS:
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: trimmed last
        return BlobRef(path, 0, where.size)
    data = read(blobs, key)
    path.parent.mkdir(exist_ok=True)
    temporary = path.with_name(f".{uuid.uuid4().hex}.part")
    try:
        with temporary.open("wb") as fp:
            fp.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return BlobRef(path, 0, where.size)


def erase(blobs: Path, key: str) -> bool:
    """Erase cold blob ``key`` durably (zeroed, a hole punched where the file system
    can, its header's magic ``PHUBZGON``) and drop its cached copy. True when erased
    now, False when it already was or its pack is gone. Raises ValueError when no
    record of that size starts there."""
    where = place(key)
    with contextlib.suppress(FileNotFoundError):
        _cache_file(blobs, where).unlink()
    try:
        fd = os.open(where.path(blobs), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        header = os.pread(fd, HEADER.size, where.offset - HEADER.size)
        if len(header) != HEADER.size:
            raise ValueError(f"no cold record at {where.name}:{where.offset}")
        magic, stored, size, _digest = HEADER.unpack(header)
        if magic not in (MAGIC, ERASED) or (stored, size) != (where.stored, where.size):
            raise ValueError(f"no cold record of that size at {where.name}:{where.offset}")
        if magic == ERASED:
            return False
        packs.zero(fd, where.offset, where.stored)
        os.pwrite(fd, HEADER.pack(ERASED, stored, size, _NO_DIGEST), where.offset - HEADER.size)
        os.fdatasync(fd)
        return True
    finally:
        os.close(fd)


def clear_cache(blobs: Path) -> int:
    """Remove every cached copy (at hub start); how many were removed."""
    removed = 0
    for path in (blobs / CACHE).glob("*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


@dataclass(frozen=True, slots=True)
class CacheUse:
    files: int
    bytes: int
    removed: int = 0


def _cache_entries(blobs: Path) -> list[tuple[float, int, str]]:
    """(last used, size, path) of every cached copy."""
    entries = []
    with contextlib.suppress(FileNotFoundError), os.scandir(blobs / CACHE) as found:
        for entry in found:
            with contextlib.suppress(FileNotFoundError):
                status = entry.stat()
                entries.append((status.st_mtime, status.st_size, entry.path))
    return entries


def cache_use(blobs: Path) -> CacheUse:
    """What the cache holds."""
    entries = _cache_entries(blobs)
    return CacheUse(len(entries), sum(size for _when, size, _path in entries))


def trim_cache(blobs: Path, max_bytes: int, keep_seconds: float = KEEP_SECONDS) -> CacheUse:
    """Remove the least recently used copies until the cache holds at most ``max_bytes``
    (never one used in the last ``keep_seconds``); what it holds then."""
    entries = _cache_entries(blobs)
    total = sum(size for _when, size, _path in entries)
    removed = 0
    horizon = time.time() - keep_seconds
    for when, size, path in sorted(entries):
        if total <= max_bytes or when > horizon:
            break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
        total -= size
    return CacheUse(len(entries) - removed, total, removed)


@dataclass(frozen=True, slots=True)
class Found:
    """A whole cold blob found by :func:`survey`: its key, SHA-256 and original bytes."""

    key: str
    sha256: str
    data: bytes
    end: int
    """Position in the pack just past the record."""


def cold_packs(blobs: Path) -> list[Path]:
    """The cold packs under the blobs folder."""
    return sorted((blobs / COLD).glob(f"*{SUFFIX}"))


def survey(path: Path) -> Iterator[Found | Erased | Unreadable]:
    """Every record of the cold pack at ``path`` in order, decompressed and checked
    against its SHA-256, and each stretch that is not one (read as
    :func:`pacs_hub.storage.packs.survey` reads a pack)."""
    with path.open("rb") as fp:
        if os.fstat(fp.fileno()).st_size == 0:
            return
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            position, length = 0, len(mapped)
            while position < length:
                found = _record_at(path.name, mapped, position)
                if found is not None:
                    yield found
                    position = found.offset + found.size if isinstance(found, Erased) else found.end
                    continue
                following = mapped.find(_PREFIX, position + 1)
                while following >= 0 and _record_at(path.name, mapped, following) is None:
                    following = mapped.find(_PREFIX, following + 1)
                stop = length if following < 0 else following
                yield Unreadable(position, stop - position, end=following < 0)
                position = stop


def _record_at(name: str, mapped: mmap.mmap, position: int) -> Found | Erased | None:
    if len(mapped) - position < HEADER.size:
        return None
    magic, stored, size, digest = HEADER.unpack_from(mapped, position)
    start = position + HEADER.size
    if start + stored > len(mapped):
        return None
    if magic == ERASED and digest == _NO_DIGEST:
        return Erased(start, stored)
    if magic != MAGIC:
        return None
    try:
        data = zstandard.ZstdDecompressor().decompress(
            mapped[start : start + stored], max_output_size=size
        )
    except zstandard.ZstdError:
        return None
    if len(data) != size or hashlib.sha256(data).digest() != digest:
        return None
    return Found(cold_key(name, start, stored, size), digest.hex(), data, start + stored)
