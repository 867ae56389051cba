"""Volume assembly on the shared real series: order, geometry, HU, 4D, enhanced, bad input."""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest

from tests.processing.helpers import CT, MR_4D, MR_ENHANCED, MR_SAG, SR, datasets, files
from workers.processing import ProcessingError, assemble_volume, assemble_volumes


@pytest.mark.parametrize("folder", [CT, MR_SAG], ids=["ct_axial", "mr_sagittal"])
def test_geometry_matches_pydicom_positions_for_every_slice(folder) -> None:  # type: ignore[no-untyped-def]
    volume = assemble_volume(files(folder))
    index = {s.sop_instance_uid: k for k, s in enumerate(volume.sources)}
    assert len(index) == volume.shape[0] == len(files(folder))
    for path in files(folder):
        ds = pydicom.dcmread(path)
        k = index[ds.SOPInstanceUID]
        expected = np.array([float(x) for x in ds.ImagePositionPatient])
        np.testing.assert_allclose(volume.affine @ [k, 0, 0, 1], [*expected, 1], atol=1e-3)
        np.testing.assert_allclose(volume.positions()[k], expected, atol=1e-3)
        hu = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0)
        )
        np.testing.assert_array_equal(volume.voxels[k], hu.astype(np.float32))
        # pixel (row 3, column 5) lies at IPP + 3 * column cosine * dy + 5 * row cosine * dx
        iop = np.array([float(x) for x in ds.ImageOrientationPatient])
        dy, dx = (float(x) for x in ds.PixelSpacing)
        pixel = expected + 3 * dy * iop[3:] + 5 * dx * iop[:3]
        np.testing.assert_allclose((volume.affine @ [k, 3, 5, 1])[:3], pixel, atol=1e-3)


def test_ct_in_hounsfield_float32_sorted_along_the_normal() -> None:
    paths = files(CT)
    random.Random(7).shuffle(paths)
    volume = assemble_volume(paths)
    assert volume.voxels.dtype == np.float32
    assert volume.shape == (28, 512, 512)
    assert volume.spacing == pytest.approx((5.0, 0.451171875, 0.451171875))
    assert volume.voxels.min() == -1024.0  # slope 1, intercept -1024
    assert np.all(np.diff(volume.positions()[:, 2]) > 0)


def test_datasets_in_any_order_give_the_same_volume_as_files() -> None:
    from_files = assemble_volume(files(MR_SAG))
    shuffled = datasets(MR_SAG)[::-1]
    from_datasets = assemble_volume(shuffled)
    np.testing.assert_array_equal(from_files.voxels, from_datasets.voxels)
    np.testing.assert_allclose(from_files.affine, from_datasets.affine)


def test_sagittal_slices_are_stacked_along_the_cross_product() -> None:
    volume = assemble_volume(files(MR_SAG))
    np.testing.assert_allclose(volume.affine[:3, 0] / 2.2, [-1, 0, 0], atol=1e-6)
    assert volume.shape == (63, 86, 86)


def test_ge_fmri_gives_ten_volumes_of_fifteen_slices() -> None:
    volumes = assemble_volumes(files(MR_4D))
    assert len(volumes) == 10
    assert all(v.shape == (15, 64, 64) for v in volumes)
    for volume in volumes[1:]:
        np.testing.assert_allclose(volume.affine, volumes[0].affine)
    numbers = {int(pydicom.dcmread(p).InstanceNumber): p for p in files(MR_4D)}
    first = {pydicom.dcmread(numbers[n]).SOPInstanceUID for n in range(1, 16)}
    assert {s.sop_instance_uid for s in volumes[0].sources} == first  # InstanceNumber 1-15
    assert [v.temporal_position for v in volumes] == list(range(10))
    with pytest.raises(ProcessingError, match="10 time points"):
        assemble_volume(files(MR_4D))


def test_enhanced_mr_equals_the_classic_series_for_frames_2_to_63() -> None:
    classic = assemble_volume(files(MR_SAG))
    enhanced = assemble_volume([MR_ENHANCED])
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-3)
    frames = [s.frame_number for s in enhanced.sources]
    assert sorted(frames) == list(range(1, 64))  # type: ignore[type-var]
    compared = 0
    for k, frame in enumerate(frames):
        if frame != 1:
            np.testing.assert_array_equal(enhanced.voxels[k], classic.voxels[k])
            compared += 1
    assert compared == 62


