"""A destruction on a running hub with its access policy on: studies stored by a node
of the establishment with dcmtk's storescu, the studies due listed, the destruction
proposed and executed by the operator's ``pacs-hub archive`` commands (processes of
their own, as an operator runs them) and signed by signed-in users over the API (a
regional administrator as director, the establishment's administrator as DIM) and at the
command line with the user's password (the archives' visa); then the study is gone for
every DICOMweb and DICOM reader and the other one is whole.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import Hub, dcmtk, start_hub
from tests.regional.study_factory import make_study, storescu
from tests.trust.test_consent_shares import PASSWORD, login


def patients_found(hub: Hub, patient_id: str) -> int:
    """PATIENT-level C-FIND answers (Patient Root) for ``patient_id``, from node CT_A."""
    args = [dcmtk("findscu"), "-P", "-aet", "CT_A", "-aec", hub.ae_title,
            "-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={patient_id}",
            "-k", "PatientName", "127.0.0.1", str(hub.dicom_port)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return (result.stdout + result.stderr).count("Find Response:")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("destruction")
    hub = start_hub(root / "data", PACS_HUB_AUTH_REQUIRED="true", PACS_HUB_UNKNOWN_CALLERS="refuse")
    try:
        hub.cli("establishments", "add", "ESTA", "Clinique A")
        hub.cli("nodes", "add", "CT_A", "127.0.0.1", "104", "--establishment", "ESTA")
        for name, role in (("dir", "regional-admin"), ("dim", "establishment-admin"),
                           ("arch", "regional-admin"), ("rad", "radiologist")):  # fmt: skip
            hub.cli("users", "add", name, "--role", role, "--establishment", "ESTA",
                    "--password", PASSWORD)  # fmt: skip
        yield hub
    finally:
        hub.stop()


def test_destroyed_by_the_operator_after_three_signatures(hub: Hub, tmp_path: Path) -> None:
    today = datetime.now(UTC).strftime("%Y%m%d")
    old, old_files = make_study(tmp_path / "old", patient_id="PAT-OLD", study_date="19900105")
    new, new_files = make_study(tmp_path / "new", patient_id="PAT-NEW", study_date=today)
    storescu("CT_A", hub.ae_title, hub.dicom_port, old_files + new_files)

    due = json.loads(hub.cli("archive", "retention", "due", "--json").stdout)
    assert [(s["study_instance_uid"], s["retention_end"]) for s in due] == [(old, "20100105")]
    proposed = hub.cli("archive", "destruction", "propose", "--establishment", "ESTA")
    assert "destruction 1 proposed: 1 stud(ies)" in proposed.stdout

    director, dim, rad = login(hub, "dir"), login(hub, "dim"), login(hub, "rad")
    url = "/api/archive/destructions/1/signatures"
    huge = director.post(f"/api/archive/destructions/{2**79}/signatures", json={"capacity": "dim"})
    assert huge.status_code == 400  # not a row id (schemathesis found a 500 here)
    assert huge.headers["content-type"].startswith("application/problem+json")
    refused = rad.post(url, json={"capacity": "director"})
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    signed = director.post(url, json={"capacity": "director"})
    assert signed.status_code == 200 and signed.json()["state"] == "proposed"
    twice = director.post(url, json={"capacity": "dim"})
    assert twice.status_code == 409 and "signed this destruction already" in twice.json()["detail"]
    # the establishment's administrator (not a regional one) signs as its DIM
    by_dim = dim.post(url, json={"capacity": "dim"})
    assert by_dim.status_code == 200 and by_dim.json()["state"] == "proposed"
    early = hub.cli("archive", "destruction", "execute", "1", check=False)
    assert early.returncode == 2 and "only an approved one" in early.stdout
    wrong = hub.cli("archive", "destruction", "sign", "1", "--as", "archives", "--user", "arch",
                    "--reference", "AD-2026-17", "--password", "not it", check=False)  # fmt: skip
    assert wrong.returncode == 2 and "wrong password" in wrong.stdout
    visa = hub.cli("archive", "destruction", "sign", "1", "--as", "archives", "--user", "arch",
                   "--reference", "AD-2026-17", "--password", PASSWORD)  # fmt: skip
    assert "signed as archives by arch: approved" in visa.stdout

    assert director.get(f"/dicom-web/studies/{old}/metadata").status_code == 200
    assert patients_found(hub, "PAT-OLD") == 1
    done = hub.cli("archive", "destruction", "execute", "1", "--json")
    record = json.loads(done.stdout)
    assert record["state"] == "done"
    assert [(s["study_instance_uid"], s["state"]) for s in record["studies"]] == [
        (old, "destroyed")
    ]
    assert {s["capacity"]: s["signer"] for s in record["signatures"]} == {
        "director": "dir", "dim": "dim", "archives": "arch",
    }  # fmt: skip
    assert (hub.data_dir / "archive" / "destructions" / "1.json").exists()

    assert director.get(f"/dicom-web/studies/{old}/metadata").status_code == 404
    assert director.get("/dicom-web/studies", params={"StudyInstanceUID": old}).json() == []
    assert director.get(f"/dicom-web/studies/{new}/metadata").status_code == 200
    assert patients_found(hub, "PAT-OLD") == 0  # no study left: no longer a match
    assert patients_found(hub, "PAT-NEW") == 1
    assert director.get("/api/archive/destructions/1").json()["state"] == "done"
    verified = hub.cli("archive", "verify", "--json")
    assert json.loads(verified.stdout)["damaged"] == []
    exported = tmp_path / "audit"
    hub.cli("audit", "export", "--out", str(exported), "--action", "delete")
    (message,) = exported.glob("*-110105.xml")  # DICOM "Study Deleted", schema-checked
    assert old in message.read_text()
    nothing = hub.cli("archive", "retention", "due", "--json")
    assert json.loads(nothing.stdout) == []
