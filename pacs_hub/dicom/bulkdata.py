"""Bulk data values addressed by a tag path (PS3.18 10.4.1.1.4 Retrieve Bulkdata; PS3.19 A.1.5).

The hub's BulkDataURIs end in ``bulkdata/<path>``, where ``<path>`` names one element
from the top of the dataset: 8-hex-digit tags with a 0-based item index between them
(``7FE00010``, ``00282000``, ``00540016/0/00181072``). :func:`parse_tag_path` reads
it; :func:`element_value` returns the value as PS3.18 8.7.3.3.1 asks for
uncompressed bulk data: little endian octets, byte-swapped from an Explicit VR Big
Endian file. A top-level value that pydicom left deferred is streamed from the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from pacs_hub.dicom.frames import CHUNK, EXPLICIT_VR_BIG_ENDIAN, read_header, to_little_endian
from pacs_hub.storage.blob_ref import BlobRef

TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
INDEX = re.compile(r"^(0|[1-9][0-9]{0,8})$")
WORD_WIDTHS = {
    "OW": 2, "US": 2, "SS": 2, "AT": 2,
    "OF": 4, "OL": 4, "UL": 4, "SL": 4, "FL": 4,
    "OD": 8, "OV": 8, "FD": 8, "SV": 8, "UV": 8,
}  # fmt: skip


class BadTagPath(ValueError):
    """A bulkdata path that is not ``tag(/index/tag)*``."""


class NoSuchElement(LookupError):
    """The path names an element or item the instance does not have."""


TagPath = tuple[tuple[int, int], ...]
"""(sequence tag, item index) steps, then the element tag as ``(tag, -1)``."""


def parse_tag_path(text: str) -> TagPath:
    """``00540016/0/00181072`` -> ``((0x00540016, 0), (0x00181072, -1))``."""
    pieces = text.strip("/").split("/")
    if len(pieces) % 2 != 1:
        raise BadTagPath(f"{text[:60]!r}: expected tag(/index/tag)*")
    steps: list[tuple[int, int]] = []
    for position in range(0, len(pieces), 2):
        tag = pieces[position]
        if not TAG.match(tag):
            raise BadTagPath(f"{tag[:20]!r} is not an 8-hex-digit tag")
        index = -1
        if position + 1 < len(pieces):
            if not INDEX.match(pieces[position + 1]):
                raise BadTagPath(f"{pieces[position + 1][:20]!r} is not an item index")
            index = int(pieces[position + 1])
        steps.append((int(tag, 16), index))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class BulkValue:
    """A located value: in memory (``data``) or ``length`` bytes at ``offset`` of ``blob``."""

    blob: BlobRef
    vr: str
    data: bytes | None
    offset: int
    length: int
    swap_width: int  # >1: big endian words to swap

    def chunks(self) -> Iterator[bytes]:
        """The value as little endian octets, a chunk at a time."""
        if self.data is not None:
            yield self._little(self.data)
            return
        done = 0
        while done < self.length:
            chunk = self.blob.pread(self.offset + done, min(CHUNK, self.length - done))
            if not chunk:
                return
            done += len(chunk)
            yield self._little(chunk)

    def _little(self, data: bytes) -> bytes:
        return to_little_endian(data, self.swap_width) if self.swap_width > 1 else data


def _encoded(element: DataElement) -> bytes:
    """The value bytes of an element pydicom already converted (re-encoded little endian)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_data_element(buffer, element)
    return bytes(buffer.getvalue()[8:])  # implicit VR: tag (4) + length (4)


def locate(dataset: Dataset, steps: TagPath) -> DataElement | RawDataElement:
    """The element ``steps`` names; raise :class:`NoSuchElement` when it is absent."""
    current = dataset
    for tag, index in steps[:-1]:
        if tag not in current:
            raise NoSuchElement(f"no element {tag:08X}")
        items = current[tag].value
        if current[tag].VR != "SQ" or index >= len(items):
            raise NoSuchElement(f"no item {index} in {tag:08X}")
        current = items[index]
    element = current.get_item(steps[-1][0], keep_deferred=True)
    if element is None:
        raise NoSuchElement(f"no element {steps[-1][0]:08X}")
    return element


def element_value(blob: BlobRef, transfer_syntax_uid: str, steps: TagPath) -> BulkValue:
    """The value of the element ``steps`` names in the stored ``blob``."""
    dataset = read_header(blob, transfer_syntax_uid)
    element = locate(dataset, steps)
    vr = str(element.VR or "UN")
    if vr == "SQ":
        raise NoSuchElement(f"{steps[-1][0]:08X} is a sequence, not bulk data")
    big_endian = transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN
    if isinstance(element, RawDataElement):
        width = WORD_WIDTHS.get(vr, 1) if big_endian and not element.is_little_endian else 1
        if element.value is None:
            return BulkValue(blob, vr, None, element.value_tell, element.length, width)
        return BulkValue(blob, vr, bytes(element.value), 0, len(element.value), width)
    data = _encoded(element)
    return BulkValue(blob, vr, data, 0, len(data), 1)
