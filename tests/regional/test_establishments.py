"""Establishments and nodes (issue 5): CLI and admin API, unknown callers, health, issuers.

One hub for the module, as deployed in a region: unknown callers refused
(PS3.8 9.3.4) and a C-ECHO health check every second. Peers are real: dcmtk's
echoscu, storescu and findscu (by absolute path) and Debian's Orthanc as an
establishment PACS. Each test uses its own codes and AE titles.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.blobs import blob_of
from tests.conftest import Hub, dcmtk, start_hub, wait_until
from tests.peers import start_orthanc

LOOPBACK = "127.0.0.1"
DEAD_PORT = "9"  # discard: nothing listens there on a test machine


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(
        tmp_path_factory.mktemp("regional") / "data",
        PACS_HUB_UNKNOWN_CALLERS="refuse",
        PACS_HUB_HEALTH_CHECK_INTERVAL="1",
    )
    yield running
    running.stop()


def hub_log(hub: Hub) -> str:
    return (hub.data_dir.parent / f"hub-{hub.http_port}.log").read_text(errors="replace")


def echoscu(hub: Hub, calling: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", calling, "-aec", hub.ae_title, LOOPBACK, str(hub.dicom_port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def api(hub: Hub, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{hub.url}/api{path}", timeout=30, **kwargs)


# -- CLI ------------------------------------------------------------------------------


def test_establishments_cli_crud_and_errors(hub: Hub) -> None:
    added = hub.cli(
        "establishments",
        "add",
        "CLI1",
        "CHU Cli",
        "--issuer",
        "CLI1_IPP",
        "--default-issuer",
        "CLI1_PID",
    )
    assert "CLI1" in added.stdout
    shown = hub.cli("establishments", "show", "CLI1").stdout
    assert "CHU Cli" in shown and "CLI1_IPP" in shown and "CLI1_PID" in shown

    again = hub.cli("establishments", "add", "CLI1", "Other", check=False)
    assert again.returncode == 2 and "exists" in again.stdout

    taken = hub.cli(
        "establishments", "add", "CLI2", "Clinique", "--issuer", "CLI1_IPP", check=False
    )
    assert taken.returncode == 2 and "belongs to CLI1" in taken.stdout
    missing = hub.cli("establishments", "show", "CLI2", check=False)
    assert missing.returncode == 2 and "no establishment" in missing.stdout  # nothing half-made

    unknown = hub.cli(
        "nodes", "add", "CLI_CT", LOOPBACK, "104", "--establishment", "NOPE", check=False
    )
    assert unknown.returncode == 2 and "no establishment" in unknown.stdout
    assert "CLI_CT" not in hub.cli("nodes", "list").stdout
    bad_role = hub.cli("nodes", "add", "CLI_CT", LOOPBACK, "104", "--role", "robot", check=False)
    assert bad_role.returncode == 2 and "role" in bad_role.stdout

    # By name as well as by code; the node shows its establishment and role.
    hub.cli(
        "nodes",
        "add",
        "CLI_CT",
        LOOPBACK,
        "104",
        "--establishment",
        "CHU Cli",
        "--role",
        "modality",
    )
    listed = next(line for line in hub.cli("nodes", "list").stdout.splitlines() if "CLI_CT" in line)
    assert "CLI1" in listed and "modality" in listed
    assert "CLI_CT" in hub.cli("establishments", "show", "CLI1").stdout

    busy = hub.cli("establishments", "remove", "CLI1", check=False)
    assert busy.returncode == 2 and "node" in busy.stdout
    hub.cli("nodes", "remove", "CLI_CT")
    hub.cli("establishments", "remove", "CLI1")
    assert "CLI1" not in hub.cli("establishments", "list").stdout
    # Its issuers are free again.
    hub.cli("establishments", "add", "CLI2", "Clinique", "--issuer", "CLI1_IPP")
    assert "CLI1_IPP" in hub.cli("establishments", "show", "CLI2").stdout


def test_every_command_explains_itself(hub: Hub) -> None:
    for command in (
        ["establishments"],
        ["establishments", "add"],
        ["nodes", "add"],
        ["nodes", "health"],
    ):
        text = hub.cli(*command, "--help").stdout
        assert "Usage" in text and len(text) > 200, command


# -- HTTP admin API -------------------------------------------------------------------


def test_establishments_and_nodes_api(hub: Hub) -> None:
    body = {"code": "API1", "name": "CH Api", "default_issuer": "API1_PID", "issuers": ["API1_IPP"]}
    created = api(hub, "POST", "/establishments", json=body)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/establishments/API1"
    assert sorted(created.json()["issuers"]) == ["API1_IPP", "API1_PID"]  # the default is owned

    duplicate = api(hub, "POST", "/establishments", json=body)
    assert duplicate.status_code == 409
    assert duplicate.headers["content-type"].startswith("application/problem+json")
    assert "API1" in duplicate.json()["detail"]
    owned = api(
        hub, "POST", "/establishments", json={"code": "API2", "name": "B", "issuers": ["API1_IPP"]}
    )
    assert owned.status_code == 409 and "belongs to API1" in owned.json()["detail"]
    assert api(hub, "GET", "/establishments/API2").status_code == 404
    assert api(hub, "POST", "/establishments", json={"code": "a b", "name": "x"}).status_code == 422

    changed = api(
        hub,
        "PATCH",
        "/establishments/API1",
        json={"name": "CH Api 2", "default_issuer": "API1_NEW"},
    )
    assert changed.status_code == 200
    assert changed.json()["name"] == "CH Api 2" and "API1_NEW" in changed.json()["issuers"]
    assert any(e["code"] == "API1" for e in api(hub, "GET", "/establishments").json())

    node = {"ae_title": "API_WS", "host": LOOPBACK, "port": 104, "role": "workstation"}
    nowhere = api(hub, "POST", "/nodes", json={**node, "establishment": "NOPE"})
    assert nowhere.status_code == 404
    assert api(hub, "POST", "/nodes", json={**node, "role": "robot"}).status_code == 400
    made = api(hub, "POST", "/nodes", json={**node, "establishment": "API1"})
    assert made.status_code == 201, made.text
    assert made.json()["establishment"] == "API1" and made.json()["role"] == "workstation"
    assert api(hub, "POST", "/nodes", json=node).status_code == 409
    assert api(hub, "GET", "/establishments/API1").json()["nodes"] == ["API_WS"]
    health = api(hub, "GET", "/nodes/API_WS/health").json()
    assert health["status"] == "unknown" and health["latency_ms"] is None  # not a pacs: no C-ECHO
    assert [
        n["ae_title"] for n in api(hub, "GET", "/nodes", params={"role": "workstation"}).json()
    ] == ["API_WS"]
    assert api(hub, "GET", "/nodes/NOBODY/health").status_code == 404

    assert api(hub, "DELETE", "/establishments/API1").status_code == 409
    moved = api(hub, "PATCH", "/nodes/API_WS", json={"establishment": "", "port": 105})
    assert (
        moved.status_code == 200
        and moved.json()["establishment"] == ""
        and moved.json()["port"] == 105
    )
    assert api(hub, "DELETE", "/establishments/API1").status_code == 204
    assert api(hub, "GET", "/establishments/API1").status_code == 404
    # A node that a routing rule forwards to cannot go away under it.
    with sqlite3.connect(hub.data_dir / "index.sqlite3", timeout=30) as db:
        db.execute(
            "INSERT INTO routing_rules (name, conditions, destination_node_pk, enabled, created_at)"
            " SELECT 'api-test-rule', '{}', id, 1, '2026-01-01 00:00:00' FROM nodes"
            " WHERE ae_title = 'API_WS'"
        )
    in_use = api(hub, "DELETE", "/nodes/API_WS")
    assert in_use.status_code == 409 and "routing" in in_use.json()["detail"]
    assert api(hub, "GET", "/nodes/API_WS").status_code == 200
    with sqlite3.connect(hub.data_dir / "index.sqlite3", timeout=30) as db:
        db.execute("DELETE FROM routing_rules WHERE name = 'api-test-rule'")
    assert api(hub, "DELETE", "/nodes/API_WS").status_code == 204
    assert api(hub, "GET", "/nodes/API_WS").status_code == 404


# -- Unknown callers ------------------------------------------------------------------


def test_unknown_caller_refused_then_accepted_once_registered(hub: Hub) -> None:
    refused = echoscu(hub, "STRANGER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr, refused.stderr
    assert "Rejected Permanent" in refused.stderr

    hub.cli("establishments", "add", "CALL1", "Hôpital Appelant")
    hub.cli(
        "nodes",
        "add",
        "STRANGER",
        LOOPBACK,
        "104",
        "--establishment",
        "CALL1",
        "--role",
        "workstation",
    )
    # No restart: the gateway's registry snapshot is a few seconds old at most.
    wait_until(lambda: echoscu(hub, "STRANGER").returncode == 0, timeout=15, what="echo accepted")
    wait_until(
        lambda: "association from STRANGER (establishment CALL1)" in hub_log(hub),
        timeout=5,
        what="the call attributed to CALL1 in the log",
    )
    hub.cli("nodes", "remove", "STRANGER")
    wait_until(lambda: echoscu(hub, "STRANGER").returncode != 0, timeout=15, what="refused again")


# -- Health ---------------------------------------------------------------------------


def health(hub: Hub, ae_title: str) -> dict[str, Any]:
    answer = api(hub, "GET", f"/nodes/{ae_title}/health")
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_health_of_a_live_then_stopped_then_restarted_pacs(hub: Hub, tmp_path: Path) -> None:
    peer = start_orthanc(tmp_path / "orthanc", aet="HEALTH_PACS")
    try:
        hub.cli("establishments", "add", "HLT1", "CH Santé")
        hub.cli(
            "nodes", "add", "HEALTH_PACS", LOOPBACK, str(peer.dicom_port), "--establishment", "HLT1"
        )
        hub.cli("nodes", "add", "HEALTH_DEAD", LOOPBACK, DEAD_PORT, "--establishment", "HLT1")
        wait_until(lambda: health(hub, "HEALTH_PACS")["status"] == "up", timeout=20, what="up")
        up = health(hub, "HEALTH_PACS")
        assert up["latency_ms"] > 0 and up["down_since"] is None and up["checked_at"]
        wait_until(lambda: health(hub, "HEALTH_DEAD")["status"] == "down", timeout=20, what="down")

        peer.stop()
        wait_until(lambda: health(hub, "HEALTH_PACS")["status"] == "down", timeout=30, what="down")
        down = health(hub, "HEALTH_PACS")
        assert down["down_since"] and down["latency_ms"] is None
        # Later checks keep the start of the outage.
        wait_until(
            lambda: health(hub, "HEALTH_PACS")["checked_at"] != down["checked_at"], timeout=20
        )
        assert health(hub, "HEALTH_PACS")["down_since"] == down["down_since"]
        shown = hub.cli("nodes", "health").stdout
        row = next(line for line in shown.splitlines() if "HEALTH_PACS" in line)
        assert "down" in row and "HLT1" in row

        peer = start_orthanc(tmp_path / "orthanc", aet="HEALTH_PACS", dicom_port=peer.dicom_port)
        wait_until(
            lambda: health(hub, "HEALTH_PACS")["status"] == "up", timeout=30, what="up again"
        )
        assert health(hub, "HEALTH_PACS")["down_since"] is None
        # Transitions are logged once, not at every check (one check per second here).
        log = hub_log(hub)
        assert log.count("node HEALTH_PACS (establishment HLT1) is down") == 1
        assert log.count("node HEALTH_PACS (establishment HLT1) is up") == 2
        assert log.count("node HEALTH_DEAD (establishment HLT1) is down") == 1
        assert "Connection refused" not in log  # failed checks do not flood the log
    finally:
        peer.stop()
        for ae in ("HEALTH_PACS", "HEALTH_DEAD"):
            hub.cli("nodes", "remove", ae, check=False)


# -- Default issuer -------------------------------------------------------------------


def _instance(patient_id: str, issuer: str | None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientName = "Martin^Anne"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64, dtype="<u2").tobytes()
    return ds


def findscu(hub: Hub, calling: str, out: Path, *keys: str) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = [dcmtk("findscu"), "-S", "-aet", calling, "-aec", hub.ae_title, "-X", "-od", str(out)]
    for key in ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys):
        args += ["-k", key]
    done = subprocess.run(
        [*args, LOOPBACK, str(hub.dicom_port)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_instance_without_issuer_gets_the_default_issuer_of_its_establishment(
    hub: Hub, tmp_path: Path
) -> None:
    hub.cli("establishments", "add", "ISS1", "CH Émetteur", "--default-issuer", "ISS1_IPP")
    hub.cli(
        "nodes", "add", "ISS_CT", LOOPBACK, "104", "--establishment", "ISS1", "--role", "modality"
    )
    hub.cli("nodes", "add", "ISS_WS", LOOPBACK, "104", "--role", "workstation")
    bare, own = _instance("ISSPAT-1", None), _instance("ISSPAT-1", "ELSEWHERE")
    files = []
    for name, ds in (("bare.dcm", bare), ("own.dcm", own)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        files.append(str(tmp_path / name))
    wait_until(lambda: echoscu(hub, "ISS_CT").returncode == 0, timeout=15, what="ISS_CT accepted")
    subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "ISS_CT",
            "-aec",
            hub.ae_title,
            LOOPBACK,
            str(hub.dicom_port),
            *files,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wait_until(lambda: echoscu(hub, "ISS_WS").returncode == 0, timeout=15, what="ISS_WS accepted")

    found = findscu(
        hub, "ISS_WS", tmp_path / "f1", "PatientID=ISSPAT-1", "IssuerOfPatientID=ISS1_IPP"
    )
    assert [ds.StudyInstanceUID for ds in found] == [bare.StudyInstanceUID]
    assert found[0].IssuerOfPatientID == "ISS1_IPP"
    # An instance that names its issuer keeps it.
    kept = findscu(
        hub, "ISS_WS", tmp_path / "f2", "PatientID=ISSPAT-1", "IssuerOfPatientID=ELSEWHERE"
    )
    assert [ds.StudyInstanceUID for ds in kept] == [own.StudyInstanceUID]

    qido = httpx.get(
        f"{hub.url}/dicom-web/studies",
        params={"PatientID": "ISSPAT-1", "IssuerOfPatientID": "ISS1_IPP"},
        timeout=30,
    )
    assert qido.status_code == 200
    assert [s["0020000D"]["Value"][0] for s in qido.json()] == [bare.StudyInstanceUID]

    # The stored bytes are what was sent: no issuer was written into the object.
    uri = f"file:{hub.data_dir / 'index.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        (key,) = db.execute(
            "SELECT blob_key FROM instances WHERE sop_instance_uid = ?", (bare.SOPInstanceUID,)
        ).fetchone()
    stored = pydicom.dcmread(io.BytesIO(blob_of(hub.data_dir, key).read_bytes()))
    assert "IssuerOfPatientID" not in stored and stored.PatientID == "ISSPAT-1"
    assert stored.PixelData == bare.PixelData
