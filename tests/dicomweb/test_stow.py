"""STOW-RS (PS3.18 10.5) against a real hub: every shared file in, answers per the standard.

Files go in as the exact bytes of the shared files (one multipart part each, posted
with httpx) and through dicomweb-client (which re-encodes with pydicom). What the
hub stored is compared by SHA-256 with the originals; what it refused is exactly the
listed files, with the failure reason C-STORE would give.
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.blobs import blob_keys, blob_of, stored_bytes
from tests.conftest import DATA, Hub, start_hub
from tests.gateway.test_roundtrip import candidates

# Refused by STOW-RS, with the Failure Reason (0008,1197) expected.
REFUSED = {
    "charsets/clunie/chrFrenMulti.dcm": 0xA900,  # SOP Instance UID of chrFren.dcm, other bytes
    "charsets/clunie/chrJapMulti.dcm": 0xC000,  # meta SOP Instance UID != dataset's
    "charsets/clunie/chrJapMultiExplicitIR6.dcm": 0xC000,  # same
    "charsets/clunie/chrSQEncoding.dcm": 0xC001,  # no SOP Class UID
    "charsets/clunie/chrSQEncoding1.dcm": 0xC001,
    "modalities/rtdose_15frames.dcm": 0xC000,  # meta SOP Instance UID != dataset's
    "modalities/rtplan.dcm": 0xC000,
    "modalities/rtstruct_no_meta.dcm": 0xC000,  # not a Part 10 file (PS3.18 8.6.1.2)
    "transfer_syntaxes/htj2k_lossy_rgb.dcm": 0xC001,  # no Study Instance UID
}
DICOM_JSON = "application/dicom+json"


def multipart(files: list[bytes], boundary: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A STOW-RS body of Part 10 files and its Content-Type header."""
    boundary = boundary or uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        for data in files
    )
    body += f"--{boundary}--\r\n".encode()
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, {"Content-Type": ctype, "Accept": DICOM_JSON}


def post(hub: Hub, files: list[bytes], path: str = "/studies") -> httpx.Response:
    body, headers = multipart(files)
    return httpx.post(f"{hub.url}/dicom-web{path}", content=body, headers=headers, timeout=120)


def stored_sha256(hub: Hub) -> dict[str, str]:
    with sqlite3.connect(hub.data_dir / "index.sqlite3") as db:
        return dict(db.execute("SELECT sop_instance_uid, sha256 FROM instances").fetchall())


def temp_files(hub: Hub) -> list[Path]:
    return list((hub.data_dir / "tmp").iterdir())


@pytest.fixture(scope="module")
def stow_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = start_hub(tmp_path_factory.mktemp("stow") / "data")
    yield hub
    hub.stop()


@pytest.fixture
def empty_hub(tmp_path: Path) -> Iterator[Hub]:
    hub = start_hub(tmp_path / "data")
    yield hub
    hub.stop()


def test_every_shared_file_goes_in_unchanged_or_is_refused_with_its_reason(
    stow_hub: Hub,
) -> None:
    refused: dict[str, int] = {}
    expected: dict[str, str] = {}
    for path in candidates():
        relative = str(path.relative_to(DATA))
        data = path.read_bytes()
        answer = post(stow_hub, [data])
        body = answer.json()
        if answer.status_code == 200:
            items = body["00081199"]["Value"]
            assert len(items) == 1 and "00081198" not in body
            uid = items[0]["00081155"]["Value"][0]
            expected[uid] = hashlib.sha256(data).hexdigest()
            study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
            assert body["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study}")
        else:
            assert answer.status_code == 409, (relative, answer.text)
            assert answer.headers["content-type"] == DICOM_JSON
            failure = body["00081198"]["Value"][0]
            refused[relative] = failure["00081197"]["Value"][0]
            assert "00081199" not in body
            assert answer.headers["warning"].startswith("299 ")
    assert refused == REFUSED
    stored = stored_sha256(stow_hub)
    assert {uid: stored[uid] for uid in expected} == expected
    blobs = stored_bytes(stow_hub.data_dir)
    for uid, digest in expected.items():
        assert hashlib.sha256(blobs[uid]).hexdigest() == digest, uid
    assert temp_files(stow_hub) == []


