"""WADO-RS against a real hub: instances, frames, bulk data, rendered (PS3.18 10.4).

One hub per module holds every non-malformed file of the shared data (imported through
``pacs-hub import``); dicomweb-client (a client nobody here wrote) and httpx (exact
headers, bad input) talk to it over loopback.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames

from pacs_hub.dicom.bulkdata import BadTagPath, parse_tag_path
from pacs_hub.dicom.fragments import frame_fragments, read_frame
from pacs_hub.dicom.part10 import read_file_meta
from pacs_hub.dicomweb.multipart import acceptable, parse_accept
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.storage.blob_ref import BlobRef
from tests.blobs import stored_bytes
from tests.conftest import DATA, Hub, start_hub, wait_until

EXPLICIT_LE = "1.2.840.10008.1.2.1"
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
OHIF_FRAMES = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
FOLDERS = ("volumes", "multiframe", "modalities", "transfer_syntaxes", "charsets")
MOSAIC = DATA / "transfer_syntaxes" / "siemens_mosaic_same_image"


@dataclass(frozen=True)
class Original:
    """One file of the shared data and its UIDs."""

    path: Path
    study: str
    series: str
    sop: str
    transfer_syntax: str

    @property
    def instance_path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


def _originals() -> list[Original]:
    found = []
    for folder in FOLDERS:
        for path in sorted((DATA / folder).rglob("*")):
            if not path.is_file():
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                found.append(
                    Original(
                        path,
                        ds.StudyInstanceUID,
                        ds.SeriesInstanceUID,
                        ds.SOPInstanceUID,
                        ds.file_meta.TransferSyntaxUID,
                    )
                )
            except Exception:  # not DICOM, no meta, no UIDs: the import rejects these too
                continue
    return found


@dataclass
class Loaded:
    hub: Hub
    stored: dict[str, Original]  # SOP Instance UID -> the file the hub kept
    rejected: set[Path]

    @property
    def url(self) -> str:
        return self.hub.url + "/dicom-web"

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(self.url)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kwargs)  # type: ignore[arg-type]

    def by_name(self, name: str) -> Original:
        return next(o for o in self.stored.values() if o.path.name == name)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    hub = start_hub(tmp_path_factory.mktemp("wado") / "data")
    try:
        report = hub.cli("import", *(str(DATA / f) for f in FOLDERS), check=False)
        rejected = {Path(p) for p in re.findall(r"^rejected (\S+):", report.stdout, re.M)}
        stored: dict[str, Original] = {}
        for original in _originals():
            if original.path not in rejected and original.sop not in stored:
                stored[original.sop] = original
        yield Loaded(hub, stored, rejected)
    finally:
        hub.stop()


def multipart(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(part Content-Type, body) of a multipart/related body, checked strictly."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related; type=")
    boundary = content_type.split("boundary=")[1].encode()
    body = response.content
    assert body.startswith(b"--" + boundary + b"\r\n"), "no preamble allowed"
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        assert head.startswith(b"Content-Type: "), head  # exact case (viewer.md 5)
        parts.append((head.decode()[len("Content-Type: ") :], data[:-2]))
    return parts


def _pixels(ds: pydicom.Dataset) -> np.ndarray:  # type: ignore[type-arg]
    return np.asarray(ds.pixel_array)


# --- instances ---------------------------------------------------------------------------


def test_every_stored_file_comes_back_byte_identical(loaded: Loaded) -> None:
    assert len(loaded.stored) > 280
    assert all("/malformed/" not in str(p) for p in loaded.rejected)
    seen = 0
    for study in sorted({o.study for o in loaded.stored.values()}):
        response = loaded.get(f"/studies/{study}", headers=AS_STORED)
        assert response.status_code == 200, response.text
        # sent as stored: the length is known up front (RFC 9110 8.6), not chunked
        assert response.headers["content-length"] == str(len(response.content))
        assert "transfer-encoding" not in response.headers
        for header, data in multipart(response):
            meta = read_file_meta(data)
            original = loaded.stored.get(meta.sop_instance_uid)
            if original is None:  # imported by a later test of this module
                continue
            assert header == f"application/dicom; transfer-syntax={original.transfer_syntax}"
            stored = stored_bytes(loaded.hub.data_dir)[meta.sop_instance_uid]
            assert stored == data, original.path  # the stored file, unchanged
            source = original.path.read_bytes()
            assert data[meta.dataset_offset :] == source[read_file_meta(source).dataset_offset :]
            seen += 1
    assert seen == len(loaded.stored)


def test_dicomweb_client_retrieves_study_series_and_instance(loaded: Loaded) -> None:
    client = loaded.client()
    ct = loaded.by_name("I100")
    stored = (("application/dicom", "*"),)
    study = client.retrieve_study(ct.study, media_types=stored)
    assert len(study) == 28
    series = client.retrieve_series(ct.study, ct.series, media_types=stored)
    assert sorted(ds.SOPInstanceUID for ds in series) == sorted(ds.SOPInstanceUID for ds in study)
    instance = client.retrieve_instance(ct.study, ct.series, ct.sop)  # no transfer syntax
    assert instance.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(_pixels(instance), _pixels(pydicom.dcmread(ct.path)))


@pytest.mark.parametrize(
    "name",
    [
        *("2.dcm", "3.dcm", "4.dcm", "5.dcm", "7.dcm", "9.dcm", "deflated_explicit_le_clunie.dcm"),
        *("us_nema_wg04_us1_j2k_lossless_rgb.dcm", "nm_nema_wg04_nm1_jpeg_extended_12bit.dcm"),
    ],
)
def test_explicit_le_transcoding_keeps_values_and_pixels(loaded: Loaded, name: str) -> None:
    original = loaded.by_name(name)
    client = loaded.client()
    got = client.retrieve_instance(
        original.study,
        original.series,
        original.sop,
        media_types=(("application/dicom", EXPLICIT_LE),),
    )
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    source = pydicom.dcmread(original.path)
    assert got.PatientName == source.PatientName
    assert got.SOPInstanceUID == original.sop
    assert np.array_equal(_pixels(got), _pixels(source))
    if name.startswith(("2", "3", "4", "5", "7", "9")):  # one image, many encodings
        reference = pydicom.dcmread(MOSAIC / "1.dcm")
        assert np.array_equal(_pixels(got), _pixels(reference))


def test_default_transfer_syntax_is_explicit_le_except_lossy_stored(loaded: Loaded) -> None:
    lossless = loaded.by_name("7.dcm")  # JPEG-LS lossless
    response = loaded.get(
        lossless.instance_path, headers={"Accept": "multipart/related; type=application/dicom"}
    )
    [(header, _)] = multipart(response)
    assert header == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    lossy = loaded.by_name("cr_nema_wg04_rg3_j2k_lossy.dcm")
    response = loaded.get(lossy.instance_path, headers={"Accept": "*/*"})
    [(header, data)] = multipart(response)
    assert header == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert data in stored_bytes(loaded.hub.data_dir).values()


def test_unacceptable_media_types_and_syntaxes_are_406(loaded: Loaded) -> None:
    ct = loaded.by_name("I100")
    for accept in (
        "application/json",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        "image/jpeg",
    ):
        response = loaded.get(f"/studies/{ct.study}", headers={"Accept": accept})
        assert response.status_code == 406, accept
        assert response.headers["content-type"] == "application/problem+json"
    bad = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.x'}
    assert loaded.get(f"/studies/{ct.study}", headers=bad).status_code == 400


def test_unknown_uids_404_malformed_uids_400(loaded: Loaded) -> None:
    ct = loaded.by_name("I100")
    assert loaded.get("/studies/1.2.3.4").status_code == 404
    assert loaded.get(f"/studies/{ct.study}/series/1.2.3").status_code == 404
    assert loaded.get(f"/studies/{ct.study}/series/{ct.series}/instances/1.2.3").status_code == 404
    assert loaded.get(f"/studies/1.2.3/series/{ct.series}/instances/{ct.sop}").status_code == 404
    for bad in ("1.2.a", "1.02.3", "1" * 65, "%2E%2E", "1.2.3%00", "1.2%5C..%5C3"):
        response = loaded.get(f"/studies/{bad}/series/{ct.series}/instances/{ct.sop}")
        assert response.status_code == 400, bad
        assert response.json()["title"] == "Invalid UID"
    escaped = loaded.get(f"/studies/1.2%2F..%2F3/series/{ct.series}/instances/{ct.sop}")
    assert escaped.status_code == 400  # an encoded "/" is refused before routing splits it
    assert escaped.json()["title"] == "Invalid UID"
    connection = http.client.HTTPConnection("127.0.0.1", loaded.hub.http_port, timeout=30)
    try:  # http.client sends dot segments as they are (httpx would remove them)
        connection.request("GET", f"/dicom-web/studies/../series/{ct.series}/instances/{ct.sop}")
        assert connection.getresponse().status == 400
    finally:
        connection.close()


def test_a_client_that_disconnects_leaves_nothing_open(loaded: Loaded) -> None:
    volume = loaded.by_name("axial_epi_fmri_interleaved_i_to_s-00001.dcm")
    url = loaded.url + f"/studies/{volume.study}"
    with httpx.stream("GET", url, headers=AS_STORED, timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    blobs = str(loaded.hub.data_dir / "blobs")

    def read_only_blob(fd: Path) -> bool:  # a pack file held open for appending is not
        try:  # (a descriptor listed may be closed by now)
            flags = (Path(f"/proc/{loaded.hub.process.pid}/fdinfo") / fd.name).read_text()
            target = os.readlink(fd)
        except FileNotFoundError:
            return False
        mode = int(flags.split("flags:")[1].split()[0], 8) & os.O_ACCMODE
        return blobs in target and mode == os.O_RDONLY

    def open_blobs() -> int:
        fds = Path(f"/proc/{loaded.hub.process.pid}/fd")
        return sum(1 for fd in fds.iterdir() if read_only_blob(fd))

    wait_until(lambda: open_blobs() == 0, timeout=20, what="blob files closed")
    assert loaded.get(f"/studies/{volume.study}", headers=AS_STORED).status_code == 200


# --- frames ------------------------------------------------------------------------------


def _decode(original: pydicom.Dataset, syntax: str, data: bytes) -> np.ndarray:  # type: ignore[type-arg]
    """A frame received over the wire, decoded by pydicom with the part's transfer syntax."""
    ds = pydicom.Dataset()
    for keyword in (
        "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
        "PixelRepresentation", "PhotometricInterpretation", "PlanarConfiguration",
    ):  # fmt: skip
        if keyword in original:
            setattr(ds, keyword, original[keyword].value)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == EXPLICIT_LE:
        ds.PixelData = data
        if "PlanarConfiguration" in ds and original.file_meta.TransferSyntaxUID != EXPLICIT_LE:
            ds.PlanarConfiguration = 0
    else:
        ds.PixelData = encapsulate([data])
    return np.asarray(ds.pixel_array)


