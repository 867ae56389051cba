"""Projections: MIP/MinIP/average against numpy, and the rotating MIP's geometry."""

from __future__ import annotations

import numpy as np
import pytest

from tests.processing.helpers import CT, files, synthetic
from workers.processing import assemble_volume, project, rotating_mip


@pytest.fixture(scope="module")
def ct():  # type: ignore[no-untyped-def]
    return assemble_volume(files(CT))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mip_equals_numpy_max_along_the_axis(ct, axis) -> None:  # type: ignore[no-untyped-def]
    result = project(ct, axis, "mip")
    expected = np.max(ct.voxels, axis=axis)
    if axis != 0:  # rows run along the slices: flipped so the head is at the top
        expected = expected[::-1]
        assert result.plane.column_direction[2] < 0
    np.testing.assert_array_equal(result.image, expected)


def test_minip_and_average_equal_numpy(ct) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_array_equal(project(ct, 0, "minip").image, np.min(ct.voxels, axis=0))
    np.testing.assert_allclose(
        project(ct, 0, "average").image, np.mean(ct.voxels, axis=0), rtol=1e-5, atol=1e-3
    )


def test_projection_plane_is_the_middle_of_the_slab(ct) -> None:  # type: ignore[no-untyped-def]
    plane = project(ct, 0).plane
    middle = (ct.positions()[0] + ct.positions()[-1]) / 2
    np.testing.assert_allclose(plane.origin, middle, atol=1e-6)
    assert plane.pixel_spacing == pytest.approx(ct.spacing[1:])


def test_rotating_mip_finds_a_bright_point_where_the_geometry_says() -> None:
    voxels = np.full((30, 30, 30), -1000.0, dtype=np.float32)
    voxels[8:11, 18:21, 5:8] = 2000.0  # a small bright cube
    volume = synthetic(voxels)
    point = (volume.affine @ [9, 19, 6, 1])[:3]
    cine = rotating_mip(volume, 8, pixel_spacing=1.0, step=0.5)
    assert len(cine) == 8
    for projection in cine:
        plane = projection.plane
        offset = point - np.asarray(plane.origin)
        column = np.dot(offset, plane.row_direction) / plane.pixel_spacing[1]
        row = np.dot(offset, plane.column_direction) / plane.pixel_spacing[0]
        found = np.unravel_index(np.argmax(projection.image), projection.image.shape)
        assert projection.image.max() > 1900
        assert abs(found[0] - row) <= 2 and abs(found[1] - column) <= 2
    assert cine[0].plane.column_direction == pytest.approx((0.0, 0.0, -1.0))
