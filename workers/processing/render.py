"""Volume rendering of one view: ray casting, transfer-function presets, front-to-back.

Each sample's value goes through the preset's piecewise-linear colour and opacity maps;
opacity is given per millimetre and corrected for the step length; compositing is
front to back (C += (1 - A) a c, A += (1 - A) a), stopped when every ray is opaque.
The maps are tabulated once (4096 bins over the preset's range, about 1 HU for CT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.processing.backend import CPU, Backend
from workers.processing.geometry import Plane
from workers.processing.monitor import SILENT, Monitor
from workers.processing.raycast import march, view_towards
from workers.processing.volume import Volume

LUT_SIZE = 4096


@dataclass(frozen=True)
class TransferFunction:
    """Control points: value (HU for CT), colour (r, g, b in 0..1), opacity per mm."""

    name: str
    points: tuple[tuple[float, float, float, float, float], ...]


PRESETS: dict[str, TransferFunction] = {
    "bone": TransferFunction(
        "bone",
        (
            (-1024.0, 0.0, 0.0, 0.0, 0.0),
            (150.0, 0.55, 0.25, 0.15, 0.0),
            (300.0, 0.90, 0.82, 0.66, 0.15),
            (700.0, 1.00, 0.95, 0.85, 0.60),
            (3000.0, 1.00, 1.00, 1.00, 0.90),
        ),
    ),
    "soft tissue": TransferFunction(
        "soft tissue",
        (
            (-1024.0, 0.0, 0.0, 0.0, 0.0),
            (-500.0, 0.0, 0.0, 0.0, 0.0),
            (-100.0, 0.70, 0.45, 0.35, 0.0),
            (40.0, 0.85, 0.55, 0.45, 0.05),
            (150.0, 0.95, 0.80, 0.70, 0.20),
            (400.0, 1.00, 0.95, 0.90, 0.50),
            (3000.0, 1.00, 1.00, 1.00, 0.70),
        ),
    ),
}


@dataclass
class Rendering:
    """An RGB image (rows, columns, 3) uint8 and the view it was rendered from."""

    image: np.ndarray[Any, np.dtype[np.uint8]]
    plane: Plane
    direction: tuple[float, float, float]
    description: str


def render(
    volume: Volume,
    preset: str | TransferFunction = "bone",
    direction: Any = (0.0, 1.0, 0.0),
    up: Any = (0.0, 0.0, 1.0),
    pixel_spacing: float | None = None,
    step: float | None = None,
    backend: Backend = CPU,
    monitor: Monitor = SILENT,
    max_size: int = 512,
) -> Rendering:
    """Ray-cast ``volume`` seen along ``direction`` (default: from the front) with ``preset``."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"transfer function {preset!r}, expected one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    xp = backend.xp
    view = view_towards(volume, direction, up, pixel_spacing, step, max_size, "box")
    low, scale, table = _lookup_table(preset, view.step)
    lut = xp.asarray(table)
    shape = (view.plane.rows, view.plane.columns)
    state = (xp.zeros((*shape, 3), dtype=xp.float32), xp.zeros(shape, dtype=xp.float32))

    def composite(acc: Any, samples: Any) -> Any:
        colour, alpha = acc
        index = xp.clip((samples - low) * scale + 0.5, 0, LUT_SIZE - 1).astype(xp.int32)
        rgba = lut[index]
        weight = (1 - alpha) * rgba[..., 3]
        colour += weight[..., None] * rgba[..., :3]
        return colour, alpha + weight

    def opaque(acc: Any) -> bool:
        return bool(xp.all(acc[1] > 0.99))

    data = backend.asarray(volume.voxels)
    colour, _ = march(data, volume, view, backend, composite, state, monitor, opaque)
    rgb = backend.to_host(xp.clip(colour * 255 + 0.5, 0, 255)).astype(np.uint8)
    monitor.report(1.0, "volume rendering")
    return Rendering(rgb, view.plane, view.direction, f"VR {preset.name}")


def _lookup_table(
    preset: TransferFunction, step: float
) -> tuple[float, float, np.ndarray[Any, np.dtype[np.float32]]]:
    """(lowest value, bins per unit, LUT_SIZE x RGBA) with opacity for a ``step`` mm sample."""
    points = np.asarray(preset.points, dtype=np.float64)
    values = np.linspace(points[0, 0], points[-1, 0], LUT_SIZE)
    table = np.stack([np.interp(values, points[:, 0], points[:, i]) for i in range(1, 5)], -1)
    table[:, 3] = 1 - (1 - np.clip(table[:, 3], 0, 0.999)) ** step
    scale = (LUT_SIZE - 1) / (points[-1, 0] - points[0, 0])
    return float(points[0, 0]), float(scale), table.astype(np.float32)
