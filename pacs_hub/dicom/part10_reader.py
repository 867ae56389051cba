"""Part 10 files read as pydicom reads them, faster, for the plain case (PS3.10 7.1).

Every received instance is parsed once (:mod:`pacs_hub.dicom.header`). pydicom's
``dcmread`` takes ~170 µs for a 64x64 CT of ~50 elements, mostly in the
generator that reads one element at a time from a file object and in the
generic set-up around it. :func:`read_part10` reads the same bytes in one loop
over the buffer and builds the same objects: a :class:`~pydicom.dataset.FileDataset`
of :class:`~pydicom.dataelem.RawDataElement` (same fields: tag, VR, length, value,
value offset, encoding), its File Meta Information and preamble, and the same
original encoding and character set.

It reads only the plain case and returns None for anything else, which the
caller then gives to ``dcmread``:

* a 128-byte preamble and ``DICM`` (PS3.10 7.1), File Meta Information elements
  (group 0002) in Explicit VR Little Endian with a Transfer Syntax UID;
* a data set in Implicit VR Little Endian (PS3.5 A.1), Explicit VR Little Endian
  (A.2) or an encapsulated syntax (A.4, Explicit VR Little Endian), whose first
  element is encoded as the syntax says (pydicom would switch, with a warning);
* top-level elements in ascending tag order, none repeated (PS3.5 7.1), with
  defined lengths, all of their bytes present, known
  VRs (PS3.5 Table 6.2-1), no item or delimiter tags, no command elements; the one
  undefined length read is encapsulated Pixel Data (PS3.5 A.4: items, then the
  Sequence Delimitation Item), walked item by item as pydicom does.

So Big Endian, Deflate, undefined-length sequences, truncated or odd files all
keep pydicom's reading, warnings and errors.
"""

from __future__ import annotations

import struct

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

PREAMBLE = 128
MAGIC = b"DICM"
UNDEFINED = 0xFFFFFFFF
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_LONG = struct.Struct("<L")
PIXEL_DATA = BaseTag(0x7FE00010)
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_DELIMITER = struct.pack("<HH", 0xFFFE, 0xE0DD)
_VRS = {str(vr).encode("ascii"): str(vr) for vr in VR}
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)


class _Odd(Exception):
    """Something this reader leaves to pydicom."""


def _is_explicit_vr(data: bytes, pos: int) -> bool:
    """pydicom's look at the first data set element (``filereader._is_implicit_vr``)."""
    vr = data[pos + 4 : pos + 6]
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _elements(  # noqa: C901 - one loop: a call per element costs a third more here
    data: bytes, pos: int, implicit: bool, meta: bool
) -> tuple[dict[BaseTag, RawDataElement], int]:
    """Elements from ``pos``: to the end of ``data``, or (``meta``) to the first one
    outside group 0002. Returns them and where reading stopped. Element headers per
    PS3.5 7.1.1 (explicit VR, 2- or 4-byte length) and 7.1.2 (implicit VR)."""
    found: dict[BaseTag, RawDataElement] = {}
    size = len(data)
    last = -1
    while pos < size:
        if meta and data[pos : pos + 2] != b"\x02\x00":
            return found, pos
        if pos + 8 > size:
            raise _Odd("a partial element header")
        vr: str | None
        if implicit:
            group, element, length = _IMPLICIT.unpack_from(data, pos)
            vr, start = None, pos + 8
        else:
            group, element, raw_vr, length = _EXPLICIT.unpack_from(data, pos)
            vr, start = _VRS.get(raw_vr), pos + 8
            if vr is None:
                raise _Odd("an unknown VR")
            if vr in _LONG_VRS:
                if pos + 12 > size:
                    raise _Odd("a partial element header")
                length, start = _LONG.unpack_from(data, start)[0], pos + 12
        if group == 0xFFFE or (group == 0 and not meta):
            raise _Odd("an item or a command element")
        tag = BaseTag(group << 16 | element)
        if tag <= last:  # PS3.5 7.1: ascending order; pydicom keeps a repeated tag its own way
            raise _Odd("an element out of order or repeated")
        last = tag
        if length == UNDEFINED:
            if tag != PIXEL_DATA or vr not in ("OB", "OW") or meta:
                raise _Odd("an undefined length other than encapsulated Pixel Data")
            end = _fragments_end(data, start)
            found[tag] = RawDataElement(tag, vr, length, data[start:end], start, implicit, True)
            pos = end + 8
            continue
        end = start + length
        if end > size:
            raise _Odd("a value cut short")
        value = data[start:end] if length else empty_value_for_VR(vr, raw=True)  # as pydicom
        found[tag] = RawDataElement(tag, vr, length, value, start, implicit, True)  # type: ignore[arg-type]
        pos = end
    return found, pos


