"""Frames of stored Pixel Data, as stored or decoded (PS3.5 8.1, 8.2, A.4; PS3.18 8.7.3.3).

A stored Part 10 file is read lazily: pydicom parses the header with large values
deferred (``defer_size``), which gives the file offset of Pixel Data (7FE0,0010)
without reading it. Then

* a **native** frame is the slice ``[offset + i * frame_size, ... + frame_size)`` of
  the file (PS3.5 8.1.1), byte-swapped when the file is Explicit VR Big Endian and
  re-packed from bit ``i * frame_bits`` when 1-bit frames are not byte aligned, so
  that it is always what PS3.18 8.7.3.3.1 asks for: uncompressed little endian
  octets, labelled Explicit VR Little Endian (Implicit VR and Big Endian "shall not
  be used with Web Services", PS3.18 8.7.3);
* an **encapsulated** frame is read fragment by fragment from the file, found by a
  cached index of the items (:mod:`pacs_hub.dicom.fragments`) or, when frames and
  fragments cannot be matched that way, by :func:`pydicom.encaps.generate_frames`
  (PS3.5 A.4, Basic or Extended Offset Table), without the item delimiters (PS3.18
  8.7.3.3.2), and keeps its transfer syntax and its media type (:data:`MEDIA_TYPES`);
* a **decoded** frame is pydicom's pixel array for that frame (pylibjpeg codecs),
  colour converted to RGB (PS3.3 C.7.6.3.1.2: YBR_FULL/YBR_FULL_422 become RGB),
  as native little endian octets.

A deflated file (1.2.840.10008.1.2.1.99) cannot be read at an offset: it is inflated
in memory, which is fine for what deflate is used for (small non-image objects).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from pacs_hub.dicom.fragments import frame_fragments, read_frame
from pacs_hub.storage.blob_ref import BlobReader, BlobRef

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, DEFLATED}
)
OCTET_STREAM = "application/octet-stream"
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = (PIXEL_DATA, 0x7FE00008, 0x7FE00009)  # Pixel, Float, Double Float Pixel Data
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
DEFER_SIZE = 4096
CHUNK = 1 << 20

MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
"""PS3.18 Table 8.7.3-5 (plus HTJ2K, ``image/jphc``): the media type of a compressed frame."""


class NoPixelData(Exception):
    """The instance has no Pixel Data (SR, waveform, RT plan...)."""


def media_type_of(transfer_syntax_uid: str) -> str:
    """The media type of a frame in ``transfer_syntax_uid`` (octet-stream when native)."""
    return MEDIA_TYPES.get(transfer_syntax_uid, OCTET_STREAM)


def is_native(transfer_syntax_uid: str) -> bool:
    """True for the uncompressed transfer syntaxes (PS3.5 A.1, A.2, A.3, A.5)."""
    return transfer_syntax_uid in NATIVE


def can_decode(transfer_syntax_uid: str) -> bool:
    """True when pixel data in this transfer syntax can be decoded here."""
    if is_native(transfer_syntax_uid):
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax_uid)).is_available)
    except (NotImplementedError, ValueError):
        return False


def read_header(blob: BlobRef, transfer_syntax_uid: str) -> Dataset:
    """The stored dataset with its large values deferred (read from the blob on use,
    through the stream the dataset keeps, which holds no file open in between)."""
    defer = None if transfer_syntax_uid == DEFLATED else DEFER_SIZE
    stream = BlobReader(blob)
    dataset = pydicom.dcmread(stream, defer_size=defer)
    stream.release()
    return dataset


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value: Any = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True, slots=True)
class StoredPixels:
    """Where one instance's Pixel Data is and how its frames are laid out."""

    blob: BlobRef
    transfer_syntax_uid: str
    dataset: Dataset | None  # None in the cached layouts of frame_source
    tag: int
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    number_of_frames: int
    value: bytes | None  # the value when in memory (small, deflated)
    value_offset: int  # its offset in the blob when deferred
    little_endian: bool
    extended_offsets: tuple[bytes, bytes] | None = None

    @property
    def header(self) -> Dataset:
        """The stored dataset (pixel values deferred), read again if this is a cached layout."""
        if self.dataset is not None:
            return self.dataset
        return read_header(self.blob, self.transfer_syntax_uid)

    @property
    def encapsulated(self) -> bool:
        """True for compressed (encapsulated) Pixel Data, PS3.5 A.4."""
        return not is_native(self.transfer_syntax_uid)

    @property
    def media_type(self) -> str:
        """The media type of one frame as stored."""
        return media_type_of(self.transfer_syntax_uid)

    @property
    def frame_bits(self) -> int:
        """Bits in one native frame (PS3.5 8.1.1)."""
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated


def stored_pixels(blob: BlobRef, transfer_syntax_uid: str) -> StoredPixels:
    """Locate the Pixel Data of a stored blob; raise :class:`NoPixelData` if it has none."""
    ds = read_header(blob, transfer_syntax_uid)
    for tag in PIXEL_TAGS:
        element = ds.get_item(tag, keep_deferred=True)
        if element is not None:
            break
    else:
        raise NoPixelData(f"{blob.label}: no Pixel Data")
    value: bytes | None
    if isinstance(element, RawDataElement):
        value, offset = element.value, element.value_tell
    else:
        value, offset = element.value, 0
    bits = _int(ds, "BitsAllocated", 8)
    if tag == 0x7FE00008:
        bits = 32
    elif tag == 0x7FE00009:
        bits = 64
    return StoredPixels(
        blob=blob,
        transfer_syntax_uid=transfer_syntax_uid,
        dataset=ds,
        tag=tag,
        rows=_int(ds, "Rows", 0),
        columns=_int(ds, "Columns", 0),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        bits_allocated=bits,
        number_of_frames=max(1, _int(ds, "NumberOfFrames", 1)),
        value=value,
        value_offset=offset,
        little_endian=transfer_syntax_uid != EXPLICIT_VR_BIG_ENDIAN,
        extended_offsets=_extended_offsets(ds),
    )


