"""Orthographic ray marching through a volume, front to back, one depth plane at a time.

The rotating MIP and the volume renderer share it: a :class:`View` is an image plane in
front of the volume (perpendicular to the viewing direction) and a number of depth steps;
each step samples one plane (trilinear) and hands it to an accumulator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from workers.processing.backend import Backend
from workers.processing.geometry import Plane, sample_plane, unit
from workers.processing.monitor import SILENT, Monitor
from workers.processing.volume import Volume


@dataclass(frozen=True)
class View:
    """An orthographic camera: the image plane nearest the eye, depth steps along ``direction``."""

    plane: Plane
    direction: tuple[float, float, float]
    step: float
    depth_steps: int


def view_towards(
    volume: Volume,
    direction: Any,
    up: Any = (0.0, 0.0, 1.0),
    pixel_spacing: float | None = None,
    step: float | None = None,
    max_size: int = 512,
    fit: Literal["sphere", "box"] = "sphere",
) -> View:
    """A view looking along ``direction`` (LPS), ``up`` towards the image top, whole volume in view.

    ``fit="sphere"``: the image covers the volume's bounding sphere, so every angle of a
    rotation has the same image size; ``fit="box"``: just the volume's projected corners
    (fewer rays for a single view). Default pixel spacing: the finest in-plane voxel
    size, coarsened so the image is at most ``max_size`` pixels wide; default depth step:
    the pixel spacing.
    """
    d = unit(direction)
    up_vector = np.asarray(up, dtype=np.float64)
    v = unit(-(up_vector - np.dot(up_vector, d) * d))  # column direction: image rows go down
    u = np.cross(v, d)  # row direction, so that u x v = d points into the volume
    corners = volume.corners()
    centre = corners.mean(axis=0)
    radius = float(np.max(np.linalg.norm(corners - centre, axis=1)))
    if fit == "sphere":
        low_u = low_v = -radius
        high_u = high_v = radius
    else:
        along_u, along_v = (corners - centre) @ u, (corners - centre) @ v
        low_u, high_u = float(along_u.min()), float(along_u.max())
        low_v, high_v = float(along_v.min()), float(along_v.max())
    spacing = pixel_spacing
    if spacing is None:
        widest = max(high_u - low_u, high_v - low_v)
        spacing = max(min(volume.spacing[1:]), widest / (max_size - 1))
    depth_step = step if step is not None else spacing
    # march only where the volume is: from its nearest to its farthest corner
    depth = (corners - centre) @ d
    origin = centre + low_u * u + low_v * v + float(depth.min()) * d
    steps = math.floor(float(depth.max() - depth.min()) / depth_step) + 1
    plane = Plane(
        (float(origin[0]), float(origin[1]), float(origin[2])),
        (float(u[0]), float(u[1]), float(u[2])),
        (float(v[0]), float(v[1]), float(v[2])),
        (spacing, spacing),
        math.floor((high_v - low_v) / spacing) + 1,
        math.floor((high_u - low_u) / spacing) + 1,
    )
    return View(plane, (float(d[0]), float(d[1]), float(d[2])), depth_step, steps)


Accumulate = Callable[[Any, Any], Any]


def march(
    voxels: Any,
    volume: Volume,
    view: View,
    backend: Backend,
    accumulate: Accumulate,
    state: Any,
    monitor: Monitor = SILENT,
    done: Callable[[Any], bool] | None = None,
) -> Any:
    """Fold ``accumulate(state, samples)`` over the depth planes, nearest first."""
    background = float(volume.voxels.min())
    for index in range(view.depth_steps):
        plane = view.plane.shifted(index * view.step) if index else view.plane
        samples = sample_plane(voxels, volume, plane, backend, background)
        state = accumulate(state, samples)
        if index % 16 == 0:
            monitor.report(index / view.depth_steps, "ray casting")
            if done is not None and done(state):
                break
    return state
