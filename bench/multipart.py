"""multipart/related for the DICOMweb benchmark (PS3.18 8.6.1.2): count parts in a
streamed answer, take the one part of a frame answer, build STOW-RS bodies.

Only what the benchmark needs to check an answer is whole; it is not a general parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

STOW_BOUNDARY = "pacs-hub-bench-7d3f1c2a9b"


class BadMultipart(ValueError):
    """An answer that is not the multipart body expected."""


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a multipart Content-Type header."""
    media, _, rest = content_type.partition(";")
    if media.strip().lower() != "multipart/related":
        raise BadMultipart(f"expected multipart/related, got {content_type[:80]!r}")
    for param in _params(rest):
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"')
    raise BadMultipart(f"no boundary in {content_type[:120]!r}")


def _params(text: str) -> list[str]:
    """Split media type parameters on ';' outside double quotes."""
    out, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return [p for p in out if p.strip()]


class PartCounter:
    """Counts the delimiter lines of a body fed chunk by chunk (chunk edges handled)."""

    def __init__(self, boundary: str) -> None:
        self.delimiter = b"--" + boundary.encode("ascii")
        self.delimiters = 0
        self.bytes = 0
        self._tail = b""
        self._end = b""

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        window = self._tail + chunk
        self.delimiters += window.count(self.delimiter)
        # one byte shorter than a delimiter: nothing counted is counted again
        self._tail = window[1 - len(self.delimiter) :]
        keep = len(self.delimiter) + 4
        self._end = (self._end + chunk[-keep:])[-keep:]

    def parts(self) -> int:
        """Number of parts; raise if the body does not end with the closing delimiter."""
        if not self.bytes or self.delimiter + b"--" not in self._end:
            raise BadMultipart("the body does not end with its closing delimiter")
        return self.delimiters - 1


def single_part(body: bytes, boundary: str) -> bytes:
    """The payload of a body with exactly one part (headers and CRLFs stripped)."""
    delimiter = b"--" + boundary.encode("ascii")
    pieces = body.split(b"\r\n" + delimiter)
    if not body.startswith(delimiter) or len(pieces) != 2 or not pieces[1].startswith(b"--"):
        raise BadMultipart(f"expected exactly one part, found {len(pieces) - 1} delimiters")
    _, sep, payload = pieces[0].partition(b"\r\n\r\n")
    if not sep:
        raise BadMultipart("the part has no header/body separator")
    return payload


def stow_body(paths: Sequence[Path], boundary: str = STOW_BOUNDARY) -> bytes:
    """A STOW-RS request body: one ``application/dicom`` part per Part 10 file."""
    return b"".join(_stow_parts(paths, boundary.encode("ascii")))


def _stow_parts(paths: Iterable[Path], boundary: bytes) -> Iterable[bytes]:
    for path in paths:
        yield b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
        yield path.read_bytes()
        yield b"\r\n"
    yield b"--" + boundary + b"--\r\n"


def stow_content_type(boundary: str = STOW_BOUNDARY) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'
