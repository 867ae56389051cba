"""Deterministic synthetic CT data (CT Image Storage, Explicit VR Little Endian).

Three corpora, each written once into ``bench/out/data/<name>/part{0..3}/`` and
reused while its ``complete.json`` marker exists:

* ``ct512``: 2 studies x 1 series x N slices of 512x512 16-bit (about 526 KB each);
* ``ct64``: S studies on S/2 patients x 2 series x 5 slices of 64x64 (about 9.6 KB);
* ``idx``: N single-instance 8x8 studies on N/2 patients (the C-FIND index);
* ``fed1``..``fed3``: laid out as ``ct64``, one per establishment PACS of the
  federation section (the same patients, by name, under each one's own Patient IDs).

Every identifier (patient, study date, UIDs) is a pure function of the indexes, so
queries can be built without reading the files back. Files are spread round-robin
over four part folders so that 1, 2 or 4 storescu processes get disjoint halves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

UID_ROOT = "1.2.826.0.1.3680043.8.498.77."
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PARTS = 4
FIRST_DAY = date(2000, 1, 1)
DATE_SPAN_DAYS = 7300
CODES = {"ct512": 1, "ct64": 2, "idx": 3, "fed1": 4, "fed2": 5, "fed3": 6}


@dataclass(frozen=True, slots=True)
class Corpus:
    """A generated set of files on disk."""

    name: str
    root: Path
    count: int
    total_bytes: int

    @property
    def parts(self) -> list[Path]:
        return [self.root / f"part{k}" for k in range(PARTS)]

    def split(self, processes: int) -> list[list[Path]]:
        """The part folders grouped for ``processes`` parallel senders (1, 2 or 4)."""
        if PARTS % processes:
            raise ValueError(f"{processes} senders cannot split {PARTS} parts evenly")
        per = PARTS // processes
        return [self.parts[i * per : (i + 1) * per] for i in range(processes)]

    @property
    def mean_bytes(self) -> float:
        return self.total_bytes / self.count


@dataclass(frozen=True, slots=True)
class Slice:
    """Where one instance sits in its corpus."""

    study: int
    series: int
    number: int
    patient: int


def study_uid(kind: str, study: int) -> str:
    return f"{UID_ROOT}{CODES[kind]}.{study + 1}"


def series_uid(kind: str, study: int, series: int) -> str:
    return f"{study_uid(kind, study)}.{series + 1}"


def instance_uid(kind: str, s: Slice) -> str:
    return f"{series_uid(kind, s.study, s.series)}.{s.number + 1}"


def patient_id(kind: str, patient: int) -> str:
    return f"{kind.upper()}{patient:06d}"


def patient_name(patient: int) -> str:
    """A deterministic FAMILY^GIVEN name; the family's 3-letter prefixes spread evenly."""
    mixed = (patient * 2654435761 + 12345) % (26**8)
    letters = []
    for _ in range(8):
        mixed, digit = divmod(mixed, 26)
        letters.append(chr(ord("A") + digit))
    return f"{''.join(letters[:6])}^{''.join(letters[6:])}X"


def study_date(kind: str, study: int) -> date:
    return FIRST_DAY + timedelta(days=(study * 7919 + CODES[kind]) % DATE_SPAN_DAYS)


