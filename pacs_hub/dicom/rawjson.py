"""DICOM JSON (PS3.18 Annex F.2) of raw data elements, without pydicom's conversion.

pydicom keeps each element of a dataset it read as a ``RawDataElement`` (the
encoded bytes) until it is used; converting one costs a ``DataElement`` with typed
values. This module goes from the bytes to the JSON value directly, with the
dataset's byte order, VR explicitness and Specific Character Set, and parses
defined-length sequences itself (PS3.5 7.5: items of defined or undefined length,
nested sequences, the implicit VR items PS3.5 6.2.2 allows inside explicit VR).

Whatever it cannot vouch for raises :class:`NeedsPydicom`; :mod:`dicomjson`
converts that element (or the whole top-level sequence holding it) with pydicom.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from pacs_hub.dicom import rawvalues as rv
from pacs_hub.dicom.rawvalues import NeedsPydicom

BULK_THRESHOLD = 65536
"""Binary values above this many bytes go out as BulkDataURI (palette LUTs stay inline)."""
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
SPECIFIC_CHARACTER_SET = 0x00080005
LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
"""Explicit VRs with a reserved field and a 4-byte length (PS3.5 Table 7.1-1)."""

CreatorLookup = Callable[[int], str | None]
"""Private Creator (gggg,00xx) value of a private block, None when absent."""


class RawElement(NamedTuple):
    """One element of an item parsed here: VR as encoded (None: implicit), value bytes.

    ``items`` holds the parsed items of an undefined-length sequence (value None).
    """

    vr: str | None
    value: bytes | None
    implicit: bool
    little: bool
    items: list[dict[int, RawElement]] | None = None


Item = dict[int, RawElement]


def bulk_stub_vr(tag: int, vr: str | None, deferred: bool) -> str | None:
    """VR of a value that goes out as a BulkDataURI without being read, else None.

    Pixel data at any depth, and a value left on disk by a deferred read.
    """
    if tag not in PIXEL_TAGS and not deferred:
        return None
    found = vr or rv.public_vr(tag) or "UN"
    found = "OW" if " or " in found else found
    return found if found in BINARY_VRS else None


def element_json(
    tag: int,
    vr: str | None,
    value: bytes,
    little: bool,
    implicit: bool,
    encodings: Sequence[str],
    creator: CreatorLookup,
    path: str,
) -> dict[str, Any]:
    """The JSON object of one raw element with its whole value in memory."""
    final = rv.element_vr(tag, vr, value, creator)
    if final in rv.AMBIGUOUS_VRS:
        raise NeedsPydicom("ambiguous VR")
    if not value:
        return {"vr": final}
    if final == "SQ":
        items = parse_sequence(value, 0, len(value), implicit, little)[0]
        return sequence_json(items, path, encodings)
    if final in BINARY_VRS:
        if len(value) > BULK_THRESHOLD:
            return {"vr": final, "BulkDataURI": path}
        return {"vr": final, "InlineBinary": base64.b64encode(value).decode("ascii")}
    values = _values(tag, final, value, little, encodings)
    return {"vr": final, "Value": values} if values else {"vr": final}


def _values(tag: int, vr: str, value: bytes, little: bool, encodings: Sequence[str]) -> list[Any]:
    if vr in rv.NUMBER_FORMATS:
        return rv.numbers(tag, vr, value, little)
    if vr == "PN":
        return [person_name(groups) for groups in rv.person_names(value, encodings)]
    if vr == "IS":
        return [int(token) for token in rv.integer_strings(value)]
    if vr == "DS":
        return [float(token) for token in rv.decimal_strings(value)]
    if vr == "AT":
        return list(rv.tags(value, little))
    return list(rv.string_values(vr, value, encodings))


def person_name(groups: tuple[str, ...]) -> dict[str, str]:
    """A PN value as its Alphabetic, Ideographic and Phonetic groups (PS3.18 F.2.2)."""
    name = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        name["Ideographic"] = groups[1]
    if len(groups) > 2:
        name["Phonetic"] = groups[2]
    return name


def sequence_json(items: list[Item], path: str, encodings: Sequence[str]) -> dict[str, Any]:
    """A sequence of parsed items; an empty one has no Value (as :mod:`dicomjson` does)."""
    if not items:
        return {"vr": "SQ"}
    return {
        "vr": "SQ",
        "Value": [item_json(item, f"{path}/{i}/", encodings) for i, item in enumerate(items)],
    }


def item_json(item: Item, prefix: str, encodings: Sequence[str]) -> dict[str, Any]:
    """One parsed item; its own Specific Character Set replaces the inherited one."""
    charset = item.get(SPECIFIC_CHARACTER_SET)
    if charset is not None:
        if charset.vr not in (None, "CS", "UN") or charset.value is None:
            raise NeedsPydicom("unusual Specific Character Set")
        encodings = rv.charset_encodings(charset.value)

    def creator(creator_tag: int) -> str | None:
        return item_creator(item, creator_tag, encodings)

    out: dict[str, Any] = {}
    for tag, elem in item.items():
        if not tag & 0xFFFF:  # group lengths are not part of the JSON model (F.2.2)
            continue
        key = f"{tag:08X}"
        out[key] = _item_element(tag, elem, encodings, creator, prefix + key)
    return out


def _item_element(
    tag: int, elem: RawElement, encodings: Sequence[str], creator: CreatorLookup, path: str
) -> dict[str, Any]:
    stub = bulk_stub_vr(tag, elem.vr, False)
    if stub is not None:
        return {"vr": stub, "BulkDataURI": path}
    if elem.items is not None:
        return sequence_json(elem.items, path, encodings)
    if elem.value is None or tag in PIXEL_TAGS:
        raise NeedsPydicom("undefined length value, or pixel data of an odd VR")
    return element_json(
        tag, elem.vr, elem.value, elem.little, elem.implicit, encodings, creator, path
    )


def item_creator(item: Item, creator_tag: int, encodings: Sequence[str]) -> str | None:
    """The Private Creator value of a parsed item, as pydicom reads it (LO)."""
    elem = item.get(creator_tag)
    if elem is None:
        return None
    return creator_text(elem.vr, elem.value, encodings)


def creator_text(vr: str | None, value: bytes | None, encodings: Sequence[str]) -> str:
    """A raw Private Creator (gggg,0010-00FF) value: one LO value."""
    if vr not in (None, "LO", "UN") or value is None:
        raise NeedsPydicom("unusual Private Creator")
    values = rv.string_values("LO", value, encodings)
    if len(values) > 1:
        raise NeedsPydicom("multi-valued Private Creator")
    return values[0] if values else ""


# --- parsing the items of a sequence value (PS3.5 7.5) ---------------------------------


def parse_sequence(
    buf: bytes, pos: int, end: int | None, implicit: bool, little: bool
) -> tuple[list[Item], int]:
    """Items from ``pos`` to ``end``, or to the Sequence Delimitation Item if ``end`` is None."""
    header = struct.Struct("<HHL" if little else ">HHL")
    items: list[Item] = []
    while end is None or pos < end:
        group, element, length = _unpack(header, buf, pos)
        pos += 8
        tag = group << 16 | element
        if tag == SEQUENCE_END and end is None:
            return items, pos
        if tag != ITEM:
            raise NeedsPydicom("not an item")
        item_implicit = implicit or _looks_implicit(buf, pos)
        if length == rv.UNDEFINED_LENGTH:
            item, pos = parse_item(buf, pos, None, item_implicit, little)
        else:
            item, _ = parse_item(buf, pos, pos + length, item_implicit, little)
            pos += length
        items.append(item)
    if pos != end:
        raise NeedsPydicom("items overrun the sequence")
    return items, pos


def _unpack(header: struct.Struct, buf: bytes, pos: int) -> tuple[int, ...]:
    if pos + 8 > len(buf):
        raise NeedsPydicom("truncated sequence")
    return header.unpack_from(buf, pos)


def _looks_implicit(buf: bytes, pos: int) -> bool:
    """pydicom's check of an explicit VR item: a first VR that is not two capitals."""
    if pos + 6 > len(buf):
        return False
    return not (0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B)


