"""Per-frame records read from classic (one slice per file) and enhanced multi-frame objects.

A :class:`Frame` is one 2D image with its geometry (PS3.3 C.7.6.2 Image Plane module for
classic objects, C.7.6.16.2 Per-frame Functional Groups for enhanced ones), its rescale
(C.11.1 Modality LUT / C.7.6.16.2.9 Pixel Value Transformation) and a loader that decodes
its pixels only when asked, so a long series is read one slice at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from pacs_hub.storage.blob_ref import BlobRef
from workers.processing.errors import ProcessingError

Source = str | os.PathLike[str] | Dataset | BlobRef
"""A file, a dataset in memory, or a stored blob of the hub."""
FloatArray = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class Frame:
    """One image frame: geometry, rescale, provenance and a lazy pixel loader."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    slice_thickness: float | None
    temporal_position: int | None
    instance_number: int
    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    header: Dataset
    load: Callable[[], np.ndarray[Any, Any]]
    where: str

    def real_values(self) -> FloatArray:
        """The frame's pixels rescaled to real-world values (HU for CT), float32."""
        raw = self.load()
        if raw.shape != (self.rows, self.columns):
            raise ProcessingError(
                f"{self.where}: decoded pixels have shape {raw.shape}, "
                f"expected ({self.rows}, {self.columns})"
            )
        values = raw.astype(np.float32)
        if self.slope != 1.0:
            values *= np.float32(self.slope)
        if self.intercept != 0.0:
            values += np.float32(self.intercept)
        return values


def read_frames(sources: Iterable[Source]) -> list[Frame]:
    """Every frame of every source, in input order; raises ProcessingError on a non-image."""
    frames: list[Frame] = []
    for source in sources:
        frames.extend(_frames_of(source))
    return frames


def _frames_of(source: Source) -> Iterator[Frame]:
    if isinstance(source, Dataset):
        header = source
        where = f"instance {source.get('SOPInstanceUID', '?')}"
    else:
        readable: str | os.PathLike[str] | BinaryIO
        if isinstance(source, BlobRef):
            where, readable = f"blob {source.label}", source.open()
        else:
            where, readable = f"file {os.fspath(source)}", source
        try:
            header = pydicom.dcmread(readable, defer_size=1024)
        except Exception as exc:  # pydicom raises many types for unreadable files
            raise ProcessingError(f"{where}: not a readable DICOM file ({exc})") from exc
    _require_image(header, where)
    frame_count = int(header.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in header:
        yield from _enhanced_frames(source, header, frame_count, where)
    elif frame_count > 1:
        raise ProcessingError(
            f"{where}: multi-frame object of {frame_count} frames without per-frame "
            "functional groups (no slice geometry); expected an Enhanced CT/MR/PET object"
        )
    else:
        yield _classic_frame(source, header, where)


def _require_image(header: Dataset, where: str) -> None:
    if "PixelData" not in header and "FloatPixelData" not in header:
        raise ProcessingError(
            f"{where}: not an image (SOP class {header.get('SOPClassUID', '?')}, "
            "no Pixel Data); expected a CT, MR or PET image series"
        )
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise ProcessingError(
            f"{where}: Samples per Pixel is {header.SamplesPerPixel}, expected 1 (grayscale)"
        )


def _loader(source: Source, index: int | None) -> Callable[[], np.ndarray[Any, Any]]:
    if isinstance(source, Dataset):
        dataset = source

        def from_dataset() -> np.ndarray[Any, Any]:
            array = dataset.pixel_array
            return array if index is None else array[index]

        return from_dataset
    if isinstance(source, BlobRef):
        blob = source

        def from_blob() -> np.ndarray[Any, Any]:
            with blob.open() as fp:
                return pixel_array(fp, index=index)

        return from_blob
    path = os.fspath(source)

    def from_file() -> np.ndarray[Any, Any]:
        return pixel_array(path, index=index)

    return from_file


def _floats(value: Any, count: int, what: str, where: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ProcessingError(f"{where}: {what} is {value!r}, expected numbers") from exc
    if len(numbers) != count:
        raise ProcessingError(f"{where}: {what} has {len(numbers)} values, expected {count}")
    return numbers


def _classic_frame(source: Source, ds: Dataset, where: str) -> Frame:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            raise ProcessingError(f"{where}: {keyword} is missing; cannot place the slice")
    thickness = ds.get("SliceThickness")
    temporal = ds.get("TemporalPositionIdentifier")
    return Frame(
        position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", where),  # type: ignore[arg-type]
        orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", where),  # type: ignore[arg-type]
        pixel_spacing=_floats(ds.PixelSpacing, 2, "PixelSpacing", where),  # type: ignore[arg-type]
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=float(ds.get("RescaleSlope", 1) or 1),
        intercept=float(ds.get("RescaleIntercept", 0) or 0),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        temporal_position=int(temporal) if temporal not in (None, "") else None,
        instance_number=int(ds.get("InstanceNumber", 0) or 0),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_number=None,
        header=ds,
        load=_loader(source, None),
        where=where,
    )


def _group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """Functional group item ``keyword`` for frame ``index``: per-frame, else shared."""
    per_frame = ds.PerFrameFunctionalGroupsSequence[index]
    if keyword in per_frame and len(per_frame[keyword].value):
        item: Dataset = per_frame[keyword].value[0]
        return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0] and len(shared[0][keyword].value):
        shared_item: Dataset = shared[0][keyword].value[0]
        return shared_item
    return None


def _enhanced_frames(source: Source, ds: Dataset, count: int, where: str) -> Iterator[Frame]:
    if len(ds.PerFrameFunctionalGroupsSequence) != count:
        raise ProcessingError(
            f"{where}: {len(ds.PerFrameFunctionalGroupsSequence)} per-frame functional "
            f"groups, expected NumberOfFrames={count}"
        )
    for index in range(count):
        frame_where = f"{where} frame {index + 1}"
        position = _group(ds, index, "PlanePositionSequence")
        orientation = _group(ds, index, "PlaneOrientationSequence")
        measures = _group(ds, index, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise ProcessingError(
                f"{frame_where}: PlanePosition/PlaneOrientation/PixelMeasures functional "
                "group missing; cannot place the frame"
            )
        rescale = _group(ds, index, "PixelValueTransformationSequence")
        content = _group(ds, index, "FrameContentSequence")
        temporal = content.get("TemporalPositionIndex") if content is not None else None
        thickness = measures.get("SliceThickness")
        yield Frame(
            position=_floats(position.ImagePositionPatient, 3, "ImagePositionPatient", frame_where),  # type: ignore[arg-type]
            orientation=_floats(  # type: ignore[arg-type]
                orientation.ImageOrientationPatient, 6, "ImageOrientationPatient", frame_where
            ),
            pixel_spacing=_floats(measures.PixelSpacing, 2, "PixelSpacing", frame_where),  # type: ignore[arg-type]
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            slope=float(rescale.get("RescaleSlope", 1) or 1) if rescale else 1.0,
            intercept=float(rescale.get("RescaleIntercept", 0) or 0) if rescale else 0.0,
            slice_thickness=float(thickness) if thickness not in (None, "") else None,
            temporal_position=int(temporal) if temporal not in (None, "") else None,
            instance_number=index + 1,
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            frame_number=index + 1,
            header=ds,
            load=_loader(source, index),
            where=frame_where,
        )
