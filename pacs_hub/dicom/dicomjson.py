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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName

from pacs_hub.dicom import rawjson
from pacs_hub.dicom import rawvalues as rv
from pacs_hub.dicom.rawjson import BINARY_VRS, BULK_THRESHOLD, PIXEL_TAGS
from pacs_hub.dicom.rawvalues import NeedsPydicom

LOGGER = logging.getLogger(__name__)

__all__ = ["BULK_THRESHOLD", "PIXEL_TAGS", "encode", "expand", "instance_json", "join"]
_URI_KEY = '"BulkDataURI":"'
Walker = Callable[[Dataset, str], dict[str, Any]]


def _is_bulk(elem: DataElement) -> bool:
    if elem.tag in PIXEL_TAGS:
        return True
    if elem.VR not in BINARY_VRS or elem.value is None:
        return False
    return len(elem.value) > BULK_THRESHOLD


def _element(elem: DataElement, path: str, walk: Walker) -> dict[str, Any] | None:
    if elem.VR == "SQ":
        items = [walk(item, f"{path}/{i}/") for i, item in enumerate(elem.value)]
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


def _pydicom_element(ds: Dataset, tag: BaseTag, path: str, walk: Walker) -> dict[str, Any] | None:
    """One element through pydicom's conversion and ``DataElement.to_json_dict``."""
    stub = _deferred_bulk(ds, tag)
    if stub is not None and "BulkDataURI" in stub:
        stub["BulkDataURI"] = path
        return stub
    return _element(ds[tag], path, walk)


def reference_json(ds: Dataset, prefix: str = "") -> dict[str, Any]:
    """The JSON object of ``ds`` with every element converted by pydicom.

    The model :func:`instance_json` must match; used whole when pydicom is configured
    otherwise than the fast reading assumes.
    """
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if tag.element == 0:  # group lengths are not part of the JSON model (F.2.2)
            continue
        key = f"{int(tag):08X}"
        value = _pydicom_element(ds, tag, f"{prefix}{key}", reference_json)
        if value is not None:
            out[key] = value
    return out


def _fast_dataset(ds: Dataset, prefix: str = "") -> dict[str, Any]:
    """Like :func:`reference_json`, raw elements encoded by :mod:`rawjson`.

    An element the fast reading cannot vouch for goes through pydicom alone; for
    a sequence parsed here, the whole top-level sequence does.
    """
    encodings = rv.dataset_encodings(ds)

    def creator(creator_tag: int) -> str | None:
        return _creator(ds, creator_tag, encodings)

    out: dict[str, Any] = {}
    for tag in list(ds._dict):
        if not tag & 0xFFFF:  # group lengths are not part of the JSON model (F.2.2)
            continue
        key = f"{tag:08X}"
        try:
            value = _fast_element(ds, tag, encodings, creator, prefix + key)
        except NeedsPydicom:
            value = _pydicom_element(ds, tag, prefix + key, _fast_dataset)
        if value is not None:
            out[key] = value
    return out


def _fast_element(
    ds: Dataset,
    tag: BaseTag,
    encodings: Sequence[str],
    creator: rawjson.CreatorLookup,
    path: str,
) -> dict[str, Any] | None:
    elem = ds._dict[tag]
    if not isinstance(elem, RawDataElement):
        return _converted_element(elem, path)
    value = elem.value if elem.length else b""
    deferred = value is None and elem.length != rv.UNDEFINED_LENGTH
    stub = rawjson.bulk_stub_vr(tag, elem.VR, deferred)
    if stub is not None:
        return {"vr": stub, "BulkDataURI": path}
    if value is None or len(value) != elem.length or tag in PIXEL_TAGS:
        raise NeedsPydicom("deferred, undefined length or incomplete value")
    return rawjson.element_json(
        tag, elem.VR, value, elem.is_little_endian, elem.is_implicit_VR, encodings, creator, path
    )


def _converted_element(elem: DataElement, path: str) -> dict[str, Any]:
    """An element pydicom converted already (read by the header): sequences and text."""
    vr = elem.VR
    if vr == "SQ":
        items = [_fast_dataset(item, f"{path}/{i}/") for i, item in enumerate(elem.value)]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    value = elem.value
    if vr not in rv.PLAIN_STRING_VRS | {"PN"} or elem.tag in PIXEL_TAGS:
        raise NeedsPydicom("converted value")
    if isinstance(value, PersonName) and value.components:
        return {"vr": vr, "Value": [rawjson.person_name(value.components)]} if value else {"vr": vr}
    if isinstance(value, str):
        return {"vr": vr, "Value": [value]} if value else {"vr": vr}
    if isinstance(value, MultiValue) and all(isinstance(v, str) for v in value):
        return {"vr": vr, "Value": list(value)} if value else {"vr": vr}
    raise NeedsPydicom("converted value")


def _creator(ds: Dataset, creator_tag: int, encodings: Sequence[str]) -> str | None:
    """The Private Creator value of a block of ``ds``, None when the element is absent."""
    elem = ds._dict.get(BaseTag(creator_tag))
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        value = elem.value if elem.length else b""
        return rawjson.creator_text(elem.VR, value, encodings)
    if not isinstance(elem.value, str):
        raise NeedsPydicom("unusual Private Creator")
    return elem.value


def instance_json(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON object of one instance (no File Meta), bulk values as paths."""
    if not rv.pydicom_settings_supported():
        return reference_json(ds)
    return _fast_dataset(ds)


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
