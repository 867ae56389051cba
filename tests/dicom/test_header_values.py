"""The header record's values read from raw elements equal pydicom's ``ds.get`` reading.

``header._text`` and ``header._int`` read most elements straight from their bytes
(:mod:`pacs_hub.dicom.rawvalues`); the functions below are what they replaced.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from pacs_hub.dicom import header
from tests.conftest import DATA
from tests.dicom.encoded import Syntax, part10
from tests.dicom.test_dicomjson import SHARED_FILES, random_dataset

KEYWORDS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SpecificCharacterSet",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesDate",
    "SeriesTime",
    "StationName",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "ImageType",
    "PixelSpacing",
    "WindowCenter",
    "OtherPatientIDs",
    "PatientAge",
    "RetrieveAETitle",
    "ReferencedFrameNumber",
    "SmallestImagePixelValue",
]


def pydicom_text(ds: Dataset, keyword: str) -> str:
    value: Any = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def pydicom_int(ds: Dataset, keyword: str) -> int | None:
    value: Any = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def outcome(function: Any, ds: Dataset, keyword: str) -> object:
    try:
        return function(ds, keyword)
    except Exception as exc:
        return type(exc)


def assert_same_values(data: bytes, keywords: list[str]) -> None:
    old = pydicom.dcmread(io.BytesIO(data), force=True)
    new = pydicom.dcmread(io.BytesIO(data), force=True)
    for keyword in keywords:
        assert outcome(header._text, new, keyword) == outcome(pydicom_text, old, keyword)
        assert outcome(header._int, new, keyword) == outcome(pydicom_int, old, keyword)


@pytest.mark.parametrize("name", SHARED_FILES, ids=str)
def test_shared_file_values(name: Path) -> None:
    assert_same_values((DATA / name).read_bytes(), KEYWORDS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dataset())
def test_random_element_values(drawn: tuple[Syntax, bytes]) -> None:
    syntax, body = drawn
    data = part10(syntax, body)
    ds = pydicom.dcmread(io.BytesIO(data))
    keywords = [keyword_for_tag(tag) for tag in ds.keys()]  # noqa: SIM118 (tags, not elements)
    assert_same_values(data, [k for k in keywords if k])


def test_record_of_a_ct() -> None:
    """The record itself, on a real CT: values as the index has always had them."""
    ct = sorted((DATA / "volumes/ct_philips_ingenuity_head_phantom_axial_5mm").iterdir())[0]
    record = header.parse_header(ct.read_bytes())
    ds = pydicom.dcmread(ct)
    assert record.modality == "CT" == pydicom_text(ds, "Modality")
    assert record.rows == 512 == pydicom_int(ds, "Rows")
    assert record.patient_name == pydicom_text(ds, "PatientName")
    assert record.instance_number == pydicom_text(ds, "InstanceNumber")
