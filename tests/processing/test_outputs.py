"""Every output validates, round-trips through dcmwrite/dcmread and says where it came from."""

from __future__ import annotations

import os
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.processing.helpers import CT, MR_ENHANCED, MR_SAG, SR, files
from workers.processing import (
    PipelineOptions,
    ProcessingCancelled,
    ProcessingError,
    assemble_volume,
    reformat,
    reformat_datasets,
    run_pipeline,
)
from workers.processing.validation import problems, to_bytes

FAST = PipelineOptions(
    steps=("mpr", "mip", "rotating_mip", "surface", "render"),
    slice_spacing=30.0,
    slab_thickness=6.0,
    rotating_angles=3,
    image_size=256,
)


def source_uids(paths: list[Path]) -> tuple[Dataset, set[str]]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return headers[0], {str(h.SOPInstanceUID) for h in headers}


@pytest.fixture(scope="module")
def ct_result():  # type: ignore[no-untyped-def]
    return run_pipeline(files(CT), FAST)


def test_pipeline_writes_every_kind_of_output(ct_result) -> None:  # type: ignore[no-untyped-def]
    kinds = {
        (str(ds.SOPClassUID), ds.ImageType[2] if "ImageType" in ds else "-")
        for ds in ct_result.datasets
    }
    assert kinds == {
        ("1.2.840.10008.5.1.4.1.1.2", "REFORMATTED"),
        ("1.2.840.10008.5.1.4.1.1.2", "MIP"),
        ("1.2.840.10008.5.1.4.1.1.7", "VOLUME"),
        ("1.2.840.10008.5.1.4.1.1.104.3", "-"),
    }
    series = {ds.SeriesInstanceUID for ds in ct_result.datasets}
    assert len(series) == 3 + 1 + 1 + 1 + 1  # 3 MPR orientations, MIP, cine, mesh, VR
    assert set(ct_result.downloads) == {"surface.stl", "surface.obj"}


def test_every_output_validates_and_round_trips(ct_result) -> None:  # type: ignore[no-untyped-def]
    first, uids = source_uids(files(CT))
    for ds, data in zip(ct_result.datasets, ct_result.files, strict=True):
        assert problems(ds) == []
        back = pydicom.dcmread(BytesIO(data))
        assert problems(back) == []
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert to_bytes(back) == data  # a second write gives the same file
        assert back.StudyInstanceUID == first.StudyInstanceUID
        assert back.PatientID == first.PatientID
        assert back.FrameOfReferenceUID == first.FrameOfReferenceUID
        assert back.SeriesInstanceUID != first.SeriesInstanceUID
        assert back.SeriesDescription
        assert back.DerivationCodeSequence[0].CodingSchemeDesignator == "DCM"
        references = back.get("SourceImageSequence") or back.SourceInstanceSequence
        assert references and {r.ReferencedSOPInstanceUID for r in references} <= uids
        assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
        if "PixelData" in back:
            frames = int(back.get("NumberOfFrames", 1))
            shape = back.pixel_array.shape
            assert shape[:2] == (back.Rows, back.Columns) or frames > 1
            assert back.ImageType[:2] == ["DERIVED", "SECONDARY"]


def test_mpr_images_carry_their_plane_and_real_values() -> None:
    volume = assemble_volume(files(CT))
    stack = reformat(volume, "sagittal", slice_spacing=20.0, slab_thickness=4.0)
    for ds, image, plane in zip(
        reformat_datasets(volume, stack), stack.images, stack.planes, strict=True
    ):
        back = pydicom.dcmread(BytesIO(to_bytes(ds)))
        np.testing.assert_allclose(
            [float(x) for x in back.ImagePositionPatient], plane.origin, atol=1e-3
        )
        np.testing.assert_allclose(
            [float(x) for x in back.ImageOrientationPatient], plane.orientation, atol=1e-5
        )
        np.testing.assert_allclose(
            [float(x) for x in back.PixelSpacing], plane.pixel_spacing, atol=1e-5
        )
        assert float(back.SliceThickness) == 4.0
        hu = back.pixel_array * float(back.RescaleSlope) + float(back.RescaleIntercept)
        np.testing.assert_allclose(hu, image, atol=0.51)
        assert back.SeriesDescription == "MPR sagittal 20 mm, 4 mm average slab"


