"""Volume assembly: a series' frames → float32 voxels + affine (voxel index → patient LPS mm).

Conventions (used by every other module of the pipeline):

- ``Volume.voxels`` has shape ``(slices, rows, columns)``, real values (HU for CT), float32;
- ``Volume.affine`` maps the index vector ``(k, r, c, 1)`` (slice, row, column, in array
  order) to patient coordinates in mm (LPS, PS3.3 C.7.6.2.1.1): column 0 is the slice step
  (the normal, cross product of the IOP row and column cosines, times the spacing),
  column 1 is the column cosine times the row spacing (PixelSpacing[0]), column 2 the row
  cosine times the column spacing (PixelSpacing[1]), column 3 the first slice's
  ImagePositionPatient.

Slices are sorted by their position along the normal, never by file name or instance
number. Uneven spacing and gantry tilt are resampled onto a regular orthogonal grid; a
series whose slices are not parallel, or do not lie on one line, is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.ndimage  # type: ignore[import-untyped]
from pydicom.dataset import Dataset

from workers.processing.errors import ProcessingError
from workers.processing.frames import FloatArray, Frame, Source, read_frames
from workers.processing.monitor import SILENT, Monitor

MIN_SLICES = 3
ORIENTATION_TOLERANCE = 1e-3  # max difference of direction cosines between slices
SPACING_TOLERANCE = 0.01  # max relative deviation of a slice gap from the median gap
POSITION_TOLERANCE_MM = 0.05  # in-plane offset above this is a tilt; same-position cluster
LINE_TOLERANCE_MM = 0.1  # slice origins further than this from one line: refused


@dataclass(frozen=True)
class SourceFrame:
    """Where a slice came from (SourceImageSequence, PS3.3 C.7.6.1.1.3)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None


