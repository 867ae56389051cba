"""Multiplanar reformats: axial, coronal, sagittal and oblique stacks, with slab thickness.

Every output pixel is trilinear interpolation (``map_coordinates``) of the volume at the
pixel's patient position, through the volume's affine; a slab combines sub-planes spaced
at most one voxel apart across its thickness (average, maximum or minimum).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from workers.processing.backend import CPU, Backend
from workers.processing.frames import FloatArray
from workers.processing.geometry import Plane, plane_through, sample_plane, unit
from workers.processing.monitor import SILENT, Monitor
from workers.processing.volume import Volume

SlabMode = Literal["average", "mip", "minip"]
Orientation = Literal["axial", "coronal", "sagittal"]

#: (row direction, column direction) in LPS, as ImageOrientationPatient of each view
ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass
class Reformat:
    """A stack of reformatted images and the plane of each."""

    images: FloatArray  # (count, rows, columns)
    planes: list[Plane]
    slice_spacing: float
    slab_thickness: float
    mode: SlabMode
    description: str


def reformat_plane(
    volume: Volume,
    plane: Plane,
    slab_thickness: float = 0.0,
    mode: SlabMode = "average",
    backend: Backend = CPU,
    voxels: Any | None = None,
) -> FloatArray:
    """One reformatted image on ``plane``; a slab of ``slab_thickness`` mm when > 0."""
    data = backend.asarray(volume.voxels) if voxels is None else voxels
    background = float(volume.voxels.min())
    offsets = _slab_offsets(volume, slab_thickness)
    result = None
    for offset in offsets:
        image = sample_plane(data, volume, plane.shifted(offset), backend, background)
        if result is None:
            result = image
        elif mode == "mip":
            result = backend.xp.maximum(result, image)
        elif mode == "minip":
            result = backend.xp.minimum(result, image)
        else:
            result = result + image
    if result is None:
        raise ValueError("slab without a plane")
    if mode == "average" and len(offsets) > 1:
        result = result / np.float32(len(offsets))
    return backend.to_host(result).astype(np.float32, copy=False)


def _slab_offsets(volume: Volume, thickness: float) -> list[float]:
    if thickness <= 0:
        return [0.0]
    count = max(3, math.ceil(thickness / min(volume.spacing)) + 1)
    count += 1 - count % 2  # odd: the centre plane is always one of them
    return [float(x) for x in np.linspace(-thickness / 2, thickness / 2, count)]


def reformat(
    volume: Volume,
    orientation: Orientation | tuple[Any, Any],
    slice_spacing: float | None = None,
    slab_thickness: float = 0.0,
    mode: SlabMode = "average",
    pixel_spacing: float | None = None,
    backend: Backend = CPU,
    monitor: Monitor = SILENT,
) -> Reformat:
    """A stack of planes of ``orientation`` covering the volume, ``slice_spacing`` apart.

    ``orientation`` is a named view or an oblique (row direction, column direction) pair
    in patient LPS. Defaults: pixel spacing = the finest in-plane voxel size, slice spacing
    = the finest voxel size, no slab.
    """
    stack = plan_stack(volume, orientation, slice_spacing, slab_thickness, mode, pixel_spacing)
    first = stack.planes[0]
    images = np.empty((len(stack.planes), first.rows, first.columns), dtype=np.float32)
    for index, image in enumerate(iter_reformat(volume, stack, backend, monitor)):
        images[index] = image
    stack.images = images
    return stack


def plan_stack(
    volume: Volume,
    orientation: Orientation | tuple[Any, Any],
    slice_spacing: float | None = None,
    slab_thickness: float = 0.0,
    mode: SlabMode = "average",
    pixel_spacing: float | None = None,
) -> Reformat:
    """The planes and description of a reformat, no pixels yet (``images`` is empty)."""
    if isinstance(orientation, str):
        row_dir, col_dir = ORIENTATIONS[orientation]
        name: str = orientation
    else:
        row_dir, col_dir = orientation
        name = "oblique"
    centre_plane = plane_through(volume, row_dir, col_dir, spacing=pixel_spacing)
    normal = unit(centre_plane.normal)
    depth = (volume.corners() - volume.corners().mean(axis=0)) @ normal
    step = slice_spacing if slice_spacing is not None else min(volume.spacing)
    count = math.floor((depth.max() - depth.min()) / step) + 1
    planes = [centre_plane.shifted(float(depth.min() + i * step)) for i in range(count)]
    slab = f", {slab_thickness:g} mm {mode} slab" if slab_thickness > 0 else ""
    description = f"MPR {name} {step:g} mm{slab}"
    empty = np.zeros((0, centre_plane.rows, centre_plane.columns), dtype=np.float32)
    return Reformat(empty, planes, step, slab_thickness, mode, description)


def iter_reformat(
    volume: Volume, stack: Reformat, backend: Backend = CPU, monitor: Monitor = SILENT
) -> Iterator[FloatArray]:
    """The images of ``stack``, one plane at a time (memory: one image, not the stack)."""
    data = backend.asarray(volume.voxels)
    count = len(stack.planes)
    for index, plane in enumerate(stack.planes):
        yield reformat_plane(volume, plane, stack.slab_thickness, stack.mode, backend, data)
        if index % 8 == 0:
            monitor.report(index / count, stack.description)
    monitor.report(1.0, stack.description)


def resample_isotropic(
    volume: Volume,
    spacing: float | None = None,
    backend: Backend = CPU,
    monitor: Monitor = SILENT,
) -> Volume:
    """The volume on a grid of cubic voxels (``spacing`` mm, default the finest), trilinear.

    Separable linear interpolation, one output slice at a time, so the extra memory is one
    slice beyond the result.
    """
    step = spacing if spacing is not None else min(volume.spacing)
    xp = backend.xp
    counts = [
        math.floor((n - 1) * s / step) + 1
        for n, s in zip(volume.shape, volume.spacing, strict=True)
    ]
    weights = []
    for axis in range(3):
        position = np.arange(counts[axis]) * step / volume.spacing[axis]
        low = np.clip(np.floor(position).astype(np.int64), 0, max(volume.shape[axis] - 2, 0))
        weights.append((xp.asarray(low), xp.asarray(position - low, dtype=xp.float32)))
    data = backend.asarray(volume.voxels)
    out = np.empty(counts, dtype=np.float32)
    low0, w0 = (backend.to_host(a) for a in weights[0])
    (low1, w1), (low2, w2) = weights[1], weights[2]
    # an axis already at the target spacing keeps its samples: no interpolation there
    keep_rows, keep_columns = (
        counts[a] == volume.shape[a] and abs(volume.spacing[a] - step) <= 1e-6 * step
        for a in (1, 2)
    )
    for index in range(counts[0]):
        k, w = int(low0[index]), np.float32(w0[index])
        plane = data[k] if w == 0 else data[k] * (1 - w) + data[k + 1] * w
        if not keep_rows:
            plane = (
                plane[low1] * (1 - w1[:, None])
                + plane[xp.minimum(low1 + 1, volume.shape[1] - 1)] * w1[:, None]
            )
        if not keep_columns:
            last = volume.shape[2] - 1
            plane = plane[:, low2] * (1 - w2) + plane[:, xp.minimum(low2 + 1, last)] * w2
        out[index] = backend.to_host(plane)
        if index % 32 == 0:
            monitor.report(index / counts[0], "isotropic resample")
    affine = volume.affine.copy()
    for axis in range(3):
        affine[:3, axis] *= step / volume.spacing[axis]
    notes = [*volume.notes, f"resampled to {step:g} mm isotropic voxels"]
    return Volume(out, affine, volume.header, volume.sources, step, volume.temporal_position, notes)
