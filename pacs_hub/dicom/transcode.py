"""Transcoding a stored instance to Explicit VR Little Endian (PS3.5 A.2; PS3.18 8.7.3).

Explicit VR Little Endian is the default transfer syntax of DICOMweb (PS3.18 8.7.3,
Table 8.7.3-2) and the one transfer syntax, besides "as stored", that the hub
transcodes to:

* Implicit VR Little Endian and Deflated: re-encoded with the VRs of the data
  dictionary (unknown private elements become UN, PS3.5 6.2.2);
* Explicit VR Big Endian: every value decoded, binary values (OW, OF, OL, OD, OV)
  byte-swapped (PS3.5 7.3), then written little endian;
* encapsulated (compressed) Pixel Data: decoded with pydicom's codecs, colour
  converted to RGB (Photometric Interpretation updated, PS3.5 8.2.1 notes), Planar
  Configuration 0, written native; the SOP Instance UID is kept (same instance, other
  encoding: what a DIMSE transfer syntax conversion does).

The result is a new Part 10 file in memory (one instance at a time); the stored
blob is never modified.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset

from pacs_hub.dicom.frames import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    can_decode,
    is_native,
    to_little_endian,
)
from pacs_hub.storage.blob_ref import BlobRef

SWAP_WIDTHS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def can_transcode(transfer_syntax_uid: str) -> bool:
    """True when an instance stored in ``transfer_syntax_uid`` can become Explicit VR LE."""
    return can_decode(transfer_syntax_uid)


def _swap_binary_values(ds: Dataset) -> None:
    """Decode every element of a big endian dataset; swap its binary values in place."""
    for element in ds:  # iterating converts each raw element with the dataset's endianness
        if element.VR == "SQ":
            for item in element.value:
                _swap_binary_values(item)
        elif element.VR in SWAP_WIDTHS and element.value:
            element.value = to_little_endian(bytes(element.value), SWAP_WIDTHS[element.VR])


def to_explicit_little_endian(blob: BlobRef, transfer_syntax_uid: str) -> bytes:
    """The stored instance ``blob`` as a Part 10 file in Explicit VR Little Endian."""
    if transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN:
        return blob.read_bytes()
    with blob.open() as fp:
        ds = pydicom.dcmread(fp)  # nothing deferred: every value is read here
    if transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN:
        _swap_binary_values(ds)
    elif not is_native(transfer_syntax_uid) and "PixelData" in ds:
        ds.decompress(generate_instance_uid=False)  # same instance, other encoding
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(EXPLICIT_VR_LITTLE_ENDIAN)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()
