"""MPR and isotropic resampling: against direct map_coordinates and exact cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from tests.processing.helpers import CT, MR_SAG, files, synthetic
from workers.processing import assemble_volume, reformat, reformat_plane, resample_isotropic
from workers.processing.geometry import Plane, plane_through


@pytest.fixture(scope="module")
def ct():  # type: ignore[no-untyped-def]
    return assemble_volume(files(CT))


def direct(volume, plane: Plane) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The plane sampled the long way: every pixel's patient point through the inverse affine."""
    r, c = np.mgrid[0 : plane.rows, 0 : plane.columns]
    points = (
        np.asarray(plane.origin)
        + r[..., None] * plane.pixel_spacing[0] * np.asarray(plane.column_direction)
        + c[..., None] * plane.pixel_spacing[1] * np.asarray(plane.row_direction)
    )
    inverse = np.linalg.inv(volume.affine)
    index = points @ inverse[:3, :3].T + inverse[:3, 3]
    return scipy.ndimage.map_coordinates(
        volume.voxels, np.moveaxis(index, -1, 0), order=1, cval=float(volume.voxels.min())
    )


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_mpr_slice_equals_direct_resampling(ct, orientation) -> None:  # type: ignore[no-untyped-def]
    stack = reformat(ct, orientation, slice_spacing=25.0)
    middle = len(stack.planes) // 2
    np.testing.assert_allclose(stack.images[middle], direct(ct, stack.planes[middle]), atol=0.05)


def test_oblique_mpr_equals_direct_resampling(ct) -> None:  # type: ignore[no-untyped-def]
    plane = plane_through(ct, (1.0, 0.3, 0.2), (0.0, 0.5, -1.0), spacing=1.0)
    np.testing.assert_allclose(reformat_plane(ct, plane), direct(ct, plane), atol=0.05)
    assert abs(np.dot(plane.row_direction, plane.column_direction)) < 1e-9


def test_axial_mpr_of_an_axial_series_gives_back_its_slices(ct) -> None:  # type: ignore[no-untyped-def]
    stack = reformat(ct, "axial", slice_spacing=5.0)
    assert stack.images.shape == ct.voxels.shape
    np.testing.assert_allclose(stack.images, ct.voxels, atol=1e-2)
    for k, plane in enumerate(stack.planes):
        np.testing.assert_allclose(plane.origin, ct.positions()[k], atol=1e-6)


def test_slabs_average_and_mip(ct) -> None:  # type: ignore[no-untyped-def]
    plane = reformat(ct, "coronal", slice_spacing=40.0).planes[2]
    thin = reformat_plane(ct, plane)
    mip = reformat_plane(ct, plane, slab_thickness=10.0, mode="mip")
    minip = reformat_plane(ct, plane, slab_thickness=10.0, mode="minip")
    average = reformat_plane(ct, plane, slab_thickness=10.0)
    assert np.all(mip >= thin - 1e-3) and np.all(minip <= thin + 1e-3)
    assert np.all(minip - 1e-3 <= average) and np.all(average <= mip + 1e-3)
    count = int(np.ceil(10.0 / min(ct.spacing))) + 1
    offsets = np.linspace(-5.0, 5.0, count + 1 - count % 2)
    expected = np.mean([direct(ct, plane.shifted(o)) for o in offsets], axis=0)
    np.testing.assert_allclose(average, expected, atol=0.05)


def test_sagittal_mr_stack_covers_the_volume() -> None:
    mr = assemble_volume(files(MR_SAG))
    stack = reformat(mr, "axial")
    depth = np.ptp(mr.corners()[:, 2])
    assert len(stack.planes) == int(np.floor(depth / min(mr.spacing))) + 1
    steps = np.diff([p.origin[2] for p in stack.planes])
    np.testing.assert_allclose(steps, min(mr.spacing))


def test_isotropic_resample_is_exact_on_a_linear_field() -> None:
    k, r, c = np.indices((10, 12, 14), dtype=np.float32)
    volume = synthetic(3 * k + 2 * r - c, spacing=(3.0, 1.5, 1.0))
    iso = resample_isotropic(volume, 1.0)
    assert iso.shape == (28, 17, 14)
    assert iso.spacing == pytest.approx((1.0, 1.0, 1.0))
    kk, rr, cc = np.indices(iso.shape, dtype=np.float64)
    expected = 3 * kk / 3.0 + 2 * rr / 1.5 - cc
    np.testing.assert_allclose(iso.voxels, expected, atol=1e-3)
    np.testing.assert_allclose(iso.affine[:3, 3], volume.affine[:3, 3])
