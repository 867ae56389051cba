"""Planes in patient space and their sampling from a volume (the MPR/projection kernel).

A :class:`Plane` is an output image's geometry, exactly what its Image Plane module will
say (PS3.3 C.7.6.2): ``origin`` is ImagePositionPatient (centre of the first pixel),
``row_direction``/``column_direction`` the two halves of ImageOrientationPatient,
``pixel_spacing`` is PixelSpacing (between rows, between columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.processing.backend import Backend
from workers.processing.volume import Volume

Vector = tuple[float, float, float]


def unit(vector: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """``vector`` scaled to length 1; ValueError for a null vector."""
    array = np.asarray(vector, dtype=np.float64)
    length = float(np.linalg.norm(array))
    if length < 1e-9:
        raise ValueError(f"direction {list(array)} has no length")
    return array / length


@dataclass(frozen=True)
class Plane:
    """Geometry of one output image."""

    origin: Vector
    row_direction: Vector
    column_direction: Vector
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int

    @property
    def normal(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def orientation(self) -> tuple[float, ...]:
        """ImageOrientationPatient (row cosines then column cosines)."""
        return (*self.row_direction, *self.column_direction)

    def shifted(self, millimetres: float) -> Plane:
        """The same plane moved ``millimetres`` along its normal."""
        origin = np.asarray(self.origin) + millimetres * self.normal
        return Plane(
            _vec(origin),
            self.row_direction,
            self.column_direction,
            self.pixel_spacing,
            self.rows,
            self.columns,
        )


def _vec(array: Any) -> Vector:
    return (float(array[0]), float(array[1]), float(array[2]))


def plane_through(
    volume: Volume,
    row_direction: Any,
    column_direction: Any,
    centre: Any | None = None,
    spacing: float | None = None,
) -> Plane:
    """A plane of the given orientation through ``centre`` covering the volume's extent.

    ``column_direction`` is orthogonalised against ``row_direction`` (oblique planes need
    not be given exactly orthogonal).
    """
    u = unit(row_direction)
    v = unit(np.asarray(column_direction, dtype=np.float64) - np.dot(column_direction, u) * u)
    corners = volume.corners()
    middle = corners.mean(axis=0) if centre is None else np.asarray(centre, dtype=np.float64)
    step = spacing if spacing is not None else min(volume.spacing[1:])
    along_u = (corners - middle) @ u
    along_v = (corners - middle) @ v
    columns = math.floor((along_u.max() - along_u.min()) / step) + 1
    rows = math.floor((along_v.max() - along_v.min()) / step) + 1
    origin = middle + along_u.min() * u + along_v.min() * v
    return Plane(_vec(origin), _vec(u), _vec(v), (step, step), rows, columns)


def plane_coordinates(volume: Volume, plane: Plane, backend: Backend) -> Any:
    """Fractional voxel indices (3, rows, columns) of every pixel centre of ``plane``."""
    xp = backend.xp
    inverse = np.linalg.inv(volume.affine)
    origin = inverse[:3, :3] @ np.asarray(plane.origin) + inverse[:3, 3]
    du = inverse[:3, :3] @ (np.asarray(plane.row_direction) * plane.pixel_spacing[1])
    dv = inverse[:3, :3] @ (np.asarray(plane.column_direction) * plane.pixel_spacing[0])
    rr = xp.arange(plane.rows, dtype=xp.float32)[None, :, None]
    cc = xp.arange(plane.columns, dtype=xp.float32)[None, None, :]
    o = xp.asarray(origin, dtype=xp.float32)[:, None, None]
    u = xp.asarray(du, dtype=xp.float32)[:, None, None]
    v = xp.asarray(dv, dtype=xp.float32)[:, None, None]
    return o + u * cc + v * rr


def sample_plane(
    voxels: Any, volume: Volume, plane: Plane, backend: Backend, background: float
) -> Any:
    """``voxels`` (on the backend's device) interpolated (trilinear) on ``plane``."""
    coords = plane_coordinates(volume, plane, backend)
    return backend.map_coordinates(voxels, coords, cval=background)