FRAME_FILES = {
    "1.dcm": [1],  # explicit LE
    "2.dcm": [1],  # implicit LE
    "3.dcm": [1],  # explicit big endian
    "deflated_explicit_le_clunie.dcm": [1],
    "4.dcm": [1],  # RLE
    "5.dcm": [1],  # JPEG lossless SV1
    "7.dcm": [1],  # JPEG-LS
    "9.dcm": [1],  # JPEG 2000 lossless
    "cr_nema_wg04_rg3_j2k_lossy.dcm": [1],  # JPEG 2000
    "nm_nema_wg04_nm1_jpeg_extended_12bit.dcm": [1],  # JPEG extended
    "jpeg_baseline_rgb_no_color_transform.dcm": [1],  # JPEG baseline RGB
    "us_multiframe_jpeg_baseline_120frames.dcm": [120, 1, 60],  # YBR_FULL_422 multi-frame
    "mr_siemens_xa30_enhanced_epi_sag_63frames.dcm": [2, 63],
    "seg_qin_headneck_binary_13frames.dcm": [1, 7, 13],  # 1-bit
    "us_nema_wg04_us1_j2k_lossless_rgb.dcm": [1],
}


@pytest.mark.parametrize("name", sorted(FRAME_FILES))
def test_frames_as_stored_decode_to_the_original_pixels(loaded: Loaded, name: str) -> None:
    original = loaded.by_name(name)
    numbers = FRAME_FILES[name]
    response = loaded.get(
        original.instance_path + "/frames/" + ",".join(map(str, numbers)), headers=OHIF_FRAMES
    )
    assert response.status_code == 200, response.text
    source = pydicom.dcmread(original.path)
    expected = _pixels(source)
    frames = int(source.get("NumberOfFrames", 1) or 1)
    stored = original.transfer_syntax
    parts = multipart(response)
    assert len(parts) == len(numbers)
    for number, (header, data) in zip(numbers, parts, strict=True):
        media, syntax = header.split("; transfer-syntax=")
        if source.file_meta.TransferSyntaxUID.is_compressed:
            assert syntax == stored
        else:
            assert (media, syntax) == ("application/octet-stream", EXPLICIT_LE)
        if source.BitsAllocated == 1:
            bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
            got = bits[: source.Rows * source.Columns].reshape(source.Rows, source.Columns)
        else:
            got = _decode(source, syntax, data)
        want = expected[number - 1] if frames > 1 else expected
        assert np.array_equal(got, want), (name, number)