def _fragments_end(data: bytes, pos: int) -> int:
    """Where the Sequence Delimitation Item ends the encapsulated Pixel Data value
    starting at ``pos`` (PS3.5 A.4): its items walked as pydicom walks them
    (``fileutil._try_read_encapsulated_pixel_data``); anything else is odd."""
    size = len(data)
    while pos + 8 <= size:
        tag_bytes = data[pos : pos + 4]
        if tag_bytes == _DELIMITER:
            if data[pos + 4 : pos + 8] != b"\0\0\0\0":
                raise _Odd("a delimiter with a length")
            return pos
        if tag_bytes != _ITEM:
            raise _Odd("not an item within encapsulated Pixel Data")
        pos += 8 + _LONG.unpack_from(data, pos + 4)[0]
        if pos > size:
            raise _Odd("an item cut short")
    raise _Odd("no Sequence Delimitation Item")


def _encoding(transfer_syntax: str) -> bool | None:
    """True for implicit VR, False for explicit, None for what this reader leaves."""
    if transfer_syntax == ImplicitVRLittleEndian:
        return True
    if transfer_syntax == ExplicitVRLittleEndian:
        return False
    uid = UID(transfer_syntax)
    if uid.is_transfer_syntax and uid.is_encapsulated and uid.is_little_endian:
        return None if uid.is_deflated or uid.is_implicit_VR else False
    return None


def read_part10(data: bytes) -> FileDataset | None:
    """``pydicom.dcmread(BytesIO(data))`` for the plain case, else None (module doc).

    It never raises: whatever goes wrong here (a value pydicom cannot convert while
    reading, as the character set) is left to ``dcmread``, to fail or warn its way.
    """
    if data[PREAMBLE : PREAMBLE + 4] != MAGIC or not _is_explicit_vr(data, PREAMBLE + 4):
        return None
    try:
        return _read(data)
    except Exception:
        return None


def _read(data: bytes) -> FileDataset | None:
    try:
        meta_elements, pos = _elements(data, PREAMBLE + 4, implicit=False, meta=True)
    except _Odd:
        return None
    if not meta_elements or pos >= len(data):
        return None
    file_meta = FileMetaDataset(meta_elements)  # type: ignore[arg-type]
    file_meta.set_original_encoding(
        is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding
    )
    # What pydicom reads of the File Meta while reading the file (so the same
    # elements come out converted): the first, the group length, the syntax.
    file_meta[next(iter(meta_elements))]
    if "FileMetaInformationGroupLength" in file_meta:
        file_meta["FileMetaInformationGroupLength"]
    syntax = file_meta.get("TransferSyntaxUID")
    implicit = _encoding(str(syntax)) if syntax is not None else None
    if implicit is None or _is_explicit_vr(data, pos) == implicit:
        return None
    try:
        elements, _ = _elements(data, pos, implicit=implicit, meta=False)
    except _Odd:
        return None
    if not elements:
        return None
    ds = FileDataset(None, elements, data[:PREAMBLE], file_meta, implicit, True)  # type: ignore[arg-type]
    # As read_partial: the data set's character set (which converts (0008,0005)).
    ds.set_original_encoding(implicit, True, ds._character_set)
    return ds
