"""DICOM Part 10 files (PS3.10 7.1): the preamble, the File Meta Information and the
received dataset bytes, kept exactly as they arrived.

The hub writes its own, deterministic File Meta Information so that the same
dataset received twice (from two senders, or once by C-STORE and once by import)
gives the same blob, byte for byte, and so the same SHA-256.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from pacs_hub.errors import InvalidInstance, MissingAttribute

IMPLEMENTATION_CLASS_UID = "2.25.298258438119950931850391132769336458995"
"""Implementation Class UID (0002,0012) of PACS Hub (PS3.7 D.3.3.2), a UUID-derived
UID (PS3.5 B.2) so that it needs no registered root."""
IMPLEMENTATION_VERSION_NAME = "PACS_HUB_01"
PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of the file meta group (PS3.5 7.1.2)."""
    tag = struct.pack("<HH", 0x0002, group_elem)
    if vr in (b"OB",):
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _sh(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """The File Meta Information group (0002,xxxx) for one instance, with its length."""
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _ui(sop_class_uid)),
            _element(0x0003, b"UI", _ui(sop_instance_uid)),
            _element(0x0010, b"UI", _ui(transfer_syntax_uid)),
            _element(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _element(0x0013, b"SH", _sh(IMPLEMENTATION_VERSION_NAME)),
        )
    )
    group_length = _element(0x0000, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE + group_length + body


def part10_bytes(
    dataset: bytes, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str
) -> bytes:
    """A complete Part 10 file: our file meta followed by ``dataset`` unchanged."""
    return file_meta_bytes(sop_class_uid, sop_instance_uid, transfer_syntax_uid) + dataset


def dataset_offset(fp: BinaryIO) -> int:
    """Byte offset where the dataset starts in a Part 10 file (after the meta group).

    Reads only the preamble and the (0002,0000) group length.
    """
    fp.seek(0)
    head = fp.read(144)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file: no 'DICM' prefix at byte 128")
    tag, vr = struct.unpack("<I2s", head[132:138])
    if tag != 0x00000002 or vr != b"UL":
        raise ValueError("File Meta Information has no (0002,0000) group length")
    (length,) = struct.unpack("<I", head[140:144])
    return 144 + int(length)


_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What the hub keeps of a file's own File Meta Information (PS3.10 7.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int


def _meta_value(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", errors="replace")


def read_file_meta(data: bytes) -> FileMeta:
    """Walk the File Meta group of a Part 10 file held in memory.

    The group is always explicit VR little endian (PS3.10 7.1); its end is found by
    walking its elements, so a missing (0002,0000) group length is tolerated.
    Raises :class:`InvalidInstance` for no 'DICM' prefix or a truncated group.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 file: no 'DICM' prefix at byte 128")
    values: dict[int, str] = {}
    pos = 132
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if start > len(data) or start + length > len(data):
            raise InvalidInstance(f"File Meta element (0002,{elem:04X}) is truncated")
        values[elem] = _meta_value(data[start : start + length])
        pos = start + length
    return FileMeta(values.get(0x0002, ""), values.get(0x0003, ""), values.get(0x0010, ""), pos)


def normalise_part10(data: bytes) -> bytes:
    """Replace a file's own File Meta Information with the hub's (PS3.10 7.1).

    The dataset bytes after the meta group are kept unchanged, so a file imported
    from disk becomes the same blob, byte for byte, as the same instance received by
    C-STORE (PS3.4 B.2.2) with the meta's SOP Class and Instance UIDs. Raises
    :class:`InvalidInstance` for a file that is not Part 10 (no 'DICM' prefix) or
    whose meta lacks one of these three Type 1 UIDs (PS3.10 Table 7.1-1).
    """
    meta = read_file_meta(data)
    for value, name in (
        (meta.transfer_syntax_uid, "TransferSyntaxUID (0002,0010)"),
        (meta.sop_class_uid, "MediaStorageSOPClassUID (0002,0002)"),
        (meta.sop_instance_uid, "MediaStorageSOPInstanceUID (0002,0003)"),
    ):
        if not value:
            raise MissingAttribute(f"File Meta has no {name}")
    return part10_bytes(
        data[meta.dataset_offset :],
        meta.sop_class_uid,
        meta.sop_instance_uid,
        meta.transfer_syntax_uid,
    )