def test_frame_part_headers_are_exact(loaded: Loaded) -> None:
    rle = loaded.by_name("4.dcm")
    for accept in (
        OHIF_FRAMES["Accept"],
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    ):
        response = loaded.get(rle.instance_path + "/frames/1", headers={"Accept": accept})
        assert response.headers["content-type"].startswith(
            'multipart/related; type="image/dicom-rle"; boundary='
        )
        boundary = response.headers["content-type"].split("boundary=")[1]
        header = "Content-Type: image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
        assert response.content.startswith(f"--{boundary}\r\n{header}\r\n\r\n".encode())


def test_dicomweb_client_frames_decoded_and_as_stored(loaded: Loaded) -> None:
    client = loaded.client()
    jls = loaded.by_name("7.dcm")
    expected = _pixels(pydicom.dcmread(jls.path))
    [decoded] = client.retrieve_instance_frames(
        jls.study, jls.series, jls.sop, frame_numbers=[1], media_types=("application/octet-stream",)
    )
    assert np.array_equal(
        np.frombuffer(decoded, "<u2").reshape(expected.shape), expected.view("<u2")
    )
    us = loaded.by_name("us_multiframe_jpeg_baseline_120frames.dcm")
    frames = client.retrieve_instance_frames(
        us.study,
        us.series,
        us.sop,
        frame_numbers=[3, 2],
        media_types=(("application/octet-stream", "*"),),
    )
    assert [f[:2] for f in frames] == [b"\xff\xd8", b"\xff\xd8"]  # JPEG SOI
    assert frames[0] != frames[1]


