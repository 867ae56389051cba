"""Immutable blobs in a local folder: pack files for most, a file each for the largest.

Each stored instance is a blob, named by a key the index keeps (``instances.blob_key``):

* ``packs/<pack>:<offset>:<size>``: ``size`` bytes at ``offset`` of a pack file
  (:mod:`pacs_hub.storage.packs`), for every blob of at most :data:`PACKED_MAX` bytes
  written by :meth:`BlobStore.put`: one ``pwrite`` and one ``fdatasync`` each;
* ``ab/abcd....dcm``: a file of its own named by the SHA-256 of its bytes (256 fan-out
  folders made once), for larger blobs and for uploads spooled to a file (STOW-RS,
  :meth:`BlobStore.put_file`), and for every blob written before pack files existed.
  Written atomically and durably: temp file in the same file system, ``fsync``,
  ``rename``, ``fsync`` of the folder; a crash leaves at worst a temp file, removed by
  :meth:`BlobStore.clean_temp`;
* ``cold/<pack>:<offset>:<stored>:<size>``: a blob moved to the cold tier, compressed
  losslessly in a cold pack under ``cold/`` (:mod:`pacs_hub.storage.cold`), read
  through a decompressed copy.

A blob never changes once written. Readers get a :class:`~pacs_hub.storage.blob_ref.BlobRef`
from :meth:`BlobStore.ref`, the same for both kinds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path

from pacs_hub.errors import OutOfResources
from pacs_hub.storage import cold, packs
from pacs_hub.storage.blob_ref import BlobRef
from pacs_hub.storage.packs import PackWriter, sync_folder

LOGGER = logging.getLogger(__name__)
TEMP_SUFFIX = ".part"
PACKS = "packs"
PACKED_MAX = 16 * 1024 * 1024
"""Blobs up to this size go to pack files; larger ones get a file each (they are sent
from their file by C-MOVE/C-GET, gateway/egress.py, and their own cost dwarfs a file's)."""

_WRITERS: weakref.WeakValueDictionary[Path, PackWriter] = weakref.WeakValueDictionary()
_WRITERS_LOCK = threading.Lock()


def _pack_writer(folder: Path) -> PackWriter:
    """The process's pack writer for ``folder``, shared by every store of that folder."""
    with _WRITERS_LOCK:
        writer = _WRITERS.get(folder)
        if writer is None:
            writer = _WRITERS[folder] = PackWriter(folder)
        return writer


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


class BadBlobKey(ValueError):
    """A blob key that is neither a pack range nor a blob file name."""


class BlobStore:
    """Blobs under ``root/blobs`` (pack files in ``root/blobs/packs``), temp files
    under ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for prefix in range(256):
            (self.blobs / f"{prefix:02x}").mkdir(exist_ok=True)
        (self.blobs / PACKS).mkdir(exist_ok=True)
        sync_folder(self.blobs)  # the folders' entries are durable before any blob in them
        self._packs = _pack_writer(self.blobs / PACKS)
        self._cold: PackWriter | None = None

    @staticmethod
    def key_for(sha256: str) -> str:
        """The key of a blob file whose bytes have the SHA-256 ``sha256``."""
        return f"{sha256[:2]}/{sha256}.dcm"

    def ref(self, key: str, size: int | None = None) -> BlobRef:
        """Where blob ``key`` is (:func:`blob_ref`)."""
        return blob_ref(self.blobs, key, size)

    def exists(self, key: str) -> bool:
        """True when blob ``key`` is on disk, whole."""
        if cold.is_cold(key):
            return cold.exists(self.blobs, key)
        try:
            ref = self.ref(key)
            return ref.offset + ref.size <= ref.file.stat().st_size
        except (OSError, BadBlobKey):
            return False

    def put(self, data: bytes, sha256: str) -> str:
        """Write ``data`` durably and return its key.

        Raises :class:`OutOfResources` when the disk is full (PS3.4 B.2.3, 0xA700).
        """
        if len(data) <= PACKED_MAX:
            name, offset = self._packs.append(data, sha256)
            return pack_key(name, offset, len(data))
        key = self.key_for(sha256)
        final = _blob_file(self.blobs, key)
        if final.is_file():
            return key
        temp = self.tmp / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            self._write_durably(temp, data)
            os.rename(temp, final)
            sync_folder(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OutOfResources(f"storage full: {os.strerror(exc.errno)}") from exc
            raise
        return key

    def put_many(self, blobs: Sequence[tuple[bytes, str]]) -> list[str]:
        """:meth:`put` for several ``(data, sha256)`` at once: those that go to packs are
        appended together with one data sync (:meth:`PackWriter.append_many`). Raises as
        :meth:`put`; then none of the keys may be indexed."""
        packed = [(n, blob) for n, blob in enumerate(blobs) if len(blob[0]) <= PACKED_MAX]
        keys = [""] * len(blobs)
        if packed:
            places = self._packs.append_many([blob for _n, blob in packed])
            for (n, (data, _sha)), (name, offset) in zip(packed, places, strict=True):
                keys[n] = pack_key(name, offset, len(data))
        for n, (data, sha256) in enumerate(blobs):
            if not keys[n]:
                keys[n] = self.put(data, sha256)
        return keys

    def put_cold(self, blobs: Sequence[tuple[bytes, str]]) -> list[str]:
        """Write ``(data, sha256)`` blobs to the cold tier, compressed, with one data sync
        (:func:`cold.put_many`); their keys. Raises as :meth:`put`."""
        if self._cold is None:
            self._cold = cold.writer(self.blobs)
        return cold.put_many(self._cold, blobs)

    def temp_path(self) -> Path:
        """A fresh temp file name on the blobs' file system (removed by :meth:`clean_temp`)."""
        return self.tmp / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"

    def put_file(self, temp: Path, sha256: str) -> str:
        """Move a complete temp file (from :meth:`temp_path`) in as a blob, durably.

        Used for uploads spooled to disk (STOW-RS): the bytes are not copied again.
        The temp file is consumed either way (moved in, or removed if the blob exists).
        """
        key = self.key_for(sha256)
        final = _blob_file(self.blobs, key)
        try:
            if final.is_file():
                temp.unlink()
                return key
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, final)
            sync_folder(final.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OutOfResources(f"storage full: {os.strerror(exc.errno)}") from exc
            raise
        return key

    @staticmethod
    def _write_durably(temp: Path, data: bytes) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, key: str) -> bytes:
        """The bytes of blob ``key``."""
        return self.ref(key).read_bytes()

    def verify(self, key: str, sha256: str) -> bool:
        """True when the blob is whole and its bytes still hash to ``sha256``
        (integrity check); False too when it is missing."""
        return self.problem(key, sha256) is None

    def problem(self, key: str, sha256: str, size: int | None = None) -> str | None:
        """What is wrong with blob ``key`` (None: it is whole and hashes to ``sha256``):
        ``missing``, ``truncated (N of M bytes)``, ``checksum mismatch`` or
        ``unreadable: <reason>``. ``size`` is the recorded size (default: the key's
        range, or the blob file's length)."""
        if cold.is_cold(key):
            return cold.problem(self.blobs, key, sha256)
        digest = hashlib.sha256()
        got = 0
        try:
            ref = self.ref(key, size)
            for chunk in ref.chunks():
                digest.update(chunk)
                got += len(chunk)
        except (FileNotFoundError, BadBlobKey):
            return "missing"
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        if got < ref.size:
            return f"truncated ({got} of {ref.size} bytes)" if got else "missing"
        if digest.hexdigest() != sha256:
            return "checksum mismatch"
        return None

    def erase(self, key: str) -> bool:
        """Destroy blob ``key`` durably (:mod:`pacs_hub.archive.destruction`): a pack
        record erased in place (:func:`packs.erase`), a blob file removed and its folder
        synced. True when destroyed now, False when it already was. The caller makes
        sure no indexed instance names the blob any more."""
        if cold.is_cold(key):
            return cold.erase(self.blobs, key)
        if key.startswith(f"{PACKS}/"):
            name, offset, size = _pack_range(key)
            try:
                return packs.erase(self.blobs / PACKS / name, offset, size)
            except FileNotFoundError:
                return False
        path = _blob_file(self.blobs, key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        sync_folder(path.parent)
        return True

    def clean_temp(self) -> int:
        """Remove temp files left by a crash; return how many were removed."""
        removed = 0
        for temp in self.tmp.glob(f"*{TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                removed += 1
        if removed:
            LOGGER.warning("removed %d orphan temp file(s) from an interrupted write", removed)
        return removed


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def blob_ref(blobs: Path, key: str, size: int | None = None) -> BlobRef:
    """Where blob ``key`` of the blobs folder ``blobs`` is; ``size``, when the caller
    knows it, spares a ``stat`` of a blob file. Raises :class:`BadBlobKey` for a key no
    store writes (nothing outside ``blobs`` can be named). A cold blob is decompressed
    into the cold tier's cache when it is not there yet (:func:`cold.cached_ref`)."""
    if cold.is_cold(key):
        try:
            return cold.cached_ref(blobs, key)
        except ValueError as exc:
            raise BadBlobKey(str(exc)) from None
    if key.startswith(f"{PACKS}/"):
        name, offset, length = _pack_range(key)
        return BlobRef(blobs / PACKS / name, offset, length)
    path = _blob_file(blobs, key)
    if size is None:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # missing: reading it raises, as reading the file would
    return BlobRef(path, 0, size)


def _blob_file(blobs: Path, key: str) -> Path:
    """The blob file of a ``ab/<sha256>.dcm`` key."""
    folder, _, name = key.partition("/")
    if len(folder) != 2 or "/" in name or not name.endswith(".dcm") or ".." in key:
        raise BadBlobKey(f"not a blob key: {key[:80]!r}")
    return blobs / folder / name


def pack_key(name: str, offset: int, size: int) -> str:
    """The key of a blob in a pack (read back by :func:`_pack_range`)."""
    return f"{PACKS}/{name}:{offset}:{size}"


def _pack_range(key: str) -> tuple[str, int, int]:
    """(pack file name, offset, size) of a ``packs/<pack>:<offset>:<size>`` key."""
    try:
        name, offset, size = key[len(PACKS) + 1 :].split(":")
        start, length = int(offset), int(size)
    except ValueError:
        raise BadBlobKey(f"not a pack blob key: {key[:80]!r}") from None
    if "/" in name or name.startswith(".") or start < 0 or length < 0:
        raise BadBlobKey(f"not a pack blob key: {key[:80]!r}")
    return name, start, length
