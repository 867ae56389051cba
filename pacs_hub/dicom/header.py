"""Turn received bytes into a typed header record, once, at the edge.

Validation follows what an archive needs to index an instance safely: a Part 10
file with a Transfer Syntax UID (PS3.10 7.1), a storage SOP class (PS3.4 B.5),
the four identifying UIDs (PS3.3 C.12.1, C.7.2.1, C.7.3.1) in valid UI syntax
(PS3.5 9.1), and every top-level element complete (no truncated value).
Nothing here decodes pixel data.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from pacs_hub.dicom import rawvalues as rv
from pacs_hub.dicom.ins import identity_traits
from pacs_hub.dicom.part10_reader import read_part10
from pacs_hub.dicom.rawvalues import NeedsPydicom
from pacs_hub.errors import InvalidInstance, MissingAttribute, UnsupportedSOPClass

# Archive input is whatever modalities send: read values leniently (no warning per
# bad VR value, which would flood the logs); validation below decides what is refused.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UNDEFINED_LENGTH = 0xFFFFFFFF
DEFER_SIZE = 1 << 20
"""Values above this size, read from a file, stay on disk until used (PS3.10 file)."""
_INTEGER_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})


def is_valid_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, no leading zero in a component, at most 64 chars."""
    return 0 < len(value) <= 64 and UID_PATTERN.match(value) is not None


def is_storage_sop_class(uid: str) -> bool:
    """True when ``uid`` is a Storage SOP Class of PS3.4 B.5 (or Non-Patient, GG)."""
    return issubclass(uid_to_service_class(uid), StorageServiceClass)


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the index keeps of one instance (all strings decoded to Unicode)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    specific_character_set: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    modality: str
    series_number: str
    series_description: str
    body_part_examined: str
    series_date: str
    series_time: str
    station_name: str
    instance_number: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    # Identity traits (france.md 3), read once here for the regional cross-reference.
    ins: str = ""
    """INS matricule when a qualified one is carried (see :func:`identity_traits`)."""
    ins_oid: str = ""
    birth_name: str = ""
    given_names: str = ""
    birth_place: str = ""


def _text(ds: Dataset, keyword: str, raw: bool = True) -> str:
    """The value as text: one value stripped, several joined by backslashes.

    ``raw``: read raw values directly (:func:`rawvalues.pydicom_settings_supported`,
    asked once per instance by the caller), else through pydicom.
    """
    elem = ds._dict.get(_tag(keyword))
    if elem is None:
        return ""
    if raw and isinstance(elem, RawDataElement):
        try:
            values = _raw_values(ds, elem)
            return values[0].strip() if len(values) == 1 else "\\".join(values)
        except NeedsPydicom:
            pass
    value: Any = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str, raw: bool = True) -> int | None:
    """A single integer value, None when absent, empty, several or not a number."""
    elem = ds._dict.get(_tag(keyword))
    if elem is None:
        return None
    if raw and isinstance(elem, RawDataElement) and _raw_vr(elem) in _INTEGER_VRS:
        try:
            values = _raw_values(ds, elem)
            return int(values[0]) if len(values) == 1 else None
        except NeedsPydicom:
            pass
    value: Any = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=128)
def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return BaseTag(tag)


def _no_creator(creator_tag: int) -> str | None:
    raise NeedsPydicom("private element")


def _raw_vr(elem: RawDataElement) -> str:
    try:
        return rv.element_vr(int(elem.tag), elem.VR, elem.value, _no_creator)
    except NeedsPydicom:
        return ""


def _raw_values(ds: Dataset, elem: RawDataElement) -> list[str]:
    """The values of a raw element as ``str()`` of pydicom's values gives them."""
    value = elem.value if elem.length else b""
    if value is None or len(value) != elem.length:
        raise NeedsPydicom("deferred or incomplete value")
    vr = _raw_vr(elem)
    if vr in rv.PLAIN_STRING_VRS:
        return rv.string_values(vr, value, rv.dataset_encodings(ds))
    if vr == "PN":
        return ["=".join(groups) for groups in rv.person_names(value, rv.dataset_encodings(ds))]
    if vr == "IS":
        return [token.strip() for token in rv.integer_strings(value)]
    if vr == "DS":
        return [token.strip() for token in rv.decimal_strings(value)]
    if vr in rv.NUMBER_FORMATS:
        found = rv.numbers(int(elem.tag), vr, value, elem.is_little_endian)
        if len(found) > 1:  # pydicom holds a plain list here, whose str() differs
            raise NeedsPydicom("several binary numbers")
        return [str(v) for v in found]
    raise NeedsPydicom(f"VR {vr}")