def test_mr_and_enhanced_mr_outputs_validate() -> None:
    for source in (files(MR_SAG), [MR_ENHANCED]):
        options = PipelineOptions(
            steps=("mpr", "mip", "surface"), slice_spacing=40.0, threshold=500.0
        )
        result = run_pipeline(source, options)
        mr = [ds for ds in result.datasets if ds.Modality == "MR"]
        assert mr and all(str(ds.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.4" for ds in mr)
        assert all(problems(pydicom.dcmread(BytesIO(b))) == [] for b in result.files)


def test_mesh_instance_holds_the_downloadable_stl(ct_result) -> None:  # type: ignore[no-untyped-def]
    (mesh,) = [ds for ds in ct_result.datasets if ds.Modality == "M3D"]
    length = int(mesh.EncapsulatedDocumentLength)
    assert mesh.EncapsulatedDocument[:length] == ct_result.downloads["surface.stl"]
    assert mesh.MIMETypeOfEncapsulatedDocument == "model/stl"
    assert mesh.MeasurementUnitsCodeSequence[0].CodeValue == "mm"


def test_rendering_is_rgb_secondary_capture(ct_result) -> None:  # type: ignore[no-untyped-def]
    (vr,) = [ds for ds in ct_result.datasets if ds.get("ImageType", [""] * 3)[2] == "VOLUME"]
    back = pydicom.dcmread(BytesIO(to_bytes(vr)))
    assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
    assert back.pixel_array.shape == (back.Rows, back.Columns, 3)
    assert back.SeriesDescription == "VR bone"


def test_same_input_twice_gives_the_same_instances(ct_result) -> None:  # type: ignore[no-untyped-def]
    again = run_pipeline(files(CT), FAST)
    assert [d.SOPInstanceUID for d in again.datasets] == [
        d.SOPInstanceUID for d in ct_result.datasets
    ]
    for a, b in zip(again.datasets, ct_result.datasets, strict=True):
        assert a.get("PixelData") == b.get("PixelData")


def test_progress_is_monotonic_and_cancel_stops_with_nothing() -> None:
    seen: list[float] = []
    options = PipelineOptions(steps=("mip",))
    run_pipeline(files(CT), options, progress=lambda p, s: seen.append(p))
    assert seen == sorted(seen) and seen[-1] == 100.0
    calls = iter(range(1000))
    with pytest.raises(ProcessingCancelled):
        run_pipeline(files(CT), FAST, cancelled=lambda: next(calls) > 20)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (lambda: files(CT)[:2], "expected at least 3"),
        (lambda: [SR], "not an image"),
    ],
    ids=["two_slices", "structured_report"],
)
def test_bad_input_fails_clearly_and_produces_nothing(source, message) -> None:  # type: ignore[no-untyped-def]
    produced = None
    with pytest.raises(ProcessingError, match=message):
        produced = run_pipeline(source(), FAST)
    assert produced is None


def test_mixed_orientations_fail_the_pipeline() -> None:
    source = [pydicom.dcmread(p) for p in files(CT)[:4]]
    source[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(ProcessingError, match="mixed orientations"):
        run_pipeline(source, FAST)


SPEC = os.environ.get("PACS_HUB_DICOM_SPEC_DIR", "")


@pytest.mark.skipif(
    not SPEC or shutil.which("validate_iods") is None,
    reason="dicom-validator needs the standard's DocBook files: set PACS_HUB_DICOM_SPEC_DIR",
)
def test_outputs_pass_dicom_validator(ct_result, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for index, data in enumerate(ct_result.files):
        (tmp_path / f"{index}.dcm").write_bytes(data)
    run = subprocess.run(
        ["validate_iods", "--standard-path", SPEC, "--edition", "local", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_iter_pipeline_streams_the_same_outputs_one_at_a_time() -> None:
    from workers.processing import iter_pipeline

    options = PipelineOptions(steps=("mpr",), orientations=("coronal",), slice_spacing=50.0)
    stream = iter_pipeline(files(CT), options)
    first = next(stream)
    assert problems(first.dataset) == [] and first.data[128:132] == b"DICM"
    rest = list(stream)
    whole = run_pipeline(files(CT), options)
    assert [o.dataset.SOPInstanceUID for o in [first, *rest]] == [
        d.SOPInstanceUID for d in whole.datasets
    ]


def test_oblique_slab_mpr_through_the_pipeline() -> None:
    oblique = ((1.0, 1.0, 0.0), (0.0, 0.0, -1.0))
    options = PipelineOptions(
        steps=("mpr",), orientations=(oblique,), slice_spacing=60.0, slab_thickness=3.0
    )
    result = run_pipeline(files(CT), options)
    assert result.datasets and all(problems(ds) == [] for ds in result.datasets)
    first = result.datasets[0]
    root = 2**-0.5
    np.testing.assert_allclose(
        [float(x) for x in first.ImageOrientationPatient], [root, root, 0, 0, 0, -1], atol=1e-5
    )
    assert first.SeriesDescription == "MPR oblique 60 mm, 3 mm average slab"
    assert float(first.SliceThickness) == 3.0