def test_uneven_spacing_is_resampled_to_a_regular_grid() -> None:
    paths = files(CT)
    full = assemble_volume(paths)
    missing = full.sources[10].sop_instance_uid
    kept = [
        p for p in paths if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID != missing
    ]
    volume = assemble_volume(kept)
    assert volume.shape == full.shape
    assert any("uneven" in note for note in volume.notes)
    np.testing.assert_allclose(volume.affine, full.affine, atol=1e-6)
    np.testing.assert_allclose(volume.voxels[9], full.voxels[9], atol=1e-3)
    expected = (full.voxels[9] + full.voxels[11]) / 2
    np.testing.assert_allclose(volume.voxels[10], expected, atol=1e-2)


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid() -> None:
    """Each slice's origin moves one pixel (0.45 mm) along +y per 5 mm slice: a 5.2° tilt."""
    source = sorted(datasets(CT), key=lambda d: float(d.ImagePositionPatient[2]))[:6]
    tilted = []
    for k, ds in enumerate(source):
        item = copy.deepcopy(ds)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        item.ImagePositionPatient = [x, y + k * float(ds.PixelSpacing[0]), z]
        tilted.append(item)
    straight = assemble_volume(source)
    volume = assemble_volume(tilted)
    assert any("tilt of 5.2 degrees" in note for note in volume.notes)
    np.testing.assert_allclose(volume.affine, straight.affine, atol=1e-6)
    for k in range(1, 6):  # out[k, r] = in[k, r - k]: the tilt shift removed
        np.testing.assert_allclose(volume.voxels[k, k:], straight.voxels[k, :-k], atol=1e-2)


def test_slices_off_a_line_are_refused() -> None:
    source = datasets(CT)[:6]
    ds = source[3]
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x + 7.0, y, z]
    with pytest.raises(ProcessingError, match="do not lie on one line"):
        assemble_volume(source)


def test_two_slices_are_refused() -> None:
    with pytest.raises(ProcessingError, match="expected at least 3"):
        assemble_volume(files(CT)[:2])


def test_mixed_orientations_are_refused() -> None:
    source = datasets(CT)[:5]
    source[2].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(ProcessingError, match="mixed orientations"):
        assemble_volume(source)


def test_a_non_image_series_is_refused() -> None:
    with pytest.raises(ProcessingError, match="not an image"):
        assemble_volume([SR])


def test_two_series_at_once_are_refused() -> None:
    with pytest.raises(ProcessingError, match="expected one series"):
        assemble_volume(files(CT)[:3] + files(MR_SAG)[:3])


def test_progress_reports_and_cancellation() -> None:
    from workers.processing import Monitor, ProcessingCancelled

    seen: list[tuple[float, str]] = []
    assemble_volume(files(CT), Monitor(lambda p, s: seen.append((p, s))))
    assert seen[-1][0] == 100.0
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)
    with pytest.raises(ProcessingCancelled):
        assemble_volume(files(CT), Monitor(cancelled=lambda: True))


def test_enhanced_ct_frames_are_read_through_functional_groups() -> None:
    from tests.conftest import DATA

    enhanced_ct = DATA / "multiframe" / "ct_enhanced_nema_2frames_supplemental_lut.dcm"
    with pytest.raises(ProcessingError, match="2 slice position"):
        assemble_volume([enhanced_ct])


def test_a_time_point_of_the_4d_series_goes_through_the_pipeline() -> None:
    from workers.processing import PipelineOptions, run_pipeline

    result = run_pipeline(files(MR_4D), PipelineOptions(steps=("mip",), time_point=3))
    (mip,) = result.datasets
    fourth = assemble_volumes(files(MR_4D))[3]
    assert {r.ReferencedSOPInstanceUID for r in mip.SourceImageSequence} == {
        s.sop_instance_uid for s in fourth.sources
    }
    with pytest.raises(ProcessingError, match="time point 10 asked, the series has 10"):
        run_pipeline(files(MR_4D), PipelineOptions(steps=("mip",), time_point=10))