def test_many_concurrent_frame_requests(loaded: Loaded) -> None:
    """OHIF prefetches a whole multi-frame object with 25 requests in flight."""
    enhanced = loaded.by_name("mr_siemens_xa30_enhanced_epi_sag_63frames.dcm")
    expected = _pixels(pydicom.dcmread(enhanced.path))

    def fetch(number: int) -> bool:
        response = loaded.get(f"{enhanced.instance_path}/frames/{number}", headers=OHIF_FRAMES)
        [(_, data)] = multipart(response)
        got = np.frombuffer(data, "<u2").reshape(86, 86) & 0x0FFF  # Bits Stored 12 (frame 1
        return np.array_equal(got, expected[number - 1])  # has bits set above them)

    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        assert all(pool.map(fetch, range(1, 64)))


def test_frame_errors(loaded: Loaded) -> None:
    us = loaded.by_name("us_multiframe_jpeg_baseline_120frames.dcm")
    base = us.instance_path + "/frames/"
    assert loaded.get(base + "0", headers=OHIF_FRAMES).status_code == 400
    assert loaded.get(base + "1,x", headers=OHIF_FRAMES).status_code == 400
    assert loaded.get(base + "-1", headers=OHIF_FRAMES).status_code == 400
    response = loaded.get(base + "1,121", headers=OHIF_FRAMES)
    assert response.status_code == 404 and "121" in response.json()["detail"]
    assert loaded.get(base + "1", headers={"Accept": "image/png"}).status_code == 406
    native = loaded.by_name("1.dcm")
    jpeg = {"Accept": "multipart/related; type=image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"}
    assert loaded.get(native.instance_path + "/frames/1", headers=jpeg).status_code == 406
    sr = loaded.by_name("sr_comprehensive_dcmtk_nested.dcm")
    assert loaded.get(sr.instance_path + "/frames/1", headers=OHIF_FRAMES).status_code == 404


# --- bulk data ---------------------------------------------------------------------------


