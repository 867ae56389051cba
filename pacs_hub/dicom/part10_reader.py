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
* top-level elements with defined lengths, all of their bytes present, known
  VRs (PS3.5 Table 6.2-1), no item or delimiter tags, no command elements.

So Big Endian, Deflate, undefined-length sequences, encapsulated Pixel Data
(undefined length, PS3.5 A.4), truncated or odd files all keep pydicom's reading,
warnings and errors.
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
_VRS = {str(vr).encode("ascii"): str(vr) for vr in VR}
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)


class _Odd(Exception):
    """Something this reader leaves to pydicom."""


def _is_explicit_vr(data: bytes, pos: int) -> bool:
    """pydicom's look at the first data set element (``filereader._is_implicit_vr``)."""
    vr = data[pos + 4 : pos + 6]
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _elements(
    data: bytes, pos: int, implicit: bool, meta: bool
) -> tuple[dict[BaseTag, RawDataElement], int]:
    """Elements from ``pos``: to the end of ``data``, or (``meta``) to the first one
    outside group 0002. Returns them and where reading stopped."""
    found: dict[BaseTag, RawDataElement] = {}
    size = len(data)
    while pos < size:
        if pos + 8 > size:
            raise _Odd("a partial element header")
        if implicit:
            group, element, length = _IMPLICIT.unpack_from(data, pos)
            vr = None
            start = pos + 8
        else:
            group, element, raw_vr, length = _EXPLICIT.unpack_from(data, pos)
            if meta and group != 2:
                return found, pos
            vr = _VRS.get(raw_vr)
            if vr is None:
                raise _Odd("an unknown VR")
            start = pos + 8
            if vr in _LONG_VRS:
                if start + 4 > size:
                    raise _Odd("a partial element header")
                length = _LONG.unpack_from(data, start)[0]
                start += 4
        if group == 0xFFFE or length == UNDEFINED or (group == 0 and not meta):
            raise _Odd("an item, an undefined length or a command element")
        end = start + length
        if end > size:
            raise _Odd("a value cut short")
        tag = BaseTag(group << 16 | element)
        value = data[start:end] if length else empty_value_for_VR(vr, raw=True)  # as pydicom
        found[tag] = RawDataElement(tag, vr, length, value, start, implicit, True)  # type: ignore[arg-type]
        pos = end
    return found, pos


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
    """``pydicom.dcmread(BytesIO(data))`` for the plain case, else None (module doc)."""
    if data[PREAMBLE : PREAMBLE + 4] != MAGIC or not _is_explicit_vr(data, PREAMBLE + 4):
        return None
    try:
        meta_elements, pos = _elements(data, PREAMBLE + 4, implicit=False, meta=True)
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
        elements, _ = _elements(data, pos, implicit=implicit, meta=False)
    except (_Odd, ValueError, TypeError, KeyError, NotImplementedError):
        return None
    if not elements:
        return None
    ds = FileDataset(None, elements, data[:PREAMBLE], file_meta, implicit, True)  # type: ignore[arg-type]
    # As read_partial: the data set's character set (which converts (0008,0005)).
    ds.set_original_encoding(implicit, True, ds._character_set)
    return ds
