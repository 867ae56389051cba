"""Projections: MIP, MinIP and average along a volume axis, and a rotating MIP cine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from workers.processing.backend import CPU, Backend
from workers.processing.frames import FloatArray
from workers.processing.geometry import Plane, unit
from workers.processing.monitor import SILENT, Monitor
from workers.processing.raycast import march, view_towards
from workers.processing.volume import Volume

ProjectionMode = Literal["mip", "minip", "average"]
AXIS_NAMES = ("slice", "row", "column")


@dataclass
class Projection:
    """A projected image, its plane (at the middle of the projected slab) and what was done."""

    image: FloatArray
    plane: Plane
    slab_thickness: float
    mode: ProjectionMode
    description: str


def project(
    volume: Volume, axis: int, mode: ProjectionMode = "mip", backend: Backend = CPU
) -> Projection:
    """``mode`` of the voxels along array ``axis`` (0 slices, 1 rows, 2 columns).

    The image keeps the two other axes; when the image's column direction points up
    (superior), rows are flipped so the head is at the top.
    """
    xp = backend.xp
    data = backend.asarray(volume.voxels)
    if mode == "mip":
        result = xp.max(data, axis=axis)
    elif mode == "minip":
        result = xp.min(data, axis=axis)
    elif mode == "average":
        result = xp.mean(data, axis=axis, dtype=xp.float32)
    else:
        raise ValueError(f"projection mode {mode!r}, expected mip, minip or average")
    image = backend.to_host(result).astype(np.float32, copy=False)
    kept = [a for a in (0, 1, 2) if a != axis]
    row_axis, col_axis = kept  # image rows follow kept[0], image columns kept[1]
    index = np.zeros(4)
    index[3] = 1.0
    index[axis] = (volume.shape[axis] - 1) / 2
    column_vector = volume.affine[:3, row_axis]
    if column_vector[2] > 1e-6:  # rows would run towards the head: flip them
        image = image[::-1].copy()
        index[row_axis] = volume.shape[row_axis] - 1
        column_vector = -column_vector
    origin = (volume.affine @ index)[:3]
    u, v = unit(volume.affine[:3, col_axis]), unit(column_vector)
    spacing = volume.spacing
    plane = Plane(
        (float(origin[0]), float(origin[1]), float(origin[2])),
        (float(u[0]), float(u[1]), float(u[2])),
        (float(v[0]), float(v[1]), float(v[2])),
        (spacing[row_axis], spacing[col_axis]),
        int(image.shape[0]),
        int(image.shape[1]),
    )
    thickness = volume.shape[axis] * spacing[axis]
    description = f"{mode.upper()} along {AXIS_NAMES[axis]} axis, {thickness:g} mm"
    return Projection(image, plane, thickness, mode, description)


def rotating_mip(
    volume: Volume,
    angles: int = 12,
    pixel_spacing: float | None = None,
    step: float | None = None,
    backend: Backend = CPU,
    monitor: Monitor = SILENT,
    max_size: int = 256,
) -> list[Projection]:
    """MIPs seen from ``angles`` directions evenly spaced around the patient's long axis.

    Angle 0 looks from the front (anterior → posterior, +y), then turns towards the
    patient's left; the image top is superior.
    """
    xp = backend.xp
    data = backend.asarray(volume.voxels)
    results = []
    for index in range(angles):
        theta = 2 * np.pi * index / angles
        direction = (np.sin(theta), np.cos(theta), 0.0)
        view = view_towards(volume, direction, (0.0, 0.0, 1.0), pixel_spacing, step, max_size)
        floor = xp.full((view.plane.rows, view.plane.columns), -np.inf, dtype=xp.float32)
        sub = monitor.sub(index / angles, (index + 1) / angles)
        image = march(data, volume, view, backend, xp.maximum, floor, sub)
        degrees = 360.0 * index / angles
        results.append(
            Projection(
                backend.to_host(image).astype(np.float32, copy=False),
                view.plane,
                0.0,
                "mip",
                f"rotating MIP {degrees:g} deg ({index + 1}/{angles})",
            )
        )
    monitor.report(1.0, "rotating MIP")
    return results
