"""Federated query and retrieve on demand, against real peers.

Three Debian Orthanc instances play the PACS of establishments A, B and C (each knows
the hub as a modality, each registered in the hub with role pacs); the hub holds a
study of its own and a copy of one of A's. dcmtk's findscu queries the hub's federated
AE title, movescu retrieves through the hub a study only B holds into a storescp, and
QIDO-RS with ``includeremote=true``, the admin API and the CLI are exercised; C is
stopped (and a silent peer added) for the last test.
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom import sop_class as sc
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import update

from pacs_hub.config import Settings
from pacs_hub.dicom.ins import nir_key
from pacs_hub.dicom.part10 import dataset_offset
from pacs_hub.regional.pull import claim_job, stale_after, wait_for_job
from pacs_hub.regional.scu import pacs_node
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Node, RetrieveJob
from tests.blobs import blob_of, study_blob_keys
from tests.conftest import DATA, HUB_AE, Hub, dcmtk, free_port, start_hub, wait_until
from tests.peers import OrthancPeer, start_orthanc

pytestmark = pytest.mark.orthanc
FED_AE = "PACS_HUB_FED"
TIMEOUT = 2.0
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
JPEG_LOSSLESS = DATA / "modalities" / "nm_nema_wg04_nm1_jpeg_lossless.dcm"


def _ins_item(ins: str) -> Dataset:
    """An Other Patient IDs Sequence item holding a qualified test INS (france.md 3)."""
    item, qualifier = Dataset(), Dataset()
    item.PatientID, item.IssuerOfPatientID = ins, "ASIP-SANTE-INS-NIR"
    qualifier.UniversalEntityID, qualifier.UniversalEntityIDType = INS_TEST_OID, "ISO"
    item.IssuerOfPatientIDQualifiersSequence = [qualifier]
    return item


def make_study(
    patient_id: str,
    *,
    count: int = 3,
    date: str = "20240315",
    modality: str = "CT",
    issuer: str = "",
    ins: str = "",
) -> tuple[str, list[bytes]]:
    """A small explicit-VR study (Study UID, Part 10 files)."""
    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(1, count + 1):
        ds = Dataset()
        ds.SOPClassUID = (
            "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else sc.SecondaryCaptureImageStorage
        )
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = patient_id, "FEDERATION^TEST"
        ds.StudyDate, ds.StudyTime, ds.Modality = date, "101010", modality
        ds.StudyDescription = f"FED {patient_id}"
        if issuer:
            ds.IssuerOfPatientID = issuer
        if ins:
            ds.OtherPatientIDsSequence = [_ins_item(ins)]
        ds.SeriesNumber, ds.InstanceNumber = "1", str(number)
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(range(number, number + 16))
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
    return study, files


def jpeg_instance(study: str, patient_id: str, date: str = "20240315") -> bytes:
    """The shared JPEG Lossless NM file moved into ``study`` (pixel data untouched).

    Its sequences are written with explicit lengths: Orthanc (dcmtk) sends every
    sequence that way whatever it stored, so a file with undefined-length sequences
    never leaves Orthanc byte-identical, through the hub or not.
    """
    ds = pydicom.dcmread(JPEG_LOSSLESS)
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = False
            for item in elem.value:
                item.is_undefined_length_sequence_item = False
    ds.PatientID, ds.PatientName = patient_id, "FEDERATION^TEST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = date
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dataset_bytes(part10: bytes) -> bytes:
    """The dataset after the File Meta group (what C-STORE carries)."""
    return part10[dataset_offset(io.BytesIO(part10)) :]


def sop_uid(part10: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).SOPInstanceUID)


@dataclass
class Region:
    """The hub, three establishment PACS and the studies each holds."""

    hub: Hub
    pacs: dict[str, OrthancPeer]
    studies: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[bytes]] = field(default_factory=dict)

    def log(self) -> str:
        return (self.hub.data_dir.parent / f"hub-{self.hub.http_port}.log").read_text()


def _import(hub: Hub, folder: Path, files: list[bytes]) -> None:
    folder.mkdir(parents=True)
    for number, data in enumerate(files):
        (folder / f"{number}.dcm").write_bytes(data)
    hub.cli("import", str(folder))


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    root = tmp_path_factory.mktemp("federation")
    hub = start_hub(root / "data", PACS_HUB_FEDERATED_TIMEOUT=str(TIMEOUT))
    pacs: dict[str, OrthancPeer] = {}
    try:
        for name in ("ORTH_A", "ORTH_B", "ORTH_C"):
            pacs[name] = start_orthanc(
                root / name, aet=name, modalities={"HUB": (HUB_AE, "127.0.0.1", hub.dicom_port)}
            )
            hub.cli("nodes", "add", name, "127.0.0.1", str(pacs[name].dicom_port), "--role", "pacs")
        region = Region(hub, pacs)
        layout = {
            "hub": [], "shared": ["ORTH_A"], "a": ["ORTH_A"], "a_api": ["ORTH_A"],
            "a_cli": ["ORTH_A"], "b": ["ORTH_B"], "c": ["ORTH_C"],
        }  # fmt: skip
        for label, holders in layout.items():
            study, files = make_study(f"PAT-{label.upper()}")
            if label == "b":
                files.append(jpeg_instance(study, "PAT-B"))
            region.studies[label], region.files[label] = study, files
            for holder in holders:
                for data in files:
                    pacs[holder].api.upload(data)
            if label in ("hub", "shared"):
                _import(hub, root / f"import-{label}", files)
        yield region
    finally:
        for peer in pacs.values():
            peer.stop()
        hub.stop()


def findscu(
    region: Region, keys: list[str], outdir: Path, called: str = FED_AE
) -> tuple[list[Dataset], str, float]:
    """dcmtk findscu (Study Root) to the hub: answers, output, seconds taken."""
    outdir.mkdir(parents=True, exist_ok=True)
    command = [dcmtk("findscu"), "-v", "-S", "-aet", "FINDSCU", "-aec", called, "-X"]
    command += ["-od", str(outdir), "127.0.0.1", str(region.hub.dicom_port)]
    for key in keys:
        command += ["-k", key]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    answers = [pydicom.dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]
    return answers, done.stdout + done.stderr, elapsed


STUDY_KEYS = [
    "QueryRetrieveLevel=STUDY",
    "StudyDate=20240301-20240331",
    "StudyInstanceUID",
    "PatientID",
    "RetrieveAETitle",
    "InstanceAvailability",
    "NumberOfStudyRelatedInstances",
]


def _where(answers: list[Dataset]) -> dict[str, tuple[list[str], str]]:
    found = {}
    for ds in answers:
        titles = ds.RetrieveAETitle
        titles = [titles] if isinstance(titles, str) else list(titles)
        found[str(ds.StudyInstanceUID)] = ([t.strip() for t in titles], ds.InstanceAvailability)
    return found


def test_federated_cfind_returns_the_union_with_sources(region: Region, tmp_path: Path) -> None:
    answers, _, _ = findscu(region, STUDY_KEYS, tmp_path / "fed")
    where = _where(answers)
    s = region.studies
    assert len(answers) == len(where) == 7  # de-duplicated: the shared study once
    assert where[s["hub"]] == ([HUB_AE], "ONLINE")
    assert where[s["shared"]] == ([HUB_AE, "ORTH_A"], "ONLINE")  # the hub first
    assert where[s["a"]] == (["ORTH_A"], "NEARLINE")
    assert where[s["b"]] == (["ORTH_B"], "NEARLINE")
    assert where[s["c"]] == (["ORTH_C"], "NEARLINE")
    by_uid = {str(ds.StudyInstanceUID): ds for ds in answers}
    assert by_uid[s["b"]].PatientID == "PAT-B"
    assert int(by_uid[s["b"]].NumberOfStudyRelatedInstances) == 4  # from Orthanc B

    local, _, _ = findscu(region, STUDY_KEYS, tmp_path / "own", called=HUB_AE)
    assert {str(ds.StudyInstanceUID) for ds in local} == {s["hub"], s["shared"]}


def test_federated_series_level_names_where_each_series_lives(
    region: Region, tmp_path: Path
) -> None:
    keys = ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={region.studies['b']}"]
    answers, _, _ = findscu(region, [*keys, "SeriesInstanceUID", "Modality"], tmp_path)
    assert sorted(str(ds.Modality) for ds in answers) == ["CT", "NM"]
    assert {ds.RetrieveAETitle for ds in answers} == {"ORTH_B"}


def _held_pacs(
    study: str, release: threading.Event, answered: threading.Event
) -> ThreadedAssociationServer:
    """A PACS (pynetdicom Study Root C-FIND SCP on loopback) whose one match, ``study``,
    is sent only once ``release`` is set (or after a second, within the hub's timeout);
    a query by Patient ID has no match."""
    ae = AE(ae_title="HELD")
    ae.add_supported_context(sc.StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(sc.Verification)

    def on_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        if event.identifier.get("PatientID"):
            return  # the hub's prefetch of priors, by patient: none here
        release.wait(timeout=TIMEOUT / 2)
        answer = Dataset()
        answer.QueryRetrieveLevel, answer.StudyInstanceUID = "STUDY", study
        answer.PatientID, answer.StudyDate = "PAT-HELD", "20240315"
        answered.set()
        yield 0xFF00, answer

    handlers: list[Any] = [(evt.EVT_C_FIND, on_find)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None and server.socket is not None
    return server


def test_matches_of_a_fast_pacs_come_while_a_slow_one_is_still_answering(region: Region) -> None:
    """The first Pending response reaches the caller while the held PACS has not answered
    (it answers only when the caller has that response); every match comes once."""
    held_study, release, answered = generate_uid(), threading.Event(), threading.Event()
    server = _held_pacs(held_study, release, answered)
    port = str(server.server_address[1])
    region.hub.cli("nodes", "add", "HELD", "127.0.0.1", port, "--role", "pacs")
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyDate = "STUDY", "20240301-20240331"
    identifier.StudyInstanceUID, identifier.RetrieveAETitle = "", ""
    held_when_first: bool | None = None
    found: list[tuple[str, str]] = []
    try:
        assoc = ae.associate("127.0.0.1", region.hub.dicom_port, ae_title=FED_AE)
        assert assoc.is_established
        try:
            model = sc.StudyRootQueryRetrieveInformationModelFind
            for status, answer in assoc.send_c_find(identifier, model):
                if status.Status in (0xFF00, 0xFF01):
                    assert answer is not None
                    if held_when_first is None:
                        held_when_first = answered.is_set()
                        release.set()
                    found.append((str(answer.StudyInstanceUID), str(answer.RetrieveAETitle)))
                else:
                    assert status.Status == 0x0000
        finally:
            assoc.release()
    finally:
        release.set()
        server.shutdown()
        region.hub.cli("nodes", "remove", "HELD")
    assert held_when_first is False  # streamed: not collected before the first response
    uids = [uid for uid, _ in found]
    assert len(uids) == len(set(uids)) == 8  # the 7 of the region and the held one, once each
    assert (held_study, "HELD") in found
    assert (region.studies["c"], "ORTH_C") in found


def test_qido_includeremote_returns_the_union_with_sources(region: Region) -> None:
    url = f"{region.hub.url}/dicom-web/studies"
    params = {"StudyDate": "20240301-20240331", "includeremote": "true"}
    response = httpx.get(url, params=params, timeout=30)
    assert response.status_code == 200, response.text
    assert "Warning" not in response.headers
    found = {
        r["0020000D"]["Value"][0]: (r["00080054"]["Value"], r["00080056"]["Value"][0])
        for r in response.json()
    }
    s = region.studies
    assert len(found) == 7 and response.headers["X-Total-Count"] == "7"
    assert found[s["shared"]] == ([HUB_AE, "ORTH_A"], "ONLINE")
    assert found[s["c"]] == (["ORTH_C"], "NEARLINE")
    remote = next(r for r in response.json() if r["0020000D"]["Value"][0] == s["b"])
    assert remote["00100020"]["Value"] == ["PAT-B"]
    assert "00081190" not in remote  # no Retrieve URL before it is pulled

    plain = httpx.get(url, params={"StudyDate": "20240301-20240331"}, timeout=30)
    assert {r["0020000D"]["Value"][0] for r in plain.json()} == {s["hub"], s["shared"]}
    paged = httpx.get(url, params={**params, "limit": "2", "offset": "1"}, timeout=30)
    assert len(paged.json()) == 2 and "additional results" in paged.headers["Warning"]
    bad = httpx.get(url, params={"includeremote": "maybe"}, timeout=30)
    assert bad.status_code == 400 and "includeremote" in bad.json()["detail"]


def _status_of_find(identifier: Dataset, port: int) -> list[Dataset]:
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(sc.PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=FED_AE)
    assert assoc.is_established
    model = (
        sc.PatientRootQueryRetrieveInformationModelFind
        if identifier.QueryRetrieveLevel == "PATIENT"
        else sc.StudyRootQueryRetrieveInformationModelFind
    )
    try:
        return [status for status, _ in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_malformed_federated_identifier_gets_a_failure_with_a_comment(region: Region) -> None:
    bad_date = Dataset()
    bad_date.QueryRetrieveLevel = "STUDY"
    bad_date.StudyDate = "2024-03-15"
    bad_date.StudyInstanceUID = ""
    statuses = _status_of_find(bad_date, region.hub.dicom_port)
    assert len(statuses) == 1
    assert statuses[0].Status == 0xA900
    assert "StudyDate" in statuses[0].ErrorComment

    patient = Dataset()
    patient.QueryRetrieveLevel = "PATIENT"
    patient.PatientID = ""
    statuses = _status_of_find(patient, region.hub.dicom_port)
    assert statuses[0].Status == 0xA900
    assert "PATIENT level" in statuses[0].ErrorComment


@pytest.fixture
def storescp(region: Region, tmp_path: Path) -> Iterator[Path]:
    """dcmtk storescp registered in the hub as node STORESCP (role destination)."""
    port, outdir = free_port(), tmp_path / "received"
    outdir.mkdir()
    command = [dcmtk("storescp"), "+xa", "-aet", "STORESCP", "-od", str(outdir), str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, what="storescp")
    region.hub.cli("nodes", "add", "STORESCP", "127.0.0.1", str(port), "--role", "destination")
    yield outdir
    process.terminate()
    process.wait(timeout=10)


def hub_blobs(region: Region, study: str) -> dict[str, bytes]:
    """SOP Instance UID -> stored file of every instance of ``study`` in the hub."""
    data_dir = region.hub.data_dir
    keys = study_blob_keys(data_dir, study)
    return {uid: blob_of(data_dir, key).read_bytes() for uid, key in keys.items()}


def jobs(region: Region, study: str) -> list[dict[str, object]]:
    response = httpx.get(f"{region.hub.url}/api/retrieve", params={"study": study}, timeout=10)
    assert response.status_code == 200
    return list(response.json())


def test_movescu_through_the_hub_pulls_a_study_only_b_holds_byte_identical(
    region: Region, storescp: Path
) -> None:
    study = region.studies["b"]
    command = [dcmtk("movescu"), "-v", "-S", "-aet", "MOVESCU", "-aec", HUB_AE]
    command += ["-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY"]
    command += ["-k", f"StudyInstanceUID={study}", "127.0.0.1", str(region.hub.dicom_port)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    # One Pending per instance sent, and before them at least one while the hub pulled.
    assert output.count("(Pending)") > len(region.files["b"]), output
    received = {sop_uid(p.read_bytes()): p.read_bytes() for p in storescp.iterdir()}
    uploaded = {sop_uid(f): f for f in region.files["b"]}
    assert received.keys() == uploaded.keys()  # 3 CT + 1 JPEG Lossless NM
    for uid, original in uploaded.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(original)
    stored = hub_blobs(region, study)
    assert {uid: dataset_bytes(data) for uid, data in stored.items()} == {
        uid: dataset_bytes(data) for uid, data in received.items()
    }
    [job] = jobs(region, study)
    assert (job["state"], job["received"], job["expected"], job["node"]) == ("done", 4, 4, "ORTH_B")

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert len(jobs(region, study)) == 1  # held now: served without a second pull


def test_concurrent_retrieve_requests_make_one_job(region: Region) -> None:
    study = region.studies["a_api"]
    url = f"{region.hub.url}/api/retrieve"
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(url, json={"study": study}, timeout=30), (1, 2))
        )
    assert sorted(a.status_code for a in answers) == [200, 202]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    job_id = ids.pop()
    assert answers[0].headers["Location"] == f"/api/retrieve/{job_id}"

    def finished() -> bool:
        state = httpx.get(f"{url}/{job_id}", timeout=10).json()["state"]
        return state in ("done", "failed")

    wait_until(finished, timeout=60, what="retrieve job")
    job = httpx.get(f"{url}/{job_id}", timeout=10).json()
    assert (job["state"], job["received"], job["expected"], job["node"]) == ("done", 3, 3, "ORTH_A")
    assert len(jobs(region, study)) == 1

    again = httpx.post(url, json={"study": study, "node": "ORTH_A"}, timeout=30)  # idempotent
    assert again.status_code == 202
    wait_until(lambda: jobs(region, study)[0]["state"] == "done", timeout=60, what="second job")
    qido = httpx.get(f"{region.hub.url}/dicom-web/studies", params={"StudyInstanceUID": study})
    assert qido.json()[0]["00201208"]["Value"] == [3]  # stored once


def test_retrieve_api_errors(region: Region) -> None:
    url = f"{region.hub.url}/api/retrieve"
    unknown = httpx.post(url, json={"study": "1.2.3.999999"}, timeout=30)
    assert unknown.status_code == 404 and "1.2.3.999999" in unknown.json()["detail"]
    bad = httpx.post(url, json={"study": "1.2.abc"}, timeout=30)
    assert bad.status_code == 400
    node = httpx.post(url, json={"study": "1.2.3", "node": "NOPE"}, timeout=30)
    assert node.status_code == 404
    assert httpx.get(f"{url}/999999", timeout=10).status_code == 404


def test_cli_find_and_retrieve(region: Region) -> None:
    found = region.hub.cli("federation", "find", "StudyDate=20240301-20240331", "PatientID=PAT-A*")
    assert "ORTH_A" in found.stdout and "NEARLINE" in found.stdout  # the table
    assert "unavailable" not in found.stdout
    listed = region.hub.cli("federation", "find", "PatientID=PAT-*", "--json")
    document = json.loads(listed.stdout)
    a_cli = region.studies["a_cli"]
    where = {m["uid"]: (m["where"], m["availability"], m["PatientID"]) for m in document["matches"]}
    assert where[a_cli] == (["ORTH_A"], "NEARLINE", "PAT-A_CLI")
    assert where[region.studies["shared"]][0] == [HUB_AE, "ORTH_A"]
    assert document["unavailable"] == []

    pulled = region.hub.cli("federation", "retrieve", a_cli)  # the PACS is found
    assert "done, 3 instance(s)" in pulled.stdout
    listed = region.hub.cli("federation", "find", f"StudyInstanceUID={a_cli}", "--json")
    assert json.loads(listed.stdout)["matches"][0]["where"] == [HUB_AE, "ORTH_A"]
    listed = region.hub.cli("federation", "jobs", "--study", a_cli)
    assert "done" in listed.stdout
    bad = region.hub.cli("federation", "find", "NotAKeyword=1", check=False)
    assert bad.returncode == 2


def test_a_query_by_ins_asks_each_pacs_for_its_own_local_id(region: Region, tmp_path: Path) -> None:
    """One patient, A-77 at establishment A and B-88 at B, linked by INS in the hub;
    C knows another person as A-77. A regional query finds every study at the hub, at A
    (as A-77) and at B (as B-88), and asks nothing of C."""
    hub = region.hub
    for code, pacs in (("EST_A", "ORTH_A"), ("EST_B", "ORTH_B"), ("EST_C", "ORTH_C")):
        issuer = f"ISS_{code[-1]}"
        hub.cli("establishments", "add", code, f"Hospital {code[-1]}", "--issuer", issuer)
        port = str(region.pacs[pacs].dicom_port)
        hub.cli("nodes", "add", pacs, "127.0.0.1", port, "--establishment", code, "--role", "pacs")
    body = "1620375056" + "123"
    ins = body + nir_key(body)
    date = {"date": "20230101"}
    at_hub_a, files = make_study("A-77", issuer="ISS_A", ins=ins, **date)
    _import(hub, tmp_path / "a", files)
    at_hub_b, files = make_study("B-88", issuer="ISS_B", ins=ins, **date)
    _import(hub, tmp_path / "b", files)
    expected = {at_hub_a: [HUB_AE], at_hub_b: [HUB_AE]}
    for pacs, patient_id in (("ORTH_A", "A-77"), ("ORTH_B", "B-88"), ("ORTH_C", "A-77")):
        study, files = make_study(patient_id, **date)  # the PACS store no issuer, no INS
        for data in files:
            region.pacs[pacs].api.upload(data)
        if pacs != "ORTH_C":
            expected[study] = [pacs]

    params = {"PatientID": ins, "IssuerOfPatientID": "ASIP-SANTE-INS-NIR"}
    answer = httpx.get(
        f"{hub.url}/dicom-web/studies", params={**params, "includeremote": "true"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    found = {r["0020000D"]["Value"][0]: r["00080054"]["Value"] for r in answer.json()}
    assert found == expected
    keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "RetrieveAETitle"]
    keys += [f"PatientID={ins}", "IssuerOfPatientID=ASIP-SANTE-INS-NIR"]
    answers, _, _ = findscu(region, keys, tmp_path / "fed")
    assert {uid: where for uid, (where, _) in _where(answers).items()} == expected


def test_getscu_through_the_hub_pulls_then_gets_a_study_only_a_holds(
    region: Region, tmp_path: Path
) -> None:
    study = region.studies["a"]
    command = [dcmtk("getscu"), "-S", "-aet", "GETSCU", "-aec", HUB_AE, "-od", str(tmp_path)]
    command += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    done = subprocess.run(
        [*command, "127.0.0.1", str(region.hub.dicom_port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    received = {sop_uid(p.read_bytes()): p.read_bytes() for p in tmp_path.iterdir()}
    uploaded = {sop_uid(f): f for f in region.files["a"]}
    assert received.keys() == uploaded.keys()
    for uid, original in uploaded.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(original)
    assert [job["state"] for job in jobs(region, study)] == ["done"]


def test_two_processes_retrieving_one_study_share_one_job(region: Region) -> None:
    """Two CLI processes ask for one study held by a PACS that never answers (so the
    first pull is surely running when the second asks): one job, one failure reason."""
    server, stop = _silent_peer()
    port = str(server.getsockname()[1])
    hub, study = region.hub, generate_uid()
    hub.cli("nodes", "add", "SLOW", "127.0.0.1", port, "--role", "pacs")
    command = [sys.executable, "-m", "pacs_hub.cli", "federation", "retrieve", study]
    env = {**hub.env, "PACS_HUB_ACSE_TIMEOUT": "4", "COLUMNS": "200"}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*command, "--node", "SLOW"], env=env, stdout=subprocess.PIPE, text=True
        )

    try:
        runs = [start()]
        wait_until(lambda: len(jobs(region, study)) == 1, timeout=20, what="first job")
        runs.append(start())
        outputs = [run.communicate(timeout=60)[0] for run in runs]
    finally:
        stop.set()
        server.close()
        hub.cli("nodes", "add", "SLOW", "127.0.0.1", port, "--role", "destination")
    assert [run.returncode for run in runs] == [1, 1]
    [job] = jobs(region, study)
    said = {line for out in outputs for line in out.splitlines() if "retrieve job" in line}
    assert said == {f"error: retrieve job {job['id']} failed: {job['error']}"}
    assert job["state"] == "failed" and "SLOW" in str(job["error"])


def test_a_pacs_that_cannot_move_to_the_hub_is_pulled_by_c_get(
    region: Region, tmp_path: Path
) -> None:
    peer = start_orthanc(tmp_path / "orth_d", aet="ORTH_D")  # knows no hub: C-MOVE 0xA801
    hub, port = region.hub, str(peer.dicom_port)
    try:
        hub.cli("nodes", "add", "ORTH_D", "127.0.0.1", port, "--role", "pacs")
        study, files = make_study("PAT-D", date="20220101")
        files.append(jpeg_instance(study, "PAT-D", date="20220101"))
        for data in files:
            peer.api.upload(data)
        url = f"{hub.url}/api/retrieve"
        started = httpx.post(url, json={"study": study, "node": "ORTH_D"}, timeout=30)
        assert started.status_code == 202
        job_url = f"{url}/{started.json()['id']}"
        wait_until(
            lambda: httpx.get(job_url, timeout=10).json()["state"] in ("done", "failed"),
            timeout=60,
            what="C-GET job",
        )
        job = httpx.get(job_url, timeout=10).json()
        assert (job["state"], job["received"], job["expected"], job["error"]) == ("done", 4, 4, "")
        stored = {uid: dataset_bytes(data) for uid, data in hub_blobs(region, study).items()}
        assert stored == {sop_uid(f): dataset_bytes(f) for f in files}  # JPEG kept as is
    finally:
        hub.cli("nodes", "add", "ORTH_D", "127.0.0.1", port, "--role", "destination")
        peer.stop()


def _silent_peer() -> tuple[socket.socket, threading.Event]:
    """A TCP listener that accepts and never answers (a hung PACS)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return server, stop


def test_a_stopped_or_silent_pacs_never_blocks_the_answer(region: Region, tmp_path: Path) -> None:
    region.pacs["ORTH_C"].stop()
    server, stop = _silent_peer()
    port = str(server.getsockname()[1])
    region.hub.cli("nodes", "add", "SILENT", "127.0.0.1", port, "--role", "pacs")
    try:
        answers, _, elapsed = findscu(region, STUDY_KEYS, tmp_path / "fed")
        where = _where(answers)
        assert elapsed < TIMEOUT + 3
        assert region.studies["c"] not in where
        assert where[region.studies["b"]][0][-1] == "ORTH_B"
        s = region.studies
        expected = {s[k] for k in ("hub", "shared", "a", "a_api", "a_cli", "b")}
        assert set(where) == expected, [jobs(region, uid) for uid in set(where) - expected]
        log = region.log()
        assert "answered without ORTH_C, SILENT" in log

        start = time.monotonic()
        params = {"StudyDate": "20240301-20240331", "includeremote": "true"}
        qido = httpx.get(f"{region.hub.url}/dicom-web/studies", params=params, timeout=30)
        assert time.monotonic() - start < TIMEOUT + 3
        assert len(qido.json()) == 6
        warning = qido.headers["Warning"]
        assert "Sources unavailable: ORTH_C" in warning and "SILENT" in warning

        index = region.hub.data_dir / "index.sqlite3"
        with sqlite3.connect(index, timeout=30) as conn:  # as the health check finds it
            conn.execute(
                "UPDATE nodes SET health_status = 'down', down_since = '2026-01-02 03:04:05'"
                " WHERE ae_title = 'SILENT'"
            )
        start = time.monotonic()
        qido = httpx.get(f"{region.hub.url}/dicom-web/studies", params=params, timeout=30)
        assert time.monotonic() - start < TIMEOUT  # a PACS known down is not waited for
        assert "SILENT (down since 2026-01-02 03:04:05 UTC" in qido.headers["Warning"]
        assert len(qido.json()) == 6
    finally:
        stop.set()
        server.close()
        region.hub.cli("nodes", "remove", "SILENT")


def test_a_job_whose_owner_died_is_abandoned_then_a_new_one_is_claimed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, acse_timeout=0.1, dimse_timeout=0.1, network_timeout=0.1)
    database = Database(settings.index_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    with database.session() as session:
        session.add(Node(ae_title="GONE", host="127.0.0.1", port=1, created_at=now))
    node = pacs_node(database, "GONE")
    study = generate_uid()
    first, created = claim_job(database, study, node, "on-demand")
    assert created
    assert claim_job(database, study, node, "on-demand") == (first, False)  # single flight
    with database.session() as session:  # its owner started it, then died
        session.execute(update(RetrieveJob).values(state="running", received=2, expected=5))

    start = time.monotonic()
    job = wait_for_job(settings, database, first)
    assert stale_after(settings) <= time.monotonic() - start < stale_after(settings) + 5
    assert job.state == "failed" and job.error.startswith("abandoned")
    second, created = claim_job(database, study, node, "on-demand")
    assert created and second != first
    database.dispose()
