"""Results as DICOM: each a new series in the source study, with geometry and provenance.

- MPR reformats, projections and the rotating MIP: CT Image or MR Image instances (the
  source's modality; Secondary Capture for others) with the Image Plane module (PS3.3
  C.7.6.2) of their own plane, ImageType DERIVED\\SECONDARY\\<what>, Derivation
  Description and Code (CID 7203), Source Image Sequence (the source slices used) and
  Referenced Series Sequence;
- volume renderings: Secondary Capture RGB (highdicom ``SCImage``);
- isosurfaces: Encapsulated STL (PS3.3 A.85.1), the binary STL in Encapsulated Document.

UIDs are derived from the source series UID and what was done (pydicom ``generate_uid``
with entropy sources), so running the same step twice on the same input gives the same
instances: the archive's ingest stores them once.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import highdicom
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from workers.processing.errors import ProcessingError
from workers.processing.geometry import Plane
from workers.processing.mpr import Reformat
from workers.processing.projection import Projection
from workers.processing.render import Rendering
from workers.processing.surface import Mesh, stl_bytes
from workers.processing.validation import (
    CT_IMAGE,
    ENCAPSULATED_STL,
    MR_IMAGE,
    SECONDARY_CAPTURE,
)
from workers.processing.volume import SourceFrame, Volume

MANUFACTURER = "PACS Hub"
SOFTWARE_VERSION = "pacs-hub processing 0.1"
_PATIENT_STUDY = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_TYPE2_DEFAULTS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate")
_CT_COPIED = ("KVP", "AcquisitionNumber", "PatientPosition")
_MR_COPIED = (
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "EchoTime",
    "EchoTrainLength",
    "RepetitionTime",
    "MagneticFieldStrength",
    "PatientPosition",
)
_SOURCE_PURPOSE = Code("121322", "DCM", "Source image for image processing operation")
_AVERAGE = Code("113049", "DCM", "Pixel by pixel mean")
MODE_CODES: dict[str, tuple[Code, str]] = {
    "mip": (codes.DCM.MaximumIntensityProjection, "MIP"),
    "minip": (codes.DCM.MinimumIntensityProjection, "MINIP"),
    "average": (_AVERAGE, "AVERAGE"),
}


@dataclass(frozen=True)
class Series:
    """What every instance of one output series shares."""

    uid: str
    number: int
    description: str
    code: Code
    image_type: str


def derived_uid(volume: Volume, *what: object) -> str:
    """A UID fixed by the source series, its time point and ``what`` (idempotent reruns)."""
    source = str(volume.header.get("SeriesInstanceUID", ""))
    parts = [source, str(volume.temporal_position), *(str(w) for w in what)]
    return str(generate_uid(entropy_srcs=parts))


def new_series(
    volume: Volume, description: str, code: Code, image_type: str, number: int
) -> Series:
    """An output series of ``volume``'s study; the description says what was done."""
    return Series(derived_uid(volume, description), number, description[:64], code, image_type)


def reformat_datasets(volume: Volume, result: Reformat, series_number: int = 901) -> list[Dataset]:
    """One CT/MR image per reformatted plane (DERIVED\\SECONDARY\\REFORMATTED)."""
    return list(iter_reformat_datasets(volume, result, iter(result.images), series_number))


def iter_reformat_datasets(
    volume: Volume, stack: Reformat, images: Iterator[Any], series_number: int = 901
) -> Iterator[Dataset]:
    """The datasets of ``stack`` as its ``images`` come (streaming, one at a time)."""
    code = codes.DCM.MultiplanarReformatting
    if stack.slab_thickness > 0:
        code = MODE_CODES[stack.mode][0] if stack.mode != "average" else _AVERAGE
    series = new_series(volume, stack.description, code, "REFORMATTED", series_number)
    thickness = stack.slab_thickness or stack.slice_spacing
    for index, (image, plane) in enumerate(zip(images, stack.planes, strict=True)):
        yield grayscale_dataset(volume, series, index + 1, image, plane, thickness)


def projection_datasets(
    volume: Volume, projections: list[Projection], series_number: int = 902
) -> list[Dataset]:
    """Projection images (one, or a rotating cine) as one series (DERIVED\\SECONDARY\\MIP)."""
    if not projections:
        raise ProcessingError("no projection to write; expected at least one")
    first = projections[0]
    code, kind = MODE_CODES[first.mode]
    description = first.description if len(projections) == 1 else _cine_title(projections)
    series = new_series(volume, description, code, kind, series_number)
    return [
        grayscale_dataset(volume, series, index + 1, p.image, p.plane, p.slab_thickness, True)
        for index, p in enumerate(projections)
    ]


def _cine_title(projections: list[Projection]) -> str:
    return f"rotating {projections[0].mode.upper()} {len(projections)} angles"