def test_bulkdata_values(loaded: Loaded) -> None:
    client = loaded.client()
    big = loaded.by_name("3.dcm")
    base = f"{loaded.url}{big.instance_path}/bulkdata/"
    [rows] = client.retrieve_bulkdata(base + "00280010")
    assert bytes(rows) == (384).to_bytes(2, "little")  # US, swapped from big endian
    [pixels] = client.retrieve_bulkdata(base + "7FE00010")
    assert bytes(pixels) == pydicom.dcmread(MOSAIC / "1.dcm").PixelData
    pet = loaded.by_name("pt_acrin_flt_breast.dcm")
    source = pydicom.dcmread(pet.path)
    start = source.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime
    path = f"{loaded.url}{pet.instance_path}/bulkdata/00540016/0/00181072"
    [value] = client.retrieve_bulkdata(path)
    assert bytes(value).decode().strip() == start


def test_bulkdata_of_encapsulated_pixels_is_one_part_per_frame(loaded: Loaded) -> None:
    xa = loaded.by_name("xa_multiframe_jpeg_baseline_96frames.dcm")
    response = loaded.get(xa.instance_path + "/bulkdata/7FE00010", headers=OHIF_FRAMES)
    parts = multipart(response)
    assert len(parts) == 96
    assert {h for h, _ in parts} == {"image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"}


def test_bulkdata_errors(loaded: Loaded) -> None:
    pet = loaded.by_name("pt_acrin_flt_breast.dcm")
    base = pet.instance_path + "/bulkdata/"
    for bad in ("7FE0001", "zz", "00540016/x/00181072", "00540016/0", "../../etc"):
        assert loaded.get(base + bad).status_code == 400, bad
    assert loaded.get(base + "00091001").status_code == 404
    assert loaded.get(base + "00540016/9/00181072").status_code == 404
    assert loaded.get(base + "00280010", headers={"Accept": "image/jpeg"}).status_code == 406


@given(
    st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 10**6)), min_size=1, max_size=4)
)
def test_tag_paths_round_trip(steps: list[tuple[int, int]]) -> None:
    text = "/".join(f"{tag:08X}/{index}" for tag, index in steps[:-1]) + "/" * (len(steps) > 1)
    text += f"{steps[-1][0]:08x}"
    parsed = parse_tag_path(text)
    assert [t for t, _ in parsed] == [t for t, _ in steps]
    assert [i for _, i in parsed[:-1]] == [i for _, i in steps[:-1]]


@given(st.text(max_size=60))
def test_tag_path_parser_only_raises_bad_tag_path(text: str) -> None:
    with contextlib.suppress(BadTagPath):
        parse_tag_path(text)


@given(st.text(max_size=120))
def test_accept_parser_only_raises_problems(text: str) -> None:
    try:
        acceptable(parse_accept(text))
    except Problem as exc:
        assert exc.status == 400


def test_accept_quoted_and_unquoted_type_read_the_same() -> None:
    quoted = acceptable(
        parse_accept('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    )
    plain = acceptable(
        parse_accept("multipart/related; type=application/octet-stream; transfer-syntax=*")
    )
    assert quoted == plain


# --- rendered ----------------------------------------------------------------------------


def _first(value: object) -> float:
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)  # type: ignore[arg-type]


def _expected_window(values: np.ndarray, center: float, width: float) -> np.ndarray:  # type: ignore[type-arg]
    unit = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.round(unit * 255).astype(np.uint8)


def test_rendered_png_applies_rescale_and_window(loaded: Loaded) -> None:
    ct = loaded.by_name("I100")
    source = pydicom.dcmread(ct.path)
    hounsfield = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    png = {"Accept": "image/png"}
    response = loaded.get(
        ct.instance_path + "/rendered", headers=png, params={"window": "40,400,linear"}
    )
    assert response.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert np.abs(image.astype(int) - _expected_window(hounsfield, 40, 400)).max() <= 1
    stored = loaded.get(ct.instance_path + "/rendered", headers=png)
    center, width = _first(source.WindowCenter), _first(source.WindowWidth)
    image = np.asarray(Image.open(io.BytesIO(stored.content)))
    assert np.abs(image.astype(int) - _expected_window(hounsfield, center, width)).max() <= 1


def test_monochrome1_is_inverted(loaded: Loaded) -> None:
    cr = loaded.by_name("cr_nema_wg04_rg3_j2k_lossy.dcm")
    source = pydicom.dcmread(cr.path)
    assert source.PhotometricInterpretation == "MONOCHROME1"
    values = source.pixel_array.astype(float)
    response = loaded.get(
        cr.instance_path + "/rendered",
        headers={"Accept": "image/png"},
        params={"window": "2048,4096"},
    )
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert (
        np.abs(image.astype(int) - (255 - _expected_window(values, 2048, 4096).astype(int))).max()
        <= 1
    )


def test_rendered_resources_with_dicomweb_client(loaded: Loaded) -> None:
    client = loaded.client()
    us = loaded.by_name("us_multiframe_jpeg_baseline_120frames.dcm")
    jpeg = client.retrieve_instance_rendered(us.study, us.series, us.sop)
    image = Image.open(io.BytesIO(jpeg))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (640, 480))
    frame = client.retrieve_instance_frames_rendered(
        us.study,
        us.series,
        us.sop,
        frame_numbers=[60],
        media_types=("image/png",),
        params={"viewport": "320,320"},
    )
    image = Image.open(io.BytesIO(frame))
    assert (image.format, image.size) == ("PNG", (320, 240))  # fitted, aspect kept
    ct = loaded.by_name("I100")
    series = Image.open(io.BytesIO(client.retrieve_series_rendered(ct.study, ct.series)))
    assert series.size == (512, 512)
    palette = loaded.by_name("us_philips_palette_color.dcm")
    image = Image.open(
        io.BytesIO(client.retrieve_instance_rendered(palette.study, palette.series, palette.sop))
    )
    assert image.mode == "RGB"


