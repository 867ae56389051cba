"""Where each frame of encapsulated Pixel Data lies in a stored file (PS3.5 A.4).

Encapsulated Pixel Data is a sequence of items: the Basic Offset Table, then the
fragments, then a Sequence Delimitation Item (PS3.5 A.4, Table A.4-1). Walking the
item headers with ``seek`` (never reading a fragment's bytes) gives every fragment's
file offset and length; frames map onto fragments

* one to one when there are as many fragments as frames (the usual case, and
  required for several syntaxes, PS3.5 A.4.1);
* all fragments to the single frame of a single-frame image (PS3.5 A.4);
* by the Basic Offset Table otherwise (offsets from the first fragment's item).

Blobs never change, so the index of a blob is cached by blob; a frame is then one
``pread`` per fragment whatever its position in a long cine loop.
When none of these rules applies (more fragments than frames and no usable offset
table), :func:`frame_fragments` answers ``None`` and the caller falls back to pydicom's
frame boundary detection (JPEG markers).
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pacs_hub.storage.blob_ref import BlobRef

ITEM = 0xE000FFFE
SEQUENCE_DELIMITER = 0xE0DDFFFE
MAX_ITEMS = 1_000_000

Fragment = tuple[int, int]
"""(blob offset of the fragment's bytes, length)."""


def _items(blob: BlobRef, offset: int) -> list[Fragment]:
    """Every item of the encapsulated value starting at ``offset``, the offset table first."""
    found: list[Fragment] = []
    with blob.open() as fp:
        fp.seek(offset)
        while len(found) < MAX_ITEMS:
            header = fp.read(8)
            if len(header) < 8:
                raise ValueError("encapsulated Pixel Data ends without a delimiter")
            tag, length = struct.unpack("<II", header)
            if tag == SEQUENCE_DELIMITER:
                return found
            if tag != ITEM or length == 0xFFFFFFFF:
                raise ValueError(f"unexpected tag {tag:08X} in encapsulated Pixel Data")
            found.append((fp.tell(), length))
            fp.seek(length, 1)
    raise ValueError("too many items in encapsulated Pixel Data")


def _offset_table(blob: BlobRef, table: Fragment) -> list[int]:
    data = blob.pread(table[0], table[1])
    return list(struct.unpack(f"<{len(data) // 4}I", data[: len(data) // 4 * 4]))


@lru_cache(maxsize=512)
def frame_fragments(
    blob: BlobRef, offset: int, frames: int
) -> tuple[tuple[Fragment, ...], ...] | None:
    """The fragments of each frame, or ``None`` when they cannot be told apart here."""
    items = _items(blob, offset)
    if not items:
        return None
    table, fragments = items[0], items[1:]
    if len(fragments) == frames:
        return tuple((fragment,) for fragment in fragments)
    if frames == 1:
        return (tuple(fragments),)
    starts = _offset_table(blob, table) if table[1] else []
    if len(starts) != frames or not fragments:
        return None
    first_item = fragments[0][0] - 8  # offsets count from the first fragment's item tag
    by_frame: list[list[Fragment]] = [[] for _ in range(frames)]
    frame = -1
    for fragment in fragments:
        position = fragment[0] - 8 - first_item
        while frame + 1 < frames and starts[frame + 1] <= position:
            frame += 1
        if frame < 0:
            return None
        by_frame[frame].append(fragment)
    return tuple(tuple(each) for each in by_frame)


def read_frame(blob: BlobRef, fragments: tuple[Fragment, ...]) -> bytes:
    """A frame's bytes: its fragments joined (PS3.18 8.7.3.3.2, no item headers)."""
    if len(fragments) == 1:
        return blob.pread(*fragments[0])
    with blob.open() as fp:
        parts = []
        for start, length in fragments:
            fp.seek(start)
            parts.append(fp.read(length))
    return b"".join(parts)