def grayscale_dataset(
    volume: Volume,
    series: Series,
    number: int,
    image: np.ndarray[Any, Any],
    plane: Plane,
    thickness: float,
    all_sources: bool = False,
) -> Dataset:
    """A CT Image / MR Image (Secondary Capture otherwise) of ``image`` on ``plane``."""
    modality = str(volume.header.get("Modality", "OT"))
    sop_class = {"CT": CT_IMAGE, "MR": MR_IMAGE}.get(modality, SECONDARY_CAPTURE)
    ds = _base(volume, series, sop_class, number)
    stored, slope, intercept = _encode(image)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = stored.astype("<i2").tobytes()
    ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:.6g}", f"{slope:.6g}"
    ds.RescaleType = "HU" if modality == "CT" else "US"
    ds.WindowCenter, ds.WindowWidth = _window(image)
    ds.FrameOfReferenceUID = _frame_of_reference(volume)
    ds.PositionReferenceIndicator = volume.header.get("PositionReferenceIndicator", "")
    ds.ImagePositionPatient = [f"{x:.6g}" for x in plane.origin]
    ds.ImageOrientationPatient = [f"{x:.6g}" for x in plane.orientation]
    ds.PixelSpacing = [f"{x:.6g}" for x in plane.pixel_spacing]
    ds.SliceThickness = f"{thickness:.6g}"
    copied = _CT_COPIED if sop_class == CT_IMAGE else _MR_COPIED if sop_class == MR_IMAGE else ()
    for keyword in copied:
        ds[keyword] = volume.header[keyword] if keyword in volume.header else _empty(keyword)
    if sop_class == MR_IMAGE:
        ds.ScanningSequence = ds.ScanningSequence or "RM"
        ds.SequenceVariant = ds.SequenceVariant or "NONE"
    if sop_class == SECONDARY_CAPTURE:
        ds.ConversionType = "WSD"
        ds.PatientOrientation = [_letter(plane.row_direction), _letter(plane.column_direction)]
    sources = volume.sources if all_sources else _sources_on(volume, plane, thickness)
    _provenance(ds, volume, series, sources)
    return ds


def _empty(keyword: str) -> Any:
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement

    tag = tag_for_keyword(keyword)
    assert tag is not None
    return DataElement(tag, dictionary_VR(tag), None)


def _encode(image: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], float, float]:
    """Signed 16-bit stored values and the rescale giving back ``image`` (1 HU or finer)."""
    values = np.nan_to_num(image.astype(np.float64), nan=float(np.nanmin(image)))
    low, high = float(values.min()), float(values.max())
    if low >= -32768 and high <= 32767 and high - low >= 100:
        return np.rint(values).astype(np.int16), 1.0, 0.0
    slope = max(high - low, 1e-6) / 65000.0
    intercept = low + 32500.0 * slope
    stored = np.clip(np.rint((values - intercept) / slope), -32768, 32767)
    return stored.astype(np.int16), slope, intercept


def _window(image: np.ndarray[Any, Any]) -> tuple[str, str]:
    low, high = (float(x) for x in np.percentile(image, [1, 99]))
    return f"{(low + high) / 2:.6g}", f"{max(high - low, 1.0):.6g}"


def _letter(direction: Any) -> str:
    """The dominant patient direction letter of a vector (PS3.3 C.7.6.1.1.1)."""
    axis = int(np.argmax(np.abs(direction)))
    return ("LR", "PA", "HF")[axis][0 if direction[axis] > 0 else 1]


def _frame_of_reference(volume: Volume) -> str:
    uid = str(volume.header.get("FrameOfReferenceUID", ""))
    if not uid:
        raise ProcessingError(
            "source series has no FrameOfReferenceUID; derived images could not be placed"
        )
    return uid


def _base(volume: Volume, series: Series, sop_class: str, number: int) -> Dataset:
    header = volume.header
    ds = Dataset()
    for keyword in _PATIENT_STUDY:
        if keyword in header:
            ds[keyword] = header[keyword]
    for keyword in (*_TYPE2_DEFAULTS, "StudyTime", "ReferringPhysicianName", "StudyID"):
        if keyword not in ds:
            ds[keyword] = _empty(keyword)
    if "AccessionNumber" not in ds:
        ds.AccessionNumber = ""
    now = datetime.datetime.now(datetime.UTC)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = UID(derived_uid(volume, series.description, number))
    ds.InstanceCreationDate, ds.InstanceCreationTime = (
        now.strftime("%Y%m%d"),
        now.strftime("%H%M%S"),
    )
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.Modality = header.get("Modality", "OT")
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.InstanceNumber = number
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = code.value, code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _provenance(
    ds: Dataset, volume: Volume, series: Series, sources: tuple[SourceFrame, ...]
) -> None:
    """ImageType, derivation and references (PS3.3 C.7.6.1, C.12.2)."""
    ds.ImageType = ["DERIVED", "SECONDARY", series.image_type]
    notes = "; ".join(volume.notes)
    text = f"{series.description} by {SOFTWARE_VERSION}" + (f" ({notes})" if notes else "")
    ds.DerivationDescription = text[:1024]
    ds.DerivationCodeSequence = Sequence([_code_item(series.code)])
    references = []
    for source in dict.fromkeys(sources):
        item = Dataset()
        item.ReferencedSOPClassUID = source.sop_class_uid
        item.ReferencedSOPInstanceUID = source.sop_instance_uid
        if source.frame_number is not None:
            item.ReferencedFrameNumber = source.frame_number
        item.PurposeOfReferenceCodeSequence = Sequence([_code_item(_SOURCE_PURPOSE)])
        references.append(item)
    ds.SourceImageSequence = Sequence(references)
    referenced = Dataset()
    referenced.SeriesInstanceUID = volume.header.SeriesInstanceUID
    instances = []
    for uid_pair in dict.fromkeys((s.sop_class_uid, s.sop_instance_uid) for s in sources):
        instance = Dataset()
        instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = uid_pair
        instances.append(instance)
    referenced.ReferencedInstanceSequence = Sequence(instances)
    ds.ReferencedSeriesSequence = Sequence([referenced])