def test_thumbnails_at_every_level(loaded: Loaded) -> None:
    ct = loaded.by_name("I100")
    paths = [
        f"/studies/{ct.study}/thumbnail",
        f"/studies/{ct.study}/series/{ct.series}/thumbnail",
        ct.instance_path + "/thumbnail",
        ct.instance_path + "/frames/1/thumbnail",
        f"/studies/{ct.study}/rendered",
    ]
    for path in paths:
        response = loaded.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(response.content))
        assert max(image.size) <= (512 if path.endswith("rendered") else 128)


def test_rendered_errors(loaded: Loaded) -> None:
    ct = loaded.by_name("I100")
    rendered = ct.instance_path + "/rendered"
    bad = [{"window": "abc"}, {"window": "40,0"}, {"window": "40,400,cubic"}]
    bad += [{"viewport": "0,0"}, {"viewport": "10"}, {"quality": "0"}, {"quality": "x"}]
    for params in bad:
        response = loaded.get(rendered, params=params)
        assert response.status_code == 400, params
        assert response.headers["content-type"] == "application/problem+json"
    assert loaded.get(rendered, headers={"Accept": "application/dicom"}).status_code == 406
    assert loaded.get(ct.instance_path + "/frames/2/rendered").status_code == 404
    assert loaded.get(ct.instance_path + "/frames/0/rendered").status_code == 400
    # Not an ASCII digit though str.isdigit() says so: int() refuses it (was a 500).
    assert loaded.get(ct.instance_path + "/frames/%C2%B2/rendered").status_code == 400
    sr = loaded.by_name("sr_comprehensive_dcmtk_nested.dcm")
    assert loaded.get(sr.instance_path + "/rendered").status_code == 406
    assert loaded.get("/studies/1.2.3/rendered").status_code == 404
    assert loaded.get("/studies/1.2.x/thumbnail").status_code == 400


# --- edge cases and the metadata's BulkDataURIs -------------------------------------------

MALFORMED = DATA / "malformed"


def _original(path: Path) -> Original:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return Original(path, *uids, ds.file_meta.TransferSyntaxUID)


def test_a_corrupt_codestream_is_sent_as_stored_and_406_when_decoding(loaded: Loaded) -> None:
    corrupt = _original(MALFORMED / "j2k_embedded_sequence_delimiter.dcm")
    loaded.hub.cli("import", str(corrupt.path))
    response = loaded.get(corrupt.instance_path, headers=AS_STORED)
    [(_, data)] = multipart(response)
    source = corrupt.path.read_bytes()
    assert (
        data[read_file_meta(data).dataset_offset :]
        == source[read_file_meta(source).dataset_offset :]
    )
    explicit = {
        "Accept": f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LE}"
    }
    for path, headers in (
        (corrupt.instance_path, explicit),
        (
            corrupt.instance_path + "/frames/1",
            {"Accept": "multipart/related; type=application/octet-stream"},
        ),
        (corrupt.instance_path + "/rendered", {}),
    ):
        response = loaded.get(path, headers=headers)
        assert response.status_code == 406, path
        assert "cannot be" in response.json()["detail"]
    assert loaded.get(corrupt.instance_path + "/frames/1", headers=OHIF_FRAMES).status_code == 200


