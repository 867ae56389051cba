"""Shared inputs for the processing tests: the real series and synthetic volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from tests.conftest import DATA
from workers.processing.volume import SourceFrame, Volume

VOLUMES = DATA / "volumes"
CT = VOLUMES / "ct_philips_ingenuity_head_phantom_axial_5mm"
MR_SAG = VOLUMES / "mr_siemens_xa30_epi_sagittal_63sl"
MR_4D = VOLUMES / "mr_ge_mr750_epi_fmri_4d"
MR_ENHANCED = DATA / "multiframe" / "mr_siemens_xa30_enhanced_epi_sag_63frames.dcm"
SR = DATA / "modalities" / "sr_comprehensive_dcmtk_nested.dcm"


def files(folder: Path) -> list[Path]:
    """Every file of a series folder, in name order (never the slice order)."""
    return sorted(p for p in folder.iterdir() if p.is_file())


def datasets(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in files(folder)]


def synthetic(
    voxels: np.ndarray[Any, Any],
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    orientation: str = "axial",
    origin: tuple[float, float, float] = (-20.0, -20.0, -20.0),
) -> Volume:
    """A Volume made in memory (no DICOM), with a header good enough for the writers."""
    affine = np.eye(4)
    if orientation == "axial":  # IOP 1\0\0\0\1\0, slices along +z
        axes = [(0, 0, 1), (0, 1, 0), (1, 0, 0)]
    else:  # sagittal IOP 0\1\0\0\0\-1, slices along -x: a mirrored (det < 0) affine
        axes = [(-1, 0, 0), (0, 0, -1), (0, 1, 0)]
    for column, (axis, step) in enumerate(zip(axes, spacing, strict=True)):
        affine[:3, column] = np.asarray(axis, dtype=float) * step
    affine[:3, 3] = origin
    header = Dataset()
    header.Modality = "CT"
    header.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    header.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    header.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3"
    header.PatientID = "PHANTOM"
    sources = tuple(
        SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.826.0.1.3680043.8.498.10.{k}", None)
        for k in range(voxels.shape[0])
    )
    return Volume(np.ascontiguousarray(voxels, dtype=np.float32), affine, header, sources)


def sphere(
    shape: tuple[int, int, int] = (40, 40, 40),
    centre: tuple[float, float, float] = (20.0, 20.0, 20.0),
    radius: float = 12.0,
    inside: float = 1000.0,
) -> np.ndarray[Any, Any]:
    """A ball of ``inside`` HU in air (-1000), centre and radius in voxel units."""
    k, r, c = np.indices(shape, dtype=np.float32)
    distance = np.sqrt((k - centre[0]) ** 2 + (r - centre[1]) ** 2 + (c - centre[2]) ** 2)
    return np.where(distance <= radius, inside, -1000.0).astype(np.float32)