def _sources_on(volume: Volume, plane: Plane, thickness: float) -> tuple[SourceFrame, ...]:
    """The source slices the plane (and its slab) passes through."""
    if len(volume.sources) != volume.shape[0]:
        return volume.sources  # resampled volume: every source contributed
    corners = []
    for r in (0, plane.rows - 1):
        for c in (0, plane.columns - 1):
            point = (
                np.asarray(plane.origin)
                + r * plane.pixel_spacing[0] * np.asarray(plane.column_direction)
                + c * plane.pixel_spacing[1] * np.asarray(plane.row_direction)
            )
            for offset in (-thickness / 2, thickness / 2):
                corners.append(point + offset * plane.normal)
    k = volume.to_index(np.array(corners))[:, 0]
    low = max(int(np.floor(k.min())), 0)
    high = min(int(np.ceil(k.max())), volume.shape[0] - 1)
    chosen = volume.sources[low : high + 1] if low <= high else ()
    return chosen or volume.sources


def rendering_datasets(
    volume: Volume, renderings: list[Rendering], series_number: int = 903
) -> list[Dataset]:
    """Volume renderings as Secondary Capture RGB images (highdicom SCImage)."""
    if not renderings:
        raise ProcessingError("no rendering to write; expected at least one")
    description = renderings[0].description
    series = new_series(volume, description, codes.DCM.VolumeRendering, "VOLUME", series_number)
    out = []
    for index, rendering in enumerate(renderings):
        with warnings.catch_warnings():  # source names like "HEAD": not ours to fix
            warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
            image = _sc_image(volume, rendering, series, index + 1)
        image.SeriesDescription = description
        image.SoftwareVersions = SOFTWARE_VERSION
        image.FrameOfReferenceUID = _frame_of_reference(volume)
        _provenance(image, volume, series, volume.sources)
        out.append(image)
    return out


def _sc_image(volume: Volume, rendering: Rendering, series: Series, number: int) -> Dataset:
    plane = rendering.plane
    image: Dataset = highdicom.sc.SCImage.from_ref_dataset(
        ref_dataset=volume.header,
        pixel_array=rendering.image,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=derived_uid(volume, series.description, number),
        instance_number=number,
        manufacturer=MANUFACTURER,
        pixel_spacing=plane.pixel_spacing,  # type: ignore[arg-type]  # mm, stub says int
        patient_orientation=(_letter(plane.row_direction), _letter(plane.column_direction)),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    return image


def mesh_dataset(volume: Volume, mesh: Mesh, series_number: int = 904) -> Dataset:
    """The mesh as an Encapsulated STL instance (PS3.3 A.85.1), patient LPS mm."""
    description = f"{mesh.description} (marching cubes), STL"
    series = new_series(volume, description, codes.DCM.SurfaceRendering, "SURFACE", series_number)
    ds = _base(volume, series, ENCAPSULATED_STL, 1)
    ds.Modality = "M3D"
    ds.FrameOfReferenceUID = _frame_of_reference(volume)
    ds.PositionReferenceIndicator = volume.header.get("PositionReferenceIndicator", "")
    ds.ManufacturerModelName = "PACS Hub processing"
    ds.DeviceSerialNumber = "0"
    ds.AcquisitionDateTime = None
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = description[:64]
    ds.ConceptNameCodeSequence = Sequence()
    data = stl_bytes(mesh, description)
    ds.MIMETypeOfEncapsulatedDocument = "model/stl"
    ds.EncapsulatedDocumentLength = len(data)
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    ds.MeasurementUnitsCodeSequence = Sequence([_code_item(codes.UCUM.Millimeter)])
    ds.ModelModification = "NO"
    ds.ModelMirroring = "NO"
    ds.ModelUsageCodeSequence = Sequence()
    _provenance(ds, volume, series, volume.sources)
    del ds.ImageType  # not an image: references go in Source Instance Sequence
    ds.SourceInstanceSequence = ds.SourceImageSequence
    del ds.SourceImageSequence
    return ds
