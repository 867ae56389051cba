"""Checks that an output object is complete before it leaves the pipeline.

A table of the attributes each written IOD requires (Type 1: present and not empty,
Type 2: present), taken from PS3.3 for the modules we write (A.3 CT Image, A.4 MR Image,
A.8.1 Secondary Capture Image, A.85.1 Encapsulated STL), plus pixel-data consistency
(PS3.5 8.1.1: length = rows x columns x samples x bytes x frames, padded to even) and a
Part 10 round trip. ``dicom-validator`` (PyPI) checks against the full standard but needs
the standard's DocBook files downloaded at first use, which this deployment cannot do
offline; tests run it when ``PACS_HUB_DICOM_SPEC_DIR`` points at a local copy.
"""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from workers.processing.errors import ProcessingError

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
ENCAPSULATED_STL = UID("1.2.840.10008.5.1.4.1.1.104.3")

Requirement = tuple[str, int]

_COMMON: tuple[Requirement, ...] = (
    ("PatientName", 2),
    ("PatientID", 2),
    ("PatientBirthDate", 2),
    ("PatientSex", 2),
    ("StudyInstanceUID", 1),
    ("StudyDate", 2),
    ("StudyTime", 2),
    ("ReferringPhysicianName", 2),
    ("StudyID", 2),
    ("AccessionNumber", 2),
    ("Modality", 1),
    ("SeriesInstanceUID", 1),
    ("Manufacturer", 2),
    ("SOPClassUID", 1),
    ("SOPInstanceUID", 1),
)
_IMAGE: tuple[Requirement, ...] = (
    ("SeriesNumber", 2),
    ("InstanceNumber", 2),
    ("ImageType", 1),
    ("SamplesPerPixel", 1),
    ("PhotometricInterpretation", 1),
    ("Rows", 1),
    ("Columns", 1),
    ("BitsAllocated", 1),
    ("BitsStored", 1),
    ("HighBit", 1),
    ("PixelRepresentation", 1),
    ("PixelData", 1),
)
_PLANE: tuple[Requirement, ...] = (
    ("FrameOfReferenceUID", 1),
    ("PositionReferenceIndicator", 2),
    ("PixelSpacing", 1),
    ("ImageOrientationPatient", 1),
    ("ImagePositionPatient", 1),
    ("SliceThickness", 2),
    ("PatientPosition", 2),
)
REQUIRED: dict[str, tuple[Requirement, ...]] = {
    CT_IMAGE: _COMMON
    + _IMAGE
    + _PLANE
    + (("RescaleIntercept", 1), ("RescaleSlope", 1), ("KVP", 2), ("AcquisitionNumber", 2)),
    MR_IMAGE: _COMMON
    + _IMAGE
    + _PLANE
    + (
        ("ScanningSequence", 1),
        ("SequenceVariant", 1),
        ("ScanOptions", 2),
        ("MRAcquisitionType", 2),
        ("EchoTime", 2),
        ("EchoTrainLength", 2),
    ),
    SECONDARY_CAPTURE: _COMMON + _IMAGE + (("ConversionType", 1), ("PatientOrientation", 2)),
    ENCAPSULATED_STL: (
        *_COMMON,
        ("SeriesNumber", 1),
        ("FrameOfReferenceUID", 1),
        ("PositionReferenceIndicator", 2),
        ("Manufacturer", 1),
        ("ManufacturerModelName", 1),
        ("DeviceSerialNumber", 1),
        ("SoftwareVersions", 1),
        ("InstanceNumber", 1),
        ("ContentDate", 2),
        ("ContentTime", 2),
        ("AcquisitionDateTime", 2),
        ("BurnedInAnnotation", 1),
        ("DocumentTitle", 2),
        ("ConceptNameCodeSequence", 2),
        ("MIMETypeOfEncapsulatedDocument", 1),
        ("EncapsulatedDocument", 1),
        ("EncapsulatedDocumentLength", 1),
        ("MeasurementUnitsCodeSequence", 1),
        ("ModelModification", 1),
        ("ModelMirroring", 1),
        ("ModelUsageCodeSequence", 2),
        ("SourceInstanceSequence", 1),
    ),
}


def problems(ds: Dataset) -> list[str]:
    """What is wrong with ``ds`` as an instance of its SOP class (empty when nothing)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in REQUIRED:
        return [f"SOP class {sop_class or '(none)'} is not one the pipeline writes"]
    found = []
    for keyword, kind in REQUIRED[sop_class]:
        if keyword not in ds:
            found.append(f"{keyword} (Type {kind}) is missing")
        elif kind == 1 and ds[keyword].value in (None, "", b"", []):
            found.append(f"{keyword} (Type 1) is empty")
    if "PixelData" in ds and "Rows" in ds:
        found.extend(_pixel_problems(ds))
    if ds.file_meta.get("MediaStorageSOPInstanceUID") != ds.get("SOPInstanceUID"):
        found.append("File Meta MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    return found


def _pixel_problems(ds: Dataset) -> list[str]:
    expected = (
        int(ds.Rows)
        * int(ds.Columns)
        * int(ds.SamplesPerPixel)
        * (int(ds.BitsAllocated) // 8)
        * int(ds.get("NumberOfFrames", 1) or 1)
    )
    actual = len(ds.PixelData)
    if actual not in (expected, expected + expected % 2):
        return [f"Pixel Data holds {actual} bytes, expected {expected + expected % 2}"]
    return []


def to_bytes(ds: Dataset) -> bytes:
    """The Part 10 file of ``ds`` (preamble, File Meta, dataset)."""
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def validate(ds: Dataset) -> bytes:
    """Check ``ds`` and return its Part 10 bytes; ProcessingError listing every problem.

    The bytes are read back with pydicom and checked again, so what is returned is what
    a reader will see.
    """
    found = problems(ds)
    if not found:
        data = to_bytes(ds)
        found = problems(pydicom.dcmread(BytesIO(data)))
        if not found:
            return data
    raise ProcessingError(
        f"output {ds.get('SOPInstanceUID', '?')} ({ds.get('SeriesDescription', '')}) is "
        f"not a valid instance: {'; '.join(found)}"
    )