def test_odd_length_native_frame(loaded: Loaded) -> None:
    odd = _original(MALFORMED / "rgb_3x3_odd_length_pixel_data.dcm")
    loaded.hub.cli("import", str(odd.path))
    [(header, data)] = multipart(loaded.get(odd.instance_path + "/frames/1", headers=OHIF_FRAMES))
    assert header == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert data == pydicom.dcmread(odd.path).pixel_array.tobytes()


def _bulk_uris(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "BulkDataURI":
                yield inner
            else:
                yield from _bulk_uris(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _bulk_uris(inner)


@pytest.mark.parametrize(
    "name",
    [
        "3.dcm",
        "mr_siemens_overlay_icon.dcm",
        "ecg_12lead_waveform.dcm",
        "us_aloka_palette16_implicit.dcm",
    ],
)
def test_every_bulkdata_uri_of_the_metadata_resolves(loaded: Loaded, name: str) -> None:
    original = loaded.by_name(name)
    response = loaded.get(f"/studies/{original.study}/series/{original.series}/metadata")
    if response.status_code in (404, 405):
        pytest.skip("series metadata is not served by this build")
    uris = list(_bulk_uris(response.json()))
    assert uris
    source = pydicom.dcmread(original.path)
    for uri in uris:
        got = httpx.get(uri, headers=OHIF_FRAMES, timeout=60)
        assert got.status_code == 200, uri
        parts = multipart(got)
        if not uri.endswith("/bulkdata/7FE00010"):
            [(header, data)] = parts
            assert header.startswith("application/octet-stream")
            steps = uri.split("/bulkdata/")[1].split("/")
            element = source
            for position in range(0, len(steps) - 1, 2):
                element = element[int(steps[position], 16)].value[int(steps[position + 1])]
            value = element[int(steps[-1], 16)].value
            if (
                isinstance(value, bytes)
                and source.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
            ):
                assert data == value, uri


def test_viewport_source_region_is_cropped_and_flipped(loaded: Loaded) -> None:
    ct = loaded.by_name("I100")
    png = {"Accept": "image/png"}
    full = loaded.get(ct.instance_path + "/rendered", headers=png, params={"window": "40,400"})
    whole = np.asarray(Image.open(io.BytesIO(full.content)))
    region = {"window": "40,400", "viewport": "100,50,200,100,100,50"}
    part = loaded.get(ct.instance_path + "/rendered", headers=png, params=region)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(part.content))), whole[100:150, 200:300])
    flipped = {"window": "40,400", "viewport": "100,50,300,100,-100,50"}
    part = loaded.get(ct.instance_path + "/rendered", headers=png, params=flipped)
    got = np.asarray(Image.open(io.BytesIO(part.content)))
    assert np.array_equal(got, whole[100:150, 200:300][:, ::-1])
    bad = loaded.get(ct.instance_path + "/rendered", params={"viewport": "10,10,-1,0,5,5"})
    assert bad.status_code == 400


def test_a_series_in_nine_encodings_comes_back_in_the_default_syntax(loaded: Loaded) -> None:
    reference = loaded.by_name("1.dcm")
    series = loaded.client().retrieve_series(reference.study, reference.series)
    assert len(series) == 9
    expected = _pixels(pydicom.dcmread(MOSAIC / "1.dcm"))
    for ds in series:
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert np.array_equal(_pixels(ds), expected), ds.SOPInstanceUID


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_the_fragment_index_finds_the_frames_pydicom_finds() -> None:
    checked = 0
    for path in sorted(DATA.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, defer_size=4096)
            syntax = ds.file_meta.TransferSyntaxUID
        except Exception:
            continue
        raw = ds.get_item(0x7FE00010, keep_deferred=True)
        if raw is None or not syntax.is_compressed or raw.value is not None:
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        try:
            blob = BlobRef.whole(path)
            located = frame_fragments(blob, raw.value_tell, frames)
            with path.open("rb") as fp:
                fp.seek(raw.value_tell)
                expected = list(generate_frames(fp, number_of_frames=frames))
        except Exception:  # a corrupt file in malformed/: either side may refuse it
            continue
        if located is not None:
            assert [read_frame(blob, each) for each in located] == expected, path
            checked += 1
    assert checked >= 15