def test_failed_item_names_the_instance_when_readable(stow_hub: Hub) -> None:
    answer = post(stow_hub, [(DATA / "charsets/clunie/chrFrenMulti.dcm").read_bytes()])
    failure = answer.json()["00081198"]["Value"][0]
    ds = pydicom.dcmread(DATA / "charsets/clunie/chrFrenMulti.dcm", stop_before_pixels=True)
    assert failure["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert failure["00081150"]["Value"] == [ds.SOPClassUID]


def _ct(study: str, rows: int = 16) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "STOW-1"
    ds.PatientName = "Dupont^Hélène"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(rows * rows, dtype="<u2").tobytes()
    return ds


def test_dicomweb_client_stores_a_mixed_batch_partially(stow_hub: Hub) -> None:
    client = DICOMwebClient(f"{stow_hub.url}/dicom-web")
    study = generate_uid()
    good, other = _ct(study), _ct(generate_uid())
    answer = client.store_instances([good, other], study_instance_uid=study)
    stored = [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence]
    failed = {i.ReferencedSOPInstanceUID: i.FailureReason for i in answer.FailedSOPSequence}
    assert stored == [good.SOPInstanceUID]
    assert failed == {other.SOPInstanceUID: 0xA900}
    assert other.SOPInstanceUID not in stored_sha256(stow_hub)
    found = client.search_for_instances(study_instance_uid=study)
    assert [f["00080018"]["Value"][0] for f in found] == [good.SOPInstanceUID]
    # Its part had no preamble (added by the hub): the blob is named by what is stored.
    digest = stored_sha256(stow_hub)[good.SOPInstanceUID]
    blob = stored_bytes(stow_hub.data_dir)[good.SOPInstanceUID]
    assert blob[128:132] == b"DICM" and hashlib.sha256(blob).hexdigest() == digest


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"--b\r\nContent-Type: application/dicom\r\n\r\nxx", "boundary=b", 400),  # truncated
        (b"garbage without any delimiter", "boundary=b", 400),
        (b"--b--\r\n", "", 400),  # no boundary parameter
        (b"--b--\r\n", "boundary=b", 400),  # no part at all
        (b"{}", None, 415),  # not multipart
    ],
)
def test_malformed_requests_store_nothing(
    stow_hub: Hub, body: bytes, content_type: str | None, status: int
) -> None:
    before = stored_sha256(stow_hub)
    if content_type is None:
        headers = {"Content-Type": "application/json"}
    else:
        value = "; ".join(['multipart/related; type="application/dicom"', content_type])
        headers = {"Content-Type": value.strip("; ")}
    answer = httpx.post(f"{stow_hub.url}/dicom-web/studies", content=body, headers=headers)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["status"] == status and answer.json()["detail"]
    assert stored_sha256(stow_hub) == before
    assert temp_files(stow_hub) == []


def test_a_body_cut_after_a_complete_part_stores_nothing(stow_hub: Hub) -> None:
    data = (DATA / "modalities/pt_acrin_flt_breast.dcm").read_bytes()
    ds = pydicom.dcmread(DATA / "modalities/pt_acrin_flt_breast.dcm", stop_before_pixels=True)
    fresh = _ct(generate_uid())
    encoded = _encode(fresh)
    body, headers = multipart([encoded, data])
    cut = body[: body.rindex(b"--")]  # no closing delimiter
    answer = httpx.post(f"{stow_hub.url}/dicom-web/studies", content=cut, headers=headers)
    assert answer.status_code == 400
    assert fresh.SOPInstanceUID not in stored_sha256(stow_hub)
    assert ds.SOPInstanceUID  # the file itself is valid
    assert temp_files(stow_hub) == []


def test_wrong_part_type_and_unknown_study_path(stow_hub: Hub) -> None:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}--\r\n"
    ).encode()
    headers = {"Content-Type": f"multipart/related; type=application/dicom; boundary={boundary}"}
    answer = httpx.post(f"{stow_hub.url}/dicom-web/studies", content=body, headers=headers)
    assert answer.status_code == 409
    assert answer.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    bad = post(stow_hub, [_encode(_ct(generate_uid()))], path="/studies/1.2.x..%2F")
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_large_upload_is_streamed_to_disk(empty_hub: Hub, tmp_path: Path) -> None:
    """A 256 MiB instance goes in without the hub's memory growing by its size."""
    frames, rows = 512, 512  # 512 frames of 512x512x16 bits = 256 MiB
    ds = _ct(generate_uid(), rows=rows)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT: multi-frame
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(rows * rows * 2 * frames)
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as fp:
            while chunk := fp.read(1 << 20):
                yield chunk
        yield tail

    before = _vm_hwm_kib(empty_hub.process.pid)
    answer = httpx.post(
        f"{empty_hub.url}/dicom-web/studies",
        content=body(),
        headers={"Content-Type": f"multipart/related; type=application/dicom; boundary={boundary}"},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    grown_mib = (_vm_hwm_kib(empty_hub.process.pid) - before) / 1024
    assert grown_mib < 64, f"hub peak memory grew by {grown_mib:.0f} MiB for a 256 MiB upload"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(stored_sha256(empty_hub).values()) == [digest]
    (key,) = blob_keys(empty_hub.data_dir).values()  # over the memory budget: a file
    assert key == f"{digest[:2]}/{digest}.dcm"
    assert blob_of(empty_hub.data_dir, key).file.stat().st_size == path.stat().st_size
