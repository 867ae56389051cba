"""Immutable, content-addressed blobs in a local folder.

A blob's key is the SHA-256 of its bytes (``ab/abcd....dcm``, 256 fan-out folders
made once), so a blob never
changes once written and the same bytes are stored once. Writes are atomic and
durable: temp file in the same file system, ``fsync``, ``rename``, ``fsync`` of the
directory; a crash leaves at worst a temp file, removed by :meth:`clean_temp`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import uuid
from pathlib import Path

from pacs_hub.errors import OutOfResources

LOGGER = logging.getLogger(__name__)
TEMP_SUFFIX = ".part"


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Blobs under ``root/blobs``, temp files under ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for prefix in range(256):
            (self.blobs / f"{prefix:02x}").mkdir(exist_ok=True)
        _fsync_dir(self.blobs)

    @staticmethod
    def key_for(sha256: str) -> str:
        """The blob key (relative path) of content whose SHA-256 is ``sha256``."""
        return f"{sha256[:2]}/{sha256}.dcm"

    def path(self, key: str) -> Path:
        """The file holding blob ``key``."""
        return self.blobs / key

    def exists(self, key: str) -> bool:
        """True when blob ``key`` is on disk."""
        return self.path(key).is_file()

    def put(self, data: bytes, sha256: str) -> str:
        """Write ``data`` durably and return its key; a no-op if it is already there.

        Raises :class:`OutOfResources` when the disk is full (PS3.4 B.2.3, 0xA700).
        """
        key = self.key_for(sha256)
        final = self.path(key)
        if final.is_file():
            return key
        temp = self.tmp / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            self._write_durably(temp, data)
            os.rename(temp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OutOfResources(f"storage full: {os.strerror(exc.errno)}") from exc
            raise
        return key

    def temp_path(self) -> Path:
        """A fresh temp file name on the blobs' file system (removed by :meth:`clean_temp`)."""
        return self.tmp / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"

    def put_file(self, temp: Path, sha256: str) -> str:
        """Move a complete temp file (from :meth:`temp_path`) in as a blob, durably.

        Used for uploads spooled to disk (STOW-RS): the bytes are not copied again.
        The temp file is consumed either way (moved in, or removed if the blob exists).
        """
        key = self.key_for(sha256)
        final = self.path(key)
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
            _fsync_dir(final.parent)
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
        return self.path(key).read_bytes()

    def verify(self, key: str, sha256: str) -> bool:
        """True when the blob's bytes still hash to ``sha256`` (integrity check)."""
        digest = hashlib.sha256()
        with self.path(key).open("rb") as fp:
            while chunk := fp.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest() == sha256

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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