def base_dataset(size: int) -> Dataset:
    """Everything that is the same in every instance of a corpus."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.Modality = "CT"
    ds.Manufacturer = "PACS Hub bench"
    ds.ReferringPhysicianName = "REFERRER^BENCH"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.SliceThickness = "1.0"
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [round(350.0 / size, 4)] * 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def fill_instance(ds: Dataset, kind: str, s: Slice) -> None:
    """Set the per-instance attributes (identity, position)."""
    day = study_date(kind, s.study)
    ds.PatientID = patient_id(kind, s.patient)
    ds.PatientName = patient_name(s.patient)
    ds.PatientBirthDate = (date(1940, 1, 1) + timedelta(days=(s.patient * 37) % 25000)).strftime(
        "%Y%m%d"
    )
    ds.PatientSex = "FM"[s.patient % 2]
    ds.StudyInstanceUID = study_uid(kind, s.study)
    ds.SeriesInstanceUID = series_uid(kind, s.study, s.series)
    ds.SOPInstanceUID = instance_uid(kind, s)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(instance_uid(kind, s))
    ds.FrameOfReferenceUID = f"{ds.SeriesInstanceUID}.0"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = f"{8 + s.study % 10:02d}{s.study % 60:02d}00"
    ds.AccessionNumber = f"A{CODES[kind]}{s.study:07d}"
    ds.StudyID = str(s.study + 1)
    ds.StudyDescription = "CT THORAX BENCH"
    ds.SeriesNumber = s.series + 1
    ds.SeriesDescription = f"AXIAL {s.series + 1}"
    ds.InstanceNumber = s.number + 1
    ds.ImagePositionPatient = [-175.0, -175.0, round(-s.number * 1.0, 2)]
    ds.SliceLocation = str(round(-s.number * 1.0, 2))


class Phantom:
    """A smooth thorax (body, lungs, spine, aorta, table) varying along z, plus noise."""

    def __init__(self, size: int, seed: int) -> None:
        self.y, self.x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
        self.rng = np.random.default_rng(seed)

    def slice(self, z: float) -> bytes:
        x, y = self.x, self.y
        hu = np.full(x.shape, -1000.0)
        body = (x / 0.85) ** 2 + (y / 0.6) ** 2 <= 1
        hu[body] = 40.0
        lung = 0.22 + 0.06 * np.sin(z * np.pi)
        for cx in (-0.38, 0.38):
            hu[((x - cx) / lung) ** 2 + (y / (lung * 1.6)) ** 2 <= 1] = -850.0
        hu[x**2 + (y - 0.4) ** 2 <= 0.08**2] = 700.0
        hu[(x - 0.1) ** 2 + (y - 0.15) ** 2 <= 0.05**2] = 150.0
        hu[(y > 0.75) & (y < 0.8) & (np.abs(x) < 0.9)] = 300.0
        hu[body] += self.rng.normal(0.0, 6.0, size=int(body.sum()))
        return np.clip(hu + 1024.0, 0, 4095).astype("<u2").tobytes()


def ct512_slices(slices: int) -> Iterator[Slice]:
    for study in range(2):
        for number in range(slices):
            yield Slice(study, 0, number, study)


def ct64_slices(studies: int) -> Iterator[Slice]:
    for study in range(studies):
        for series in range(2):
            for number in range(5):
                yield Slice(study, series, number, study // 2)


def idx_slices(studies: int) -> Iterator[Slice]:
    for study in range(studies):
        yield Slice(study, 0, 0, study // 2)


def write_corpus(kind: str, root: Path, size: int, slices: Iterator[Slice], z_steps: int) -> int:
    """Write every slice as a Part 10 file; return the total size in bytes."""
    for part in range(PARTS):
        (root / f"part{part}").mkdir(parents=True, exist_ok=True)
    ds = base_dataset(size)
    phantom = Phantom(size, seed=CODES[kind])
    flat = np.full(size * size, 1024, dtype="<u2").tobytes()
    total = 0
    for index, s in enumerate(slices):
        fill_instance(ds, kind, s)
        ds.PixelData = phantom.slice(s.number / z_steps) if size >= 64 else flat
        path = root / f"part{index % PARTS}" / f"{index:07d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        total += path.stat().st_size
    return total


def corpus(out: Path, kind: str, count_param: int) -> Corpus:
    """The corpus ``kind`` sized by ``count_param``, generated unless cached."""
    root = out / "data" / f"{kind}-{count_param}"
    marker = root / "complete.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        return Corpus(kind, root, meta["count"], meta["total_bytes"])
    if kind == "ct512":
        slices, size, z = ct512_slices(count_param), 512, count_param
    elif kind == "ct64" or kind.startswith("fed"):
        slices, size, z = ct64_slices(count_param), 64, 5
    else:
        slices, size, z = idx_slices(count_param), 8, 1
    total = write_corpus(kind, root, size, slices, z)
    count = sum(1 for part in range(PARTS) for _ in (root / f"part{part}").iterdir())
    marker.write_text(json.dumps({"count": count, "total_bytes": total}))
    return Corpus(kind, root, count, total)