@dataclass
class Volume:
    """A regular 3D grid of real values in patient space, with its provenance."""

    voxels: FloatArray
    affine: np.ndarray[Any, np.dtype[np.float64]]
    header: Dataset
    sources: tuple[SourceFrame, ...]
    slice_thickness: float | None = None
    temporal_position: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        k, r, c = self.voxels.shape
        return (int(k), int(r), int(c))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (slice, row, column)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    def positions(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """ImagePositionPatient of every slice, shape (slices, 3)."""
        k = np.arange(self.shape[0], dtype=np.float64)
        return self.affine[:3, 3] + np.outer(k, self.affine[:3, 0])

    def corners(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The 8 corner voxel centres in patient mm, shape (8, 3)."""
        k, r, c = (n - 1 for n in self.shape)
        grid = np.array([[a, b, d, 1.0] for a in (0, k) for b in (0, r) for d in (0, c)])
        points: np.ndarray[Any, np.dtype[np.float64]] = (self.affine @ grid.T).T[:, :3]
        return points

    def to_index(self, points: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Patient mm (..., 3) → fractional voxel index (..., 3) in (k, r, c) order."""
        inverse = np.linalg.inv(self.affine)
        index: np.ndarray[Any, Any] = points @ inverse[:3, :3].T + inverse[:3, 3]
        return index


def assemble_volume(sources: Iterable[Source], monitor: Monitor = SILENT) -> Volume:
    """The single 3D volume of a series; refuses a 4D series (use assemble_volumes)."""
    volumes = assemble_volumes(sources, monitor)
    if len(volumes) != 1:
        raise ProcessingError(
            f"series holds {len(volumes)} time points at the same positions; "
            "expected one volume (use assemble_volumes for 4D series)"
        )
    return volumes[0]


def assemble_volumes(sources: Iterable[Source], monitor: Monitor = SILENT) -> list[Volume]:
    """Every time point of a series as a volume (one for a 3D series), in time order.

    ``sources`` are Part 10 file paths or datasets of one series, classic or enhanced
    multi-frame. Pixels are decoded one frame at a time into the result.
    """
    monitor.report(0.0, "reading headers")
    frames = read_frames(sources)
    normal = _check_frames(frames)
    time_points = _split_time_points(frames, normal)
    volumes = []
    for index, group in enumerate(time_points):
        sub = monitor.sub(index / len(time_points), (index + 1) / len(time_points))
        volume = _stack(group, normal, sub)
        volume.temporal_position = index
        volumes.append(volume)
    monitor.report(1.0, "volume assembled")
    return volumes


def _check_frames(frames: Sequence[Frame]) -> np.ndarray[Any, Any]:
    """Common geometry checks; returns the unit slice normal."""
    if not frames:
        raise ProcessingError("empty series: expected at least 3 image slices")
    first = frames[0]
    iop = np.array(first.orientation)
    series = {str(f.header.get("SeriesInstanceUID", "")) for f in frames}
    if len(series) > 1:
        raise ProcessingError(f"frames of {len(series)} series given; expected one series")
    for frame in frames[1:]:
        if np.max(np.abs(np.array(frame.orientation) - iop)) > ORIENTATION_TOLERANCE:
            raise ProcessingError(
                f"mixed orientations: {frame.where} has ImageOrientationPatient "
                f"{list(frame.orientation)}, {first.where} has {list(first.orientation)}"
            )
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise ProcessingError(
                f"{frame.where} is {frame.rows}x{frame.columns}, "
                f"expected {first.rows}x{first.columns} like {first.where}"
            )
        if np.max(np.abs(np.subtract(frame.pixel_spacing, first.pixel_spacing))) > 1e-4:
            raise ProcessingError(
                f"{frame.where} has PixelSpacing {list(frame.pixel_spacing)}, "
                f"expected {list(first.pixel_spacing)}"
            )
    normal = np.cross(iop[:3], iop[3:])
    length = float(np.linalg.norm(normal))
    if length < 0.99:
        raise ProcessingError(
            f"{first.where}: ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors"
        )
    return np.asarray(normal / length)


def _split_time_points(frames: Sequence[Frame], normal: np.ndarray[Any, Any]) -> list[list[Frame]]:
    """Group frames at the same position; each time point gets one frame per position.

    Within a position, frames are ordered by Temporal Position Identifier/Index when
    present, else by Instance Number (the GE fMRI case: same IPP repeated, no identifier).
    """
    distance = np.array([np.dot(f.position, normal) for f in frames])
    order = np.argsort(distance, kind="stable")
    clusters: list[list[Frame]] = []
    last = -np.inf
    for index in order:
        if distance[index] - last > POSITION_TOLERANCE_MM:
            clusters.append([])
        clusters[-1].append(frames[index])
        last = distance[index]
    counts = {len(c) for c in clusters}
    if len(counts) > 1:
        raise ProcessingError(
            f"positions repeated unevenly ({sorted(counts)} frames per position over "
            f"{len(clusters)} positions); expected the same number of time points everywhere"
        )
    repeats = counts.pop()
    if repeats == 1:
        return [[c[0] for c in clusters]]
    for cluster in clusters:
        cluster.sort(key=lambda f: (f.temporal_position or 0, f.instance_number))
    return [[c[t] for c in clusters] for t in range(repeats)]


def _stack(frames: list[Frame], normal: np.ndarray[Any, Any], monitor: Monitor) -> Volume:
    if len(frames) < MIN_SLICES:
        raise ProcessingError(
            f"{len(frames)} slice position(s) found; expected at least {MIN_SLICES} to "
            "build a volume"
        )
    first = frames[0]
    positions = np.array([f.position for f in frames], dtype=np.float64)
    distance = (positions - positions[0]) @ normal
    gaps = np.diff(distance)
    step = float(np.median(gaps))
    offsets = (positions - positions[0]) - np.outer(distance, normal)
    tilt = np.linalg.lstsq(distance[:, None], offsets, rcond=None)[0][0]
    residual = float(np.max(np.linalg.norm(offsets - np.outer(distance, tilt), axis=1)))
    if residual > LINE_TOLERANCE_MM:
        raise ProcessingError(
            f"slice origins do not lie on one line (off by up to {residual:.2f} mm); "
            "expected one stack of parallel slices"
        )
    uneven = float(np.max(np.abs(gaps - step))) > SPACING_TOLERANCE * step
    tilted = float(np.linalg.norm(tilt) * distance[-1]) > POSITION_TOLERANCE_MM
    iop = np.array(first.orientation)
    affine = np.eye(4)
    affine[:3, 0] = normal * step
    affine[:3, 1] = iop[3:] * first.pixel_spacing[0]
    affine[:3, 2] = iop[:3] * first.pixel_spacing[1]
    affine[:3, 3] = positions[0]
    voxels = np.empty((len(frames), first.rows, first.columns), dtype=np.float32)
    for index, frame in enumerate(frames):
        voxels[index] = frame.real_values()
        if index % 16 == 0:
            monitor.report(0.9 * index / len(frames), "decoding slices")
    notes: list[str] = []
    if uneven or tilted:
        voxels, notes = _regularise(voxels, affine, distance, tilt, step, uneven)
    sources = tuple(
        SourceFrame(f.sop_class_uid, f.sop_instance_uid, f.frame_number) for f in frames
    )
    return Volume(voxels, affine, first.header, sources, first.slice_thickness, notes=notes)


def _regularise(
    voxels: FloatArray,
    affine: np.ndarray[Any, Any],
    distance: np.ndarray[Any, Any],
    tilt: np.ndarray[Any, Any],
    step: float,
    uneven: bool,
) -> tuple[FloatArray, list[str]]:
    """Resample a tilted or unevenly spaced stack onto the orthogonal grid of ``affine``.

    Target slice t lies at distance t*step along the normal; its source is the fractional
    slice interpolated from the sorted distances, shifted in-plane by the tilt offset.
    """
    count = round(float(distance[-1]) / step) + 1
    target = np.arange(count) * step
    source_slice = np.interp(target, distance, np.arange(len(distance)))
    row_unit = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    col_unit = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    rows, cols = voxels.shape[1:]
    grid_r, grid_c = np.mgrid[0:rows, 0:cols].astype(np.float32)
    background = float(voxels.min())
    out = np.empty((count, rows, cols), dtype=np.float32)
    for t in range(count):
        shift = tilt * target[t]
        dr = float(shift @ row_unit) / float(np.linalg.norm(affine[:3, 1]))
        dc = float(shift @ col_unit) / float(np.linalg.norm(affine[:3, 2]))
        coords = np.stack(
            [
                np.full_like(grid_r, source_slice[t]),
                grid_r - np.float32(dr),
                grid_c - np.float32(dc),
            ]
        )
        out[t] = scipy.ndimage.map_coordinates(
            voxels, coords, order=1, mode="constant", cval=background, prefilter=False
        )
    notes = []
    if uneven:
        notes.append(f"uneven slice spacing resampled to {step:.3f} mm")
    if float(np.linalg.norm(tilt)) > 0:
        angle = float(np.degrees(np.arctan(np.linalg.norm(tilt))))
        notes.append(f"gantry tilt of {angle:.1f} degrees resampled to an orthogonal grid")
    return out, notes
