"""Streaming reader of a ``multipart/related`` request body (RFC 2387, RFC 2046 5.1).

STOW-RS (PS3.18 10.5) bodies can be gigabytes: :class:`MultipartSpooler` is fed the
body chunk by chunk and keeps each part's content in memory while the request's
parts together stay within ``memory_budget`` bytes (the usual images: stored from
memory, appended to a pack file with no temp file), else writes it to a temp file of
the blob store as it comes, so memory stays bounded by the budget plus the chunk
size and the boundary. Parts are only handed over once the closing delimiter has
been read: a truncated or malformed body raises :class:`MalformedMultipart` and
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAX_HEADER_BYTES = 16384
MAX_BOUNDARY = 256
_TOKEN_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MalformedMultipart(ValueError):
    """The body does not follow the multipart syntax of RFC 2046 5.1.1."""


def media_type(header: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-case media type and parameters."""
    media = header.split(";", 1)[0].strip().lower()
    params = {}
    for name, raw in _TOKEN_PARAM.findall(header[len(header.split(";", 1)[0]) :]):
        value = raw.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[name.lower()] = value
    return media, params


@dataclass
class Part:
    """One body part: its headers (lower-case names) and its content, in memory
    (``data``) or in a temp file (``path``)."""

    headers: dict[str, str]
    path: Path | None = None
    data: bytearray | None = None
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256, repr=False)
    """SHA-256 of the content, fed as it is written (the blob key; no second read)."""

    @property
    def sha256(self) -> str:
        """The content's SHA-256 as 64 hex digits (once the part is complete)."""
        return str(self.digest.hexdigest())

    @property
    def content_type(self) -> str:
        """The part's Content-Type header ('' when absent)."""
        return self.headers.get("content-type", "")


@dataclass
class MultipartSpooler:
    """Feed body bytes with :meth:`feed`, then :meth:`finish` to get the parts."""

    boundary: str
    new_temp: Callable[[], Path]
    memory_budget: int = 0
    """Bytes of part content this body may hold in memory (0: every part to a file)."""
    parts: list[Part] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _state: str = "preamble"  # preamble, delimiter, headers, body, epilogue
    _file: BinaryIO | None = None
    _held: int = 0  # bytes of part content in memory

    def __post_init__(self) -> None:
        # RFC 2046 5.1.1 says at most 70 characters; Orthanc's DICOMweb client sends more.
        if not 1 <= len(self.boundary) <= MAX_BOUNDARY:
            raise MalformedMultipart(f"boundary must be 1 to {MAX_BOUNDARY} characters")
        self._first = b"--" + self.boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._first

    def feed(self, chunk: bytes) -> None:
        """Consume the next bytes of the body."""
        self._buffer += chunk
        while self._step():
            pass

    def _step(self) -> bool:
        if self._state == "preamble":
            return self._preamble()
        if self._state == "headers":
            return self._headers()
        if self._state == "body":
            return self._body()
        if self._state == "delimiter":
            return self._after_delimiter()
        self._buffer.clear()  # epilogue: ignored
        return False

    def _preamble(self) -> bool:
        if self._buffer.startswith(self._first):
            start = 0
        else:
            start = self._buffer.find(self._delimiter)
            if start < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise MalformedMultipart("no opening boundary delimiter found")
                return False
            start += 2
        del self._buffer[: start + len(self._first)]
        self._state = "delimiter"
        return True

    def _after_delimiter(self) -> bool:
        """After ``--boundary``: ``--`` closes the body, else the line must end."""
        at = 0
        if len(self._buffer) < at + 2:
            return False
        if self._buffer[at : at + 2] == b"--":
            self._state = "epilogue"
            return True
        end = self._buffer.find(b"\r\n", at)
        if end < 0:
            if len(self._buffer) - at > 256:
                raise MalformedMultipart("boundary delimiter line is not terminated by CRLF")
            return False
        if self._buffer[at:end].strip(b" \t"):
            raise MalformedMultipart("unexpected text after a boundary delimiter")
        del self._buffer[: end + 2]
        self._state = "headers"
        return True

    def _headers(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if self._buffer.startswith(b"\r\n"):
            end, raw = 0, b""
        elif end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MalformedMultipart("part headers longer than 16 KiB")
            return False
        else:
            raw = bytes(self._buffer[:end])
        headers: dict[str, str] = {}
        for line in raw.decode("latin-1").split("\r\n") if raw else []:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise MalformedMultipart(f"malformed part header line {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        del self._buffer[: end + (2 if end == 0 else 4)]
        self.parts.append(Part(headers, data=bytearray()))
        self._state = "body"
        return True

    def _body(self) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                self._write(len(self._buffer) - keep)
            return False
        self._write(found)
        if self._file is not None:
            self._file.close()
            self._file = None
        del self._buffer[: len(self._delimiter)]
        self._state = "delimiter"
        return True

    def _write(self, count: int) -> None:
        part = self.parts[-1]
        data = self._buffer[:count]
        if part.data is not None and self._held + count > self.memory_budget:
            self._spill(part)
        if part.data is not None:
            part.data += data
            self._held += count
        else:
            assert self._file is not None
            self._file.write(data)
        part.digest.update(data)
        part.size += count
        del self._buffer[:count]

    def _spill(self, part: Part) -> None:
        """Move the part to a temp file: the body's parts would exceed the budget."""
        assert part.data is not None
        part.path = self.new_temp()
        self._file = part.path.open("xb")
        self._file.write(part.data)
        self._held -= len(part.data)
        part.data = None

    def finish(self) -> list[Part]:
        """The parts, once the closing delimiter was read; else MalformedMultipart."""
        if self._state != "epilogue":
            raise MalformedMultipart("body ended before the closing boundary delimiter")
        return self.parts

    def discard(self) -> None:
        """Close and remove every temp file still here (parts not consumed)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for part in self.parts:
            if part.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    part.path.unlink()
