"""Where one stored instance's Part 10 bytes are, and how to read them.

A blob is ``size`` bytes at ``offset`` of a file: a whole file of its own (``offset``
0, the file's length), or a range of a pack file shared with other blobs
(:mod:`pacs_hub.storage.packs`). Every reader of stored instances (C-MOVE/C-GET
egress, WADO-RS, frames, rendered images, post-processing, integrity checks) goes
through a :class:`BlobRef`, so none of them cares which.

:meth:`BlobRef.open` gives a seekable binary stream whose positions are the blob's
own (0 is the preamble of PS3.10 7.1), which pydicom reads like a file. It has no
``name``: pydicom then reads deferred values back from the stream itself, never by
re-opening a file name (which, for a pack, would be the whole pack). The stream
closes its file when closed or when the last reference to it goes, so a dataset
read with deferred values keeps its stream alive for as long as it needs it. For one
kept for long (a cached frame layout, :func:`pacs_hub.dicom.frames.read_header`),
:meth:`BlobReader.release` closes the file until a deferred value is read.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

CHUNK = 1 << 20
READ_AHEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class BlobRef:
    """``size`` bytes at ``offset`` of ``file``: one stored Part 10 instance."""

    file: Path
    offset: int
    size: int

    @classmethod
    def whole(cls, path: Path) -> BlobRef:
        """A file that is one blob by itself."""
        return cls(path, 0, path.stat().st_size)

    @property
    def label(self) -> str:
        """A short name for logs and errors (file name and range; no patient data)."""
        if self.offset == 0:
            return self.file.name
        return f"{self.file.name}@{self.offset}"

    @property
    def whole_file(self) -> bool:
        """True when the blob is its file, all of it (not a range of a pack)."""
        try:
            return self.offset == 0 and self.file.stat().st_size == self.size
        except OSError:
            return False

    def open(self) -> BinaryIO:
        """A seekable binary stream over the blob's bytes alone (a :class:`BlobReader`)."""
        return cast(BinaryIO, BlobReader(self))

    def pread(self, start: int, length: int) -> bytes:
        """``length`` bytes from position ``start`` of the blob (fewer at its end)."""
        start = max(0, min(start, self.size))
        length = max(0, min(length, self.size - start))
        fd = os.open(self.file, os.O_RDONLY)
        try:
            return pread_all(fd, length, self.offset + start)
        finally:
            os.close(fd)

    def read_bytes(self) -> bytes:
        """The whole blob."""
        return self.pread(0, self.size)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The blob's bytes, ``size`` bytes at a time."""
        fd = os.open(self.file, os.O_RDONLY)
        try:
            done = 0
            while done < self.size:
                chunk = pread_all(fd, min(size, self.size - done), self.offset + done)
                if not chunk:
                    return
                done += len(chunk)
                yield chunk
        finally:
            os.close(fd)


def pread_all(fd: int, length: int, position: int) -> bytes:
    """``length`` bytes at ``position`` of ``fd``, fewer only at the end of the file."""
    data = os.pread(fd, length, position)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, position + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class BlobReader(io.RawIOBase):
    """A read-only, seekable stream over one :class:`BlobRef`, with a read-ahead buffer.

    Not an ``io.BufferedReader`` and without ``name`` on purpose (see the module
    docstring): pydicom keeps it as the buffer of the datasets it reads from it.
    """

    def __init__(self, ref: BlobRef) -> None:
        super().__init__()
        self._ref = ref
        self._fd: int | None = os.open(ref.file, os.O_RDONLY)  # missing: raises here
        self._position = 0
        self._buffer = b""
        self._buffer_at = 0  # blob position of self._buffer[0]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._position + offset
        elif whence == os.SEEK_END:
            target = self._ref.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError(f"negative seek position {target}")
        self._position = target
        return target

    def release(self) -> None:
        """Close the file and drop the read-ahead, the stream staying usable: the next
        read opens the file again. For a dataset kept with deferred values (a cached
        frame layout) that holds no file open while it waits."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._buffer = b""

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed blob")
        if self._fd is None:
            self._fd = os.open(self._ref.file, os.O_RDONLY)
        remaining = self._ref.size - self._position
        if size is None or size < 0 or size > remaining:
            size = max(0, remaining)
        if size == 0:
            return b""
        start = self._position - self._buffer_at
        if start >= 0 and start + size <= len(self._buffer):
            self._position += size
            return self._buffer[start : start + size]
        if size >= READ_AHEAD:
            data = pread_all(self._fd, size, self._ref.offset + self._position)
        else:
            ahead = min(READ_AHEAD, remaining)
            self._buffer = pread_all(self._fd, ahead, self._ref.offset + self._position)
            self._buffer_at = self._position
            data = self._buffer[:size]
        self._position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.release()
        super().close()