def _read_range(pixels: StoredPixels, start: int, length: int) -> bytes:
    if pixels.value is not None:
        return bytes(pixels.value[start : start + length])
    return pixels.blob.pread(pixels.value_offset + start, length)


def to_little_endian(data: bytes, width: int) -> bytes:
    """Swap ``width``-byte words of big endian ``data`` (PS3.5 7.3)."""
    if width <= 1 or len(data) % width:
        return data
    return np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def _native_frame(pixels: StoredPixels, index: int) -> bytes:
    bits = pixels.frame_bits
    start_bit = index * bits
    if start_bit % 8 == 0 and bits % 8 == 0:
        data = _read_range(pixels, start_bit // 8, bits // 8)
    else:  # 1-bit frames that do not start on a byte: re-pack from bit 0 (PS3.5 8.1.1)
        first = start_bit // 8
        raw = _read_range(pixels, first, (start_bit + bits + 7) // 8 - first)
        flat = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
        skip = start_bit - first * 8
        data = np.packbits(flat[skip : skip + bits], bitorder="little").tobytes()
    if not pixels.little_endian and pixels.bits_allocated > 8:
        data = to_little_endian(data, pixels.bits_allocated // 8)
    return data


def _extended_offsets(ds: Dataset) -> tuple[bytes, bytes] | None:
    """The Extended Offset Table and its lengths (PS3.5 A.4, 7FE0,0001/0002), if any."""
    offsets = ds.get(EXTENDED_OFFSET_TABLE)
    lengths = ds.get(EXTENDED_OFFSET_TABLE_LENGTHS)
    if offsets is None or lengths is None:
        return None
    return bytes(offsets.value), bytes(lengths.value)


def _encapsulated_frames(pixels: StoredPixels, indexes: Sequence[int]) -> Iterator[bytes]:
    """The compressed frames at ``indexes`` (0-based), in the order asked."""
    if pixels.value is None and pixels.extended_offsets is None:
        located = frame_fragments(pixels.blob, pixels.value_offset, pixels.number_of_frames)
        if located is not None:
            for position in indexes:
                yield read_frame(pixels.blob, located[position])
            return
    wanted = set(indexes)
    found: dict[int, bytes] = {}
    last = max(indexes)
    extended = pixels.extended_offsets
    with pixels.blob.open() as fp:
        buffer: Any = pixels.value if pixels.value is not None else fp
        if pixels.value is None:
            fp.seek(pixels.value_offset)
        frames = generate_frames(
            buffer, number_of_frames=pixels.number_of_frames, extended_offsets=extended
        )
        for index, frame in enumerate(frames):
            if index in wanted:
                found[index] = frame
            if index >= last:
                break
    for index in indexes:
        yield found[index]


def stored_frames(pixels: StoredPixels, indexes: Sequence[int]) -> Iterator[bytes]:
    """Frames (0-based ``indexes``) as stored: native little endian or compressed."""
    if pixels.encapsulated:
        yield from _encapsulated_frames(pixels, indexes)
    else:
        for index in indexes:
            yield _native_frame(pixels, index)


def decoded_frames(pixels: StoredPixels, indexes: Sequence[int]) -> Iterator[bytes]:
    """Frames decoded to native little endian octets (Explicit VR Little Endian)."""
    if not pixels.encapsulated:
        yield from stored_frames(pixels, indexes)
        return
    for index in indexes:
        array = decode_frame(pixels, index)
        yield array.astype(array.dtype.newbyteorder("<")).tobytes()


def decode_frame(pixels: StoredPixels, index: int) -> np.ndarray[Any, Any]:
    """One frame as pydicom decodes it (colour as RGB)."""
    if pixels.value is None and pixels.transfer_syntax_uid != DEFLATED:
        with pixels.blob.open() as fp:
            return pixel_array(fp, index=index)
    return pixel_array(pixels.header, index=index)


_LAYOUTS: OrderedDict[tuple[BlobRef, str], StoredPixels] = OrderedDict()
_LAYOUTS_LOCK = threading.Lock()
_LOADING: dict[tuple[BlobRef, str], threading.Lock] = {}
LAYOUTS_KEPT = 256


def frame_source(blob: BlobRef, transfer_syntax_uid: str) -> StoredPixels:
    """:func:`stored_pixels` without its dataset, cached by blob (blobs never change).

    A viewer asks for every frame of a multi-frame object at once, and parsing an
    enhanced header (per-frame functional groups) can take a tenth of a second: the
    layout is parsed once, by one thread, and kept for the next requests.
    """
    key = (blob, transfer_syntax_uid)
    with _LAYOUTS_LOCK:
        if (known := _LAYOUTS.get(key)) is not None:
            _LAYOUTS.move_to_end(key)
            return known
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:
        with _LAYOUTS_LOCK:
            if (known := _LAYOUTS.get(key)) is not None:
                return known
        try:
            pixels = stored_pixels(blob, transfer_syntax_uid)
        except BaseException:
            with _LAYOUTS_LOCK:
                _LOADING.pop(key, None)
            raise
        if pixels.value is None:  # the values stay in the file: keep only the layout
            pixels = replace(pixels, dataset=None)
        with _LAYOUTS_LOCK:
            _LAYOUTS[key] = pixels
            while len(_LAYOUTS) > LAYOUTS_KEPT:
                _LAYOUTS.popitem(last=False)
            _LOADING.pop(key, None)
    return pixels
