"""Part 10 files written byte by byte (PS3.5 7.1, 7.5; PS3.10 7.1), for tests.

pydicom refuses to write many of the values a modality may send (an IS of "1.0",
a US of 3 bytes, a UN sequence of implicit VR items): these helpers encode any
element as given, in any of the three uncompressed transfer syntaxes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import DicomDictionary

LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class Syntax:
    """An uncompressed transfer syntax (PS3.5 A.1, A.2, A.3)."""

    uid: str
    implicit: bool
    little: bool

    @property
    def order(self) -> str:
        return "<" if self.little else ">"


IMPLICIT_LE = Syntax("1.2.840.10008.1.2", True, True)
EXPLICIT_LE = Syntax("1.2.840.10008.1.2.1", False, True)
EXPLICIT_BE = Syntax("1.2.840.10008.1.2.2", False, False)
SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE)


def numbers(syntax: Syntax, fmt: str, *values: float) -> bytes:
    """Binary values in the syntax's byte order."""
    return struct.pack(f"{syntax.order}{len(values)}{fmt}", *values)


def element(syntax: Syntax, tag: int, vr: str, value: bytes, *, undefined: bool = False) -> bytes:
    """One data element; ``undefined`` writes the length as FFFFFFFFH (value as given)."""
    group, elem = tag >> 16, tag & 0xFFFF
    length = UNDEFINED if undefined else len(value)
    if syntax.implicit:
        return struct.pack(f"{syntax.order}HHL", group, elem, length) + value
    if vr in LONG_LENGTH_VRS:
        header = struct.pack(f"{syntax.order}HH2sHL", group, elem, vr.encode(), 0, length)
        return header + value
    return struct.pack(f"{syntax.order}HH2sH", group, elem, vr.encode(), length) + value


def item(syntax: Syntax, body: bytes, *, undefined: bool = False) -> bytes:
    """A sequence item (PS3.5 7.5.1) of defined or undefined length."""
    if undefined:
        header = struct.pack(f"{syntax.order}HHL", 0xFFFE, 0xE000, UNDEFINED)
        return header + body + struct.pack(f"{syntax.order}HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack(f"{syntax.order}HHL", 0xFFFE, 0xE000, len(body)) + body


def sequence(
    syntax: Syntax, tag: int, items: list[bytes], *, undefined: bool = False, vr: str = "SQ"
) -> bytes:
    """A sequence element holding ``items`` (already encoded)."""
    body = b"".join(items)
    if undefined:
        body += struct.pack(f"{syntax.order}HHL", 0xFFFE, 0xE0DD, 0)
    return element(syntax, tag, vr, body, undefined=undefined)


def fragments(syntax: Syntax, tag: int, frames: list[bytes]) -> bytes:
    """Encapsulated pixel data (PS3.5 A.4): empty offset table, one fragment per frame."""
    body = item(syntax, b"") + b"".join(item(syntax, frame) for frame in frames)
    body += struct.pack(f"{syntax.order}HHL", 0xFFFE, 0xE0DD, 0)
    return element(syntax, tag, "OB", body, undefined=True)


def text(value: str, encoding: str = "latin-1") -> bytes:
    """A string value padded to even length with a space (PS3.5 6.2)."""
    raw = value.encode(encoding)
    return raw + b" " if len(raw) % 2 else raw


def part10(syntax: Syntax, body: bytes, sop_instance_uid: str = "1.2.3.4") -> bytes:
    """Preamble, DICM and File Meta (explicit VR little endian), then ``body``."""
    meta_syntax = EXPLICIT_LE
    meta = b"".join(
        (
            element(meta_syntax, 0x00020001, "OB", b"\x00\x01"),
            element(meta_syntax, 0x00020002, "UI", _uid("1.2.840.10008.5.1.4.1.1.7")),
            element(meta_syntax, 0x00020003, "UI", _uid(sop_instance_uid)),
            element(meta_syntax, 0x00020010, "UI", _uid(syntax.uid)),
        )
    )
    group_length = element(meta_syntax, 0x00020000, "UL", struct.pack("<L", len(meta)))
    return b"\x00" * 128 + b"DICM" + group_length + meta + body


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


@lru_cache(maxsize=256)
def tag_with_vr(vr: str, skip: int = 0) -> int:
    """A public, current tag whose dictionary VR is ``vr`` (for implicit VR datasets)."""
    found = [
        tag
        for tag, entry in sorted(DicomDictionary.items())
        if entry[0] == vr and not entry[3] and tag >> 16 >= 0x0008 and tag & 0xFFFF
        if tag >> 16 not in (0x7FE0, 0xFFFE) and tag != 0x00080005
    ]
    return found[skip % len(found)]