def parse_item(
    buf: bytes, pos: int, end: int | None, implicit: bool, little: bool
) -> tuple[Item, int]:
    """Elements from ``pos`` to ``end``, or to the Item Delimitation Item if ``end`` is None."""
    reader = _ElementReader(buf, implicit, little)
    item: Item = {}
    while end is None or pos < end:
        tag, vr, length, pos = reader.header(pos)
        if tag == ITEM_END and end is None:
            return item, pos
        if tag >> 16 == 0xFFFE:
            raise NeedsPydicom("delimiter out of place")
        if length == rv.UNDEFINED_LENGTH:
            item[tag], pos = reader.undefined(tag, vr, pos)
            continue
        stop = pos + length
        if stop > len(buf) or (end is not None and stop > end):
            raise NeedsPydicom("element overruns its item")
        item[tag] = RawElement(vr, buf[pos:stop], implicit, little)
        pos = stop
    if pos != end:
        raise NeedsPydicom("elements overrun the item")
    return item, pos


class _ElementReader:
    """Element headers (PS3.5 7.1.2 explicit, 7.1.3 implicit) in one byte order."""

    def __init__(self, buf: bytes, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.implicit = implicit
        self.little = little
        order = "<" if little else ">"
        self.short = struct.Struct(order + "HHL")
        self.explicit = struct.Struct(order + "HH2sH")
        self.long = struct.Struct(order + "L")
        self.delimiter = struct.pack(order + "HH", 0xFFFE, 0xE0DD)

    def header(self, pos: int) -> tuple[int, str | None, int, int]:
        """(tag, VR or None, length, value position)."""
        if pos + 8 > len(self.buf):
            raise NeedsPydicom("truncated item")
        group, element, length = self.short.unpack_from(self.buf, pos)
        tag = group << 16 | element
        if self.implicit or group == 0xFFFE:
            return tag, None, length, pos + 8
        raw_vr, length = self.explicit.unpack_from(self.buf, pos)[2:]
        if not (0x40 < raw_vr[0] < 0x5B and 0x40 < raw_vr[1] < 0x5B):
            raise NeedsPydicom("VR switch inside an item")
        vr = raw_vr.decode("ascii")
        if vr not in LONG_LENGTH_VRS:
            return tag, vr, length, pos + 8
        if pos + 12 > len(self.buf):
            raise NeedsPydicom("truncated element")
        return tag, vr, self.long.unpack_from(self.buf, pos + 8)[0], pos + 12

    def undefined(self, tag: int, vr: str | None, pos: int) -> tuple[RawElement, int]:
        """An undefined-length value: a sequence (PS3.5 7.5.2) or encapsulated pixel data."""
        if vr == "UN":
            vr = "SQ"  # PS3.5 6.2.2
        if vr is None:
            vr = rv.public_vr(tag)
            if vr is None and self.buf[pos : pos + 4] == struct.pack(
                "<HH" if self.little else ">HH", 0xFFFE, 0xE000
            ):
                vr = "SQ"
        if vr == "SQ":
            items, pos = parse_sequence(self.buf, pos, None, self.implicit, self.little)
            return RawElement("SQ", None, self.implicit, self.little, items), pos
        stop = self.buf.find(self.delimiter, pos)
        if stop < 0 or tag not in PIXEL_TAGS:
            raise NeedsPydicom("undefined length value")
        return RawElement(vr, None, self.implicit, self.little), stop + 8