def _check_complete(ds: Dataset, file_size: int | None = None) -> None:
    """Every top-level element with a defined length must have all its bytes.

    For a dataset read from a file with deferred values, a deferred element must
    end within the file (``file_size``).
    """
    for tag, raw in ds._dict.items():
        if not isinstance(raw, RawDataElement) or raw.length == UNDEFINED_LENGTH:
            continue
        if raw.value is None and file_size is not None:
            if raw.value_tell + raw.length > file_size:
                raise InvalidInstance(f"truncated element {tag}: the file ends before its end")
            continue
        if raw.value is not None and len(raw.value) != raw.length:
            raise InvalidInstance(
                f"truncated element {tag}: {len(raw.value)} of {raw.length} bytes present"
            )


def _read(data: bytes | Path) -> Dataset:
    in_memory = isinstance(data, bytes)
    if in_memory:
        plain = read_part10(data)  # type: ignore[arg-type]
        if plain is not None:
            return plain
    source: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(source, force=False, defer_size=None if in_memory else DEFER_SIZE)
        except InvalidDicomError as exc:
            raise InvalidInstance(f"not a DICOM Part 10 file: {exc}") from exc
        except Exception as exc:  # pydicom raises many types on corrupt input
            raise InvalidInstance(f"cannot parse dataset: {exc}") from exc
    for warning in caught:
        if "End of file reached" in str(warning.message):
            raise InvalidInstance(f"truncated dataset: {warning.message}")
    return ds


def _uid(ds: Dataset, keyword: str, raw: bool = True) -> str:
    value = _text(ds, keyword, raw)
    if not value:
        raise MissingAttribute(f"missing {keyword}")
    if not is_valid_uid(value):
        raise InvalidInstance(f"invalid {keyword} {value[:40]!r}")
    return value


def parse_header(data: bytes) -> InstanceHeader:
    """Parse and validate a Part 10 file held in memory; raise a :class:`HubError`."""
    return parse_instance(data)[0]


def parse_instance(data: bytes | Path) -> tuple[InstanceHeader, Dataset]:
    """Like :func:`parse_header`, also returning the parsed dataset (for metadata).

    ``data`` is the Part 10 bytes, or a file holding them: then values larger than
    :data:`DEFER_SIZE` (pixel data) are not read, only checked to be complete.
    """
    ds = _read(data)
    raw = rv.pydicom_settings_supported()
    transfer_syntax = _text(ds.file_meta, "TransferSyntaxUID", raw)
    if not transfer_syntax:
        raise MissingAttribute("File Meta has no TransferSyntaxUID (0002,0010)")
    try:
        _check_complete(ds, None if isinstance(data, bytes) else data.stat().st_size)
        sop_class = _uid(ds, "SOPClassUID", raw)
        if not is_storage_sop_class(sop_class):
            raise UnsupportedSOPClass(f"SOP Class {sop_class} is not a storage SOP class")
        record = _record(ds, sop_class, transfer_syntax, raw)
    except (LookupError, ValueError, TypeError) as exc:
        raise InvalidInstance(f"cannot read attribute: {exc}") from exc
    announced = _text(ds.file_meta, "MediaStorageSOPInstanceUID", raw)
    if announced and announced != record.sop_instance_uid:
        raise InvalidInstance(
            "SOP Instance UID differs from the announced one: "
            f"{record.sop_instance_uid} in the dataset, {announced} announced"
        )
    return record, ds


def _record(ds: Dataset, sop_class: str, transfer_syntax: str, raw: bool) -> InstanceHeader:
    def text(item: Dataset, keyword: str) -> str:
        return _text(item, keyword, raw)

    traits = identity_traits(ds, text)
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=_uid(ds, "SOPInstanceUID", raw),
        study_instance_uid=_uid(ds, "StudyInstanceUID", raw),
        series_instance_uid=_uid(ds, "SeriesInstanceUID", raw),
        transfer_syntax_uid=transfer_syntax,
        specific_character_set=text(ds, "SpecificCharacterSet"),
        patient_id=text(ds, "PatientID"),
        issuer_of_patient_id=text(ds, "IssuerOfPatientID"),
        patient_name=text(ds, "PatientName"),
        patient_birth_date=text(ds, "PatientBirthDate"),
        patient_sex=text(ds, "PatientSex"),
        study_date=text(ds, "StudyDate"),
        study_time=text(ds, "StudyTime"),
        accession_number=text(ds, "AccessionNumber"),
        study_id=text(ds, "StudyID"),
        study_description=text(ds, "StudyDescription"),
        referring_physician_name=text(ds, "ReferringPhysicianName"),
        modality=text(ds, "Modality"),
        series_number=text(ds, "SeriesNumber"),
        series_description=text(ds, "SeriesDescription"),
        body_part_examined=text(ds, "BodyPartExamined"),
        series_date=text(ds, "SeriesDate"),
        series_time=text(ds, "SeriesTime"),
        station_name=text(ds, "StationName"),
        instance_number=text(ds, "InstanceNumber"),
        rows=_int(ds, "Rows", raw),
        columns=_int(ds, "Columns", raw),
        number_of_frames=_int(ds, "NumberOfFrames", raw),
        ins=traits.ins,
        ins_oid=traits.ins_oid,
        birth_name=traits.birth_name,
        given_names=traits.given_names,
        birth_place=traits.birth_place,
    )
