"""Volume rendering: an RGB view, opaque objects in front, presets."""

from __future__ import annotations

import numpy as np
import pytest

from tests.processing.helpers import sphere, synthetic
from workers.processing import PRESETS, render


def test_bone_rendering_of_a_sphere() -> None:
    volume = synthetic(sphere(inside=1500.0))
    result = render(volume, "bone", pixel_spacing=1.0)
    image = result.image
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert tuple(image[0, 0]) == (0, 0, 0)  # air is transparent
    centre = np.asarray(image.shape[:2]) // 2
    assert image[centre[0], centre[1]].min() > 200  # opaque bone, near white
    lit = np.argwhere(image.max(axis=2) > 0)
    width = lit[:, 1].max() - lit[:, 1].min()
    assert width == pytest.approx(24, abs=3)  # the ball's diameter in pixels (1 mm)


def test_soft_tissue_preset_sees_through_air_and_stops_at_tissue() -> None:
    volume = synthetic(sphere(inside=60.0))
    image = render(volume, "soft tissue", pixel_spacing=1.0).image
    assert image.max() > 50
    assert tuple(image[0, 0]) == (0, 0, 0)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        render(synthetic(sphere()), "glass")
    assert {"bone", "soft tissue"} <= set(PRESETS)
