"""Small synthetic studies for the regional, backup and trust tests (pydicom, explicit VR LE)."""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_hub.dicom.part10 import dataset_offset
from tests.conftest import dcmtk

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SOP_CLASSES = {"CT": CT_IMAGE, "MR": MR_IMAGE}


def study_datasets(
    *,
    patient_id: str,
    modality: str = "CT",
    study_date: str = "20260101",
    count: int = 3,
    issuer: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    body_part: str = "HEAD",
    station: str = "SCANNER1",
    ins: str = "",
) -> tuple[str, list[Path]]:
    """``count`` images of one series of one study, in memory; (Study UID, datasets)."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    sop_class = SOP_CLASSES.get(modality, SECONDARY_CAPTURE)
    datasets = []
    for number in range(1, count + 1):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = patient_id
        if issuer:
            ds.IssuerOfPatientID = issuer
        if ins:  # an INS of a test patient (france.md 3): OID 1.2.250.1.213.1.4.10
            other = Dataset()
            other.PatientID = ins
            other.IssuerOfPatientID = "1.2.250.1.213.1.4.10"
            ds.OtherPatientIDsSequence = [other]
        ds.PatientName = "ROUTING^TEST"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = study_date
        ds.StudyTime = "101010"
        ds.AccessionNumber = "ACC" + study_uid[-6:]
        ds.Modality = modality
        ds.BodyPartExamined = body_part
        ds.StationName = station
        ds.SeriesNumber = "1"
        ds.InstanceNumber = str(number)
        ds.Rows, ds.Columns = 8, 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = (np.arange(64, dtype=np.uint16) * number).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        datasets.append(ds)
    return study_uid, datasets


def make_study(folder: Path, **traits: Any) -> tuple[str, list[Path]]:
    """Write :func:`study_datasets` (same keywords) to ``folder``; (Study UID, files)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, datasets = study_datasets(**traits)
    files = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study_uid, files


def dataset_digest(part10: bytes) -> str:
    """SHA-256 of the dataset after the File Meta group (what C-STORE carries)."""
    return hashlib.sha256(part10[dataset_offset(io.BytesIO(part10)) :]).hexdigest()


def storescu(calling_ae: str, called_ae: str, port: int, files: Sequence[Path]) -> None:
    """Send ``files`` with dcmtk's storescu; fail the test on any error."""
    subprocess.run(
        [dcmtk("storescu"), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        check=True,
        capture_output=True,
        timeout=120,
    )
