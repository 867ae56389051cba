"""A federated C-FIND answer relayed from a PACS's own bytes, not decoded and re-encoded.

A match only an establishment PACS holds is answered (PS3.4 C.4.1.1.3) with the keys
the caller asked for, taken from that PACS's Pending answer, plus Query/Retrieve Level,
Specific Character Set, Retrieve AE Title and Instance Availability
(:func:`pacs_hub.gateway.federated_find.build_answer`). pydicom would convert each
value the PACS sent into Python objects, then write it back: most of the hub's time
per answer on a large federated result. Here the Identifier is written straight from
the PACS's raw element values (PS3.5 7.1: tag, VR and length headers of the caller's
transfer syntax, then the value bytes unchanged), in ascending tag order (PS3.5 7.1),
and handed to pynetdicom as an :class:`EncodedIdentifier`, which the patched encoder
of pynetdicom's C-FIND SCP sends as it is.

Only what is sure to come out byte for byte as the pydicom path would write it is
relayed: both transfer syntaxes little endian, not deflated (PS3.5 A.1, A.2), every
value either raw or plain text, no sequence with items, no value over the 2-byte
length of its VR in Explicit VR, and text values all ASCII without ESC (PS3.5 6.1:
then every character set the request declared encodes them, and the answer declares
the request's own, as :func:`~pacs_hub.dicom.charset.answer_charset` would).
:func:`relayed_answer` returns None for anything else and the caller builds the answer
the pydicom way.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pynetdicom import service_class

from pacs_hub.gateway import pdata

# PS3.5 Table 7.1-1: VRs whose Explicit VR header has 2 reserved bytes and a 4-byte length.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
# Values a text VR may carry as they are; binary VRs are copied byte for byte.
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
UNDEFINED_LENGTH = 0xFFFFFFFF


class EncodedIdentifier(pdata.PreEncoded):
    """An Identifier already encoded for one transfer syntax (``encoding``:
    implicit VR, little endian, deflated, as pynetdicom's encoder is asked)."""

    def __init__(self, encoded: bytes, implicit: bool) -> None:
        super().__init__()
        self.encoded = encoded
        self.encoding = (implicit, True, False)


class NotRelayable(Exception):
    """This answer needs the pydicom path."""


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, length)
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, vr.encode(), length)
    if length > 0xFFFF:
        raise NotRelayable
    return struct.pack("<HH2sH", group, element, vr.encode(), length)


def _padded(value: bytes, vr: str) -> bytes:
    """PS3.5 6.2: even length, UI padded with NUL, other text with a space."""
    if len(value) % 2 == 0:
        return value
    return value + (b"\x00" if vr == "UI" or vr not in TEXT_VRS else b" ")


def _ascii_text(value: bytes) -> bytes:
    if not value.isascii() or b"\x1b" in value:
        raise NotRelayable
    return value


def _value(elem: DataElement | RawDataElement | None, vr: str) -> bytes:
    """The value bytes of ``elem`` for a key of VR ``vr`` (b'' when absent or empty)."""
    if elem is None:
        return b""
    if isinstance(elem, RawDataElement):
        if not elem.is_little_endian or elem.length == UNDEFINED_LENGTH:
            raise NotRelayable
        if elem.VR is not None and vr != elem.VR:
            raise NotRelayable
        data = bytes(elem.value or b"")
        return _ascii_text(data) if vr in TEXT_VRS else data
    if vr != elem.VR or vr not in TEXT_VRS:
        raise NotRelayable
    value = elem.value
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise NotRelayable
    return _ascii_text(value.encode("ascii", errors="replace"))


def _texts(values: Sequence[str]) -> bytes:
    return "\\".join(values).encode("ascii")


def relayed_answer(
    remote: Dataset,
    keys: Sequence[Any],
    level: str,
    charset: Sequence[str],
    locations: Sequence[str],
    availability: str,
    implicit: bool,
) -> EncodedIdentifier | None:
    """The Pending answer's Identifier for a match ``remote`` (a PACS's answer), or None
    when it cannot be relayed as it is (see the module docstring).

    ``keys`` are the request's answer keys (each with ``tag`` and ``vr``), ``charset``
    the request's Specific Character Set terms, ``implicit`` the caller's transfer
    syntax (Implicit or Explicit VR Little Endian).
    """
    if not all(term.isascii() for term in [*charset, *locations, level, availability]):
        return None
    elements: dict[int, bytes] = {}
    try:
        for key in keys:
            vr = key.vr
            if len(vr) != 2:
                return None
            if vr == "SQ":
                elements[key.tag] = _header(key.tag, vr, 0, implicit)
                continue
            value = _padded(_value(remote.get_item(key.tag), vr), vr)
            elements[key.tag] = _header(key.tag, vr, len(value), implicit) + value
        controls = (
            (QUERY_RETRIEVE_LEVEL, "CS", [level]),
            (SPECIFIC_CHARACTER_SET, "CS", list(charset)),
            (RETRIEVE_AE_TITLE, "AE", list(locations)),
            (INSTANCE_AVAILABILITY, "CS", [availability]),
        )
        for tag, vr, values in controls:
            if values:
                value = _padded(_texts(values), vr)
                elements[tag] = _header(tag, vr, len(value), implicit) + value
    except NotRelayable:
        return None
    return EncodedIdentifier(b"".join(elements[tag] for tag in sorted(elements)), implicit)


def install() -> None:
    """Make pynetdicom's C-FIND SCP send an :class:`EncodedIdentifier` as it is
    (:func:`~pacs_hub.gateway.pdata.pass_pre_encoded`). Idempotent, once per process."""
    pdata.pass_pre_encoded(service_class)
