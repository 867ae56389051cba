"""Instance metadata in the DICOM JSON Model (PS3.18 Annex F.2), made once at ingest.

WADO-RS metadata (PS3.18 10.4.1.1.2) must never carry pixel data inline: Pixel Data
(and Float/Double Float Pixel Data) at any depth, and any other binary value larger
than :data:`BULK_THRESHOLD`, become a ``BulkDataURI`` (F.2.6). What is stored is the
compact JSON text of one instance, compressed, with each ``BulkDataURI`` holding only
the element's path inside the instance (tags and 0-based item indexes, slash
separated: ``7FE00010``, ``00880200/0/7FE00010``); :func:`expand` prefixes the
instance's absolute URL at answer time, so a series' metadata is a concatenation of
stored texts, not a re-read of every blob.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

LOGGER = logging.getLogger(__name__)

BULK_THRESHOLD = 65536
"""Binary values above this many bytes go out as BulkDataURI (palette LUTs stay inline)."""
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_URI_KEY = '"BulkDataURI":"'


def _is_bulk(elem: DataElement) -> bool:
    if elem.tag in PIXEL_TAGS:
        return True
    if elem.VR not in BINARY_VRS or elem.value is None:
        return False
    return len(elem.value) > BULK_THRESHOLD


def _element(elem: DataElement, path: str) -> dict[str, Any] | None:
    if elem.VR == "SQ":
        items = [_dataset(item, f"{path}/{i}/") for i, item in enumerate(elem.value)]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if _is_bulk(elem):
        return {"vr": elem.VR, "BulkDataURI": path.rstrip("/")}
    try:
        return elem.to_json_dict(None, BULK_THRESHOLD)
    except Exception as exc:  # an unreadable value: leave the element out, say which
        LOGGER.warning("metadata: element %s left out (%s)", elem.tag, type(exc).__name__)
        return None


def _deferred_bulk(ds: Dataset, tag: BaseTag) -> dict[str, Any] | None:
    """A BulkDataURI stub for pixel data or a deferred binary value, without reading it.

    Accessing such an element through the dataset would read its value from disk.
    """
    raw = ds.get_item(tag, keep_deferred=True)
    if not isinstance(raw, RawDataElement):
        return None
    deferred = raw.value is None and raw.length not in (0, 0xFFFFFFFF)
    if int(tag) not in PIXEL_TAGS and not deferred:
        return None
    vr = str(raw.VR or "")
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    vr = "OW" if " or " in vr else vr
    return {"vr": vr} if vr not in BINARY_VRS else {"vr": vr, "BulkDataURI": ""}


def _dataset(ds: Dataset, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if tag.element == 0:  # group lengths are not part of the JSON model (F.2.2)
            continue
        key = f"{int(tag):08X}"
        stub = _deferred_bulk(ds, tag)
        if stub is not None and "BulkDataURI" in stub:
            stub["BulkDataURI"] = f"{prefix}{key}"
            out[key] = stub
            continue
        value = _element(ds[tag], f"{prefix}{key}")
        if value is not None:
            out[key] = value
    return out


def instance_json(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON object of one instance (no File Meta), bulk values as paths."""
    return _dataset(ds)


def encode(ds: Dataset) -> bytes:
    """The stored form: compact JSON text of :func:`instance_json`, zlib-compressed."""
    text = json.dumps(instance_json(ds), separators=(",", ":"), ensure_ascii=False)
    return zlib.compress(text.encode("utf-8"), 1)


def expand(stored: bytes, instance_url: str) -> str:
    """The JSON text of one instance with absolute BulkDataURIs under ``instance_url``.

    JSON escapes every quote inside string values, so the key pattern only ever
    matches the BulkDataURI keys this module wrote.
    """
    text = zlib.decompress(stored).decode("utf-8")
    return text.replace(_URI_KEY, f"{_URI_KEY}{instance_url}/bulkdata/")


def join(texts: Iterable[str]) -> str:
    """A JSON array of instance objects given as JSON texts."""
    return "[" + ",".join(texts) + "]"
