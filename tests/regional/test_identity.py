"""One regional patient identity (issue 5): INS links, trait candidates, merge/unmerge.

One hub for the module; instances are made with pydicom (test INS OID
1.2.250.1.213.1.4.10, NIR key 97 - (N mod 97)) and sent with dcmtk's storescu;
queries go through dcmtk's findscu and QIDO-RS, changes through the admin API and
the ``pacs-hub patients`` CLI. Each test uses its own patients (names, birth dates
and INS), so the tests do not depend on one another.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_hub.dicom.header import parse_header
from pacs_hub.dicom.ins import INS_TEST, identity_traits, nir_key, trait_key, valid_matricule
from pacs_hub.ingest import Ingestor
from pacs_hub.regional import identity_changes, identity_views
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.query import find_studies, parse_query
from tests.conftest import Hub, dcmtk, start_hub
from tests.storage.conftest import database, hot_path_taken, postgres_server  # noqa: F401 (fixtures)

REGIONAL_ISSUER = "PACS_HUB_REGION"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_serial = count(1)


def make_ins(sex: str, birth: str) -> str:
    """A valid test NIR: sex digit, YYMM of ``birth`` (YYYYMMDD), Paris, a serial."""
    body = f"{1 if sex == 'M' else 2}{birth[2:4]}{birth[4:6]}75056{next(_serial):03d}"
    return body + nir_key(body)


def _qualified(patient_id: str, issuer: str, oid: str) -> Dataset:
    item = Dataset()
    item.PatientID = patient_id
    item.IssuerOfPatientID = issuer
    qualifier = Dataset()
    qualifier.UniversalEntityID = oid
    qualifier.UniversalEntityIDType = "ISO"
    item.IssuerOfPatientIDQualifiersSequence = [qualifier]
    return item


def make_instance(
    folder: Path,
    patient_id: str,
    issuer: str,
    name: str,
    *,
    sex: str,
    birth: str,
    ins: str = "",
    ins_as_patient_id: bool = False,
    birth_name: str = "",
) -> tuple[Path, str]:
    """One Secondary Capture instance of a new study; return (file, Study UID).

    The INS goes in the Other Patient IDs Sequence (0010,1002), or, with
    ``ins_as_patient_id``, is the Patient ID itself (issuer ASIP-SANTE-INS-NIR with
    its qualifiers, the local ID then in the Other Patient IDs Sequence).
    """
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.PatientSex = sex
    ds.PatientBirthDate = birth
    if birth_name:
        ds.PatientBirthName = birth_name
    ds.StudyDate = "20260315"
    ds.StudyTime = "101010"
    ds.Modality = "OT"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    if ins and ins_as_patient_id:
        qualified = _qualified(ins, "ASIP-SANTE-INS-NIR", INS_TEST)
        ds.PatientID = ins
        ds.IssuerOfPatientID = "ASIP-SANTE-INS-NIR"
        ds.IssuerOfPatientIDQualifiersSequence = qualified.IssuerOfPatientIDQualifiersSequence
        local = Dataset()
        local.PatientID = patient_id
        local.IssuerOfPatientID = issuer
        ds.OtherPatientIDsSequence = [local]
    elif ins:
        ds.OtherPatientIDsSequence = [_qualified(ins, "ASIP-SANTE-INS-NIR", INS_TEST)]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


def maker(folder: Path, sex: str, birth: str, **common: Any) -> Callable[..., tuple[Path, str]]:
    """``make_instance`` for one person: ``(patient_id, issuer, name, **more)``, the
    sex, birth date and ``common`` (e.g. ``ins``) given here."""
    return partial(make_instance, folder, sex=sex, birth=birth, **common)


def storescu(hub: Hub, *files: Path) -> None:
    args = [dcmtk("storescu"), "-aet", "IDENTITY_SCU", "-aec", hub.ae_title, "127.0.0.1"]
    result = subprocess.run(
        [*args, str(hub.dicom_port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def findscu_studies(hub: Hub, out: Path, *keys: str, root: str = "-S") -> set[str]:
    """Study Instance UIDs answered by dcmtk's findscu at STUDY level."""
    out.mkdir(parents=True, exist_ok=True)
    args = [dcmtk("findscu"), root, "-aet", "IDENTITY_SCU", "-aec", hub.ae_title, "-X"]
    args += ["-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(hub.dicom_port)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return {str(pydicom.dcmread(p).StudyInstanceUID) for p in out.glob("rsp*.dcm")}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(tmp_path_factory.mktemp("identity") / "data")
    yield running
    running.stop()


def api(hub: Hub, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{hub.url}/api{path}", timeout=30, **kwargs)


def regional_of(hub: Hub, patient_id: str, issuer: str) -> dict[str, Any]:
    answer = api(hub, "GET", "/patients", params={"patient_id": patient_id, "issuer": issuer})
    assert answer.status_code == 200, answer.text
    (regional,) = answer.json()
    return dict(regional)


def said(result: subprocess.CompletedProcess[str]) -> str:
    """A command's output with the console's line wrapping undone."""
    return " ".join(result.stdout.split())


def links(view: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (i["patient_id"], i["issuer_of_patient_id"], i["link_method"]) for i in view["identities"]
    }


def test_nir_key_and_traits_normalisation() -> None:
    body = "2800175056123"
    assert valid_matricule(body + nir_key(body))
    assert not valid_matricule(body + f"{(int(nir_key(body)) + 1) % 100:02d}")
    corsica = "180012A012345"
    assert valid_matricule(corsica + nir_key(corsica))
    assert not valid_matricule("28001750561")  # too short
    same = trait_key("Dupont", "Marie-Hélène Claire", "F", "19800101")
    assert same == trait_key("DUPONT", "MARIE-HELENE", "F", "19800101")
    assert same != trait_key("DUPONT", "MARIE", "F", "19800101")
    assert trait_key("DUPONT", "", "F", "19800101") == ""  # a missing trait never matches


@given(st.from_regex(r"[12][0-9]{4}(?:[0-9]{2}|2A|2B)[0-9]{6}", fullmatch=True))
def test_only_the_right_key_makes_a_matricule(body: str) -> None:
    key = nir_key(body)
    assert valid_matricule(body + key)
    assert valid_matricule((body + key).lower())  # 2a/2b are read as 2A/2B
    wrong = [f"{k:02d}" for k in (int(key) + 1, int(key) + 50) if f"{k:02d}" != key]
    assert not any(valid_matricule(body + w[-2:]) for w in wrong)


def test_same_ins_under_local_ids_is_one_regional_patient(hub: Hub, tmp_path: Path) -> None:
    ins = make_ins("F", "19800101")
    new = maker(tmp_path, "F", "19800101")
    files = [
        new("A100", "HOSP-A", "Dupont^Hélène", ins=ins)[0],
        new("B200", "HOSP-B", "DUPONT^HELENE", ins=ins)[0],
        new("C300", "HOSP-C", "Dupont^Hélène", ins=ins, ins_as_patient_id=True)[0],
    ]
    bad_key = ins[:13] + f"{(int(ins[13:]) + 1) % 100:02d}"
    wrong, _ = new("D400", "HOSP-D", "Dupont^Hélène", ins=bad_key)
    storescu(hub, *files, wrong)

    answer = api(hub, "GET", "/patients", params={"ins": ins})
    assert answer.status_code == 200, answer.text
    (regional,) = answer.json()
    assert regional["regional_id"].startswith("RP") and regional["ins"] == ins
    assert regional["ins_oid"] == INS_TEST
    assert links(regional) == {
        ("A100", "HOSP-A", "ins"),
        ("B200", "HOSP-B", "ins"),
        (ins, "ASIP-SANTE-INS-NIR", "ins"),
    }
    assert all(len(i["studies"]) == 1 for i in regional["identities"])
    # Traits are stored as received, never normalised.
    names = {i["patient_id"]: (i["birth_name"], i["given_names"]) for i in regional["identities"]}
    assert names["A100"] == ("Dupont", "Hélène") and names["B200"] == ("DUPONT", "HELENE")
    # An INS with a wrong key is no INS: a regional patient of its own.
    other = regional_of(hub, "D400", "HOSP-D")
    assert other["regional_id"] != regional["regional_id"] and other["ins"] == ""
    assert links(other) == {("D400", "HOSP-D", "new")}
    # The CLI finds the same regional patient; the same instance again changes nothing.
    shown = hub.cli("patients", "find", "--ins", ins, "--json")
    assert [v["regional_id"] for v in json.loads(shown.stdout)] == [regional["regional_id"]]
    storescu(hub, files[0])
    assert api(hub, "GET", "/patients", params={"ins": ins}).json() == [regional]


def test_traits_make_a_candidate_and_accepting_links(hub: Hub, tmp_path: Path) -> None:
    ins = make_ins("F", "19750612")
    new = maker(tmp_path, "F", "19750612")
    a, _ = new("E100", "HOSP-A", "Lefèvre-Martin^Marie-Hélène", ins=ins)
    c, _ = new("E300", "HOSP-C", "Durand^MARIE-HELENE", birth_name="LEFEVRE MARTIN")
    d, _ = new("E400", "HOSP-D", "LEFEVRE-MARTIN^MARIE-HELENE", birth="19750613")
    storescu(hub, a, c, d)
    target = regional_of(hub, "E100", "HOSP-A")

    pending = api(hub, "GET", "/patients/candidates").json()
    mine = [p for p in pending if p["regional_id"] == target["regional_id"]]
    assert [(p["patient_id"], p["issuer_of_patient_id"]) for p in mine] == [("E300", "HOSP-C")]
    assert not any(p["patient_id"] == "E400" for p in pending)  # birth date differs
    assert mine[0]["current_regional_id"] == regional_of(hub, "E300", "HOSP-C")["regional_id"]

    accepted = api(
        hub, "POST", f"/patients/candidates/{mine[0]['id']}/accept", json={"actor": "dr-identito"}
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["regional_id"] == target["regional_id"]
    view = api(hub, "GET", f"/patients/{target['regional_id']}").json()
    assert links(view) == {("E100", "HOSP-A", "ins"), ("E300", "HOSP-C", "traits")}
    again = api(hub, "POST", f"/patients/candidates/{mine[0]['id']}/accept")
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    decided = api(hub, "GET", "/patients/candidates", params={"status": "accepted"}).json()
    assert mine[0]["id"] in {c["id"] for c in decided}
    event = api(hub, "GET", "/patients/events").json()[0]
    assert (event["kind"], event["actor"]) == ("accept", "dr-identito")


def test_queries_by_regional_id_and_ins_return_every_linked_study(hub: Hub, tmp_path: Path) -> None:
    ins = make_ins("M", "19620304")
    new = maker(tmp_path, "M", "19620304")
    a, study_a = new("Q100", "HOSP-A", "Moreau^Luc", ins=ins)
    b, study_b = new("Q200", "HOSP-B", "MOREAU^LUC", ins=ins)
    x, study_x = new("Q100", "HOSP-B", "Autre^Paul")
    storescu(hub, a, b, x)
    regional_id = regional_of(hub, "Q100", "HOSP-A")["regional_id"]

    by_regional = findscu_studies(
        hub, tmp_path / "s", f"PatientID={regional_id}", f"IssuerOfPatientID={REGIONAL_ISSUER}"
    )
    assert by_regional == {study_a, study_b}
    patient_root = findscu_studies(
        hub,
        tmp_path / "p",
        f"PatientID={regional_id}",
        f"IssuerOfPatientID={REGIONAL_ISSUER}",
        root="-P",
    )
    assert patient_root == {study_a, study_b}
    local = findscu_studies(hub, tmp_path / "l", "PatientID=Q100", "IssuerOfPatientID=HOSP-B")
    assert local == {study_x}  # a local issuer still means the local identity only

    for issuer in (INS_TEST, "ASIP-SANTE-INS-NIR"):
        answer = httpx.get(
            f"{hub.url}/dicom-web/studies",
            timeout=30,
            params={"PatientID": ins, "IssuerOfPatientID": issuer},
        )
        assert answer.status_code == 200, answer.text
        assert {s["0020000D"]["Value"][0] for s in answer.json()} == {study_a, study_b}
    production = httpx.get(
        f"{hub.url}/dicom-web/studies",
        timeout=30,
        params={"PatientID": ins, "IssuerOfPatientID": "1.2.250.1.213.1.4.8"},
    )
    assert production.json() == []  # a test INS is not a production one


def _snapshot(hub: Hub, *regional_ids: str) -> list[dict[str, Any]]:
    return [api(hub, "GET", f"/patients/{r}").json() for r in regional_ids]


def test_merge_then_unmerge_restores_the_links(hub: Hub, tmp_path: Path) -> None:
    ins = make_ins("M", "19900101")
    new = maker(tmp_path, "M", "19900101")
    files = [
        new("M100", "HOSP-A", "Petit^Jean", ins=ins)[0],
        new("M200", "HOSP-B", "Petit^Jean", ins=ins)[0],
        new("M300", "HOSP-C", "Petit^Jeannot")[0],
    ]
    storescu(hub, *files)
    target = regional_of(hub, "M100", "HOSP-A")["regional_id"]
    source = regional_of(hub, "M300", "HOSP-C")["regional_id"]
    before = _snapshot(hub, source, target)

    merged = hub.cli("patients", "merge", source, target, "--actor", "dr-merge")
    assert "merged into" in said(merged)
    after = _snapshot(hub, source, target)
    assert after[0]["active"] is False and after[0]["merged_into"] == target
    assert after[0]["identities"] == []
    assert links(after[1]) == {
        ("M100", "HOSP-A", "ins"),
        ("M200", "HOSP-B", "ins"),
        ("M300", "HOSP-C", "new"),
    }
    studies = findscu_studies(
        hub, tmp_path / "f", f"PatientID={source}", f"IssuerOfPatientID={REGIONAL_ISSUER}"
    )
    assert len(studies) == 3  # the merged id answers for its survivor

    event = api(hub, "GET", "/patients/events").json()[0]
    assert (event["kind"], event["actor"]) == ("merge", "dr-merge")
    unmerged = hub.cli("patients", "unmerge", str(event["id"]), "--actor", "dr-merge")
    assert "reverted" in said(unmerged)
    assert _snapshot(hub, source, target) == before
    twice = hub.cli("patients", "unmerge", str(event["id"]), check=False)
    assert twice.returncode == 2 and "reverted" in said(twice)
    assert _snapshot(hub, source, target) == before


def test_two_different_ins_are_never_one_patient(hub: Hub, tmp_path: Path) -> None:
    first, second = make_ins("F", "19851120"), make_ins("F", "19851120")
    new = maker(tmp_path, "F", "19851120")
    a, _ = new("T100", "HOSP-A", "Roux^Anne", ins=first)
    b, _ = new("T200", "HOSP-B", "Roux^Anne", ins=second)
    storescu(hub, a, b)
    one = regional_of(hub, "T100", "HOSP-A")["regional_id"]
    two = regional_of(hub, "T200", "HOSP-B")["regional_id"]
    assert one != two
    before = _snapshot(hub, one, two)
    events_before = api(hub, "GET", "/patients/events").json()[0]["id"]
    # Identical traits but both carry an INS: no candidate either.
    candidates = api(hub, "GET", "/patients/candidates", params={"status": "all"}).json()
    assert not {c["patient_id"] for c in candidates} & {"T100", "T200"}

    merged = api(hub, "POST", "/patients/merge", json={"source": one, "target": two})
    assert merged.status_code == 409
    assert "different INS" in merged.json()["detail"]
    linked = hub.cli("patients", "link", two, "T100", "--issuer", "HOSP-A", check=False)
    assert linked.returncode == 2 and "different INS" in said(linked)
    unknown = api(hub, "POST", "/patients/merge", json={"source": one, "target": "RP99999999"})
    assert unknown.status_code == 404
    assert _snapshot(hub, one, two) == before
    assert api(hub, "GET", "/patients/events").json()[0]["id"] == events_before


def test_reject_then_manual_link_and_its_revert(hub: Hub, tmp_path: Path) -> None:
    new = maker(tmp_path, "F", "20010203")
    first, _ = new("L100", "HOSP-A", "Blanc^Lucie")
    second, _ = new("L200", "HOSP-B", "BLANC^LUCIE")
    storescu(hub, first)
    storescu(hub, second)
    one = regional_of(hub, "L100", "HOSP-A")["regional_id"]
    two = regional_of(hub, "L200", "HOSP-B")["regional_id"]
    (candidate,) = [
        c for c in api(hub, "GET", "/patients/candidates").json() if c["patient_id"] == "L200"
    ]
    assert (candidate["regional_id"], candidate["current_regional_id"]) == (one, two)
    rejected = hub.cli("patients", "candidates", "reject", str(candidate["id"]))
    assert "rejected" in said(rejected)
    pending = api(hub, "GET", "/patients/candidates").json()
    assert candidate["id"] not in {c["id"] for c in pending}
    before = _snapshot(hub, one, two)

    linked = api(
        hub,
        "POST",
        f"/patients/{one}/link",
        json={"patient_id": "L200", "issuer_of_patient_id": "HOSP-B", "actor": "dr-l"},
    )
    assert linked.status_code == 200, linked.text
    after = _snapshot(hub, one, two)
    assert links(after[0]) == {("L100", "HOSP-A", "new"), ("L200", "HOSP-B", "manual")}
    assert (after[1]["active"], after[1]["merged_into"]) == (False, one)

    reverted = api(
        hub, "POST", f"/patients/unmerge/{linked.json()['event_id']}", json={"actor": "dr-l"}
    )
    assert reverted.status_code == 200, reverted.text
    assert _snapshot(hub, one, two) == before
    missing = api(hub, "POST", "/patients/unmerge/999999")
    assert missing.status_code == 404


def test_backfill_links_identities_left_unlinked(hub: Hub, tmp_path: Path) -> None:
    path, _ = make_instance(tmp_path, "K100", "HOSP-K", "Noir^Karl", sex="M", birth="19551010")
    storescu(hub, path)
    # As a row indexed before revision 0003 (or by a crash between two transactions).
    with sqlite3.connect(hub.data_dir / "index.sqlite3", timeout=60) as db:
        changed = db.execute(
            "UPDATE patients SET regional_patient_pk = NULL, link_method = ''"
            " WHERE patient_id = 'K100' AND issuer_of_patient_id = 'HOSP-K'"
        ).rowcount
    assert changed == 1
    unlinked = api(hub, "GET", "/patients", params={"patient_id": "K100", "issuer": "HOSP-K"})
    assert unlinked.json() == []

    assert "1 local identities linked" in said(hub.cli("patients", "backfill"))
    assert links(regional_of(hub, "K100", "HOSP-K")) == {("K100", "HOSP-K", "new")}
    assert "0 local identities linked" in said(hub.cli("patients", "backfill"))


def test_concurrent_ingest_of_one_ins_on_sqlite_and_postgresql(
    database: Database,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """Eight local identities with one INS, ingested at once: one regional patient
    (PostgreSQL serialises per INS with an advisory lock); then merge and unmerge."""
    ingestor = Ingestor(database, BlobStore(tmp_path / "blobs"))
    ins = make_ins("M", "19700707")
    new = maker(tmp_path / "in", "M", "19700707")
    made = [new(f"P{n}", f"HOSP-{n}", "Gros^Marc", ins=ins) for n in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda path: ingestor.ingest(path.read_bytes()), [p for p, _ in made]))
    (regional,) = identity_views.find_by_ins(database, ins)
    assert {i.patient_id for i in regional.identities} == {f"P{n}" for n in range(8)}

    query = parse_query(
        {"PatientID": regional.regional_id, "IssuerOfPatientID": "REGION"}, regional_issuer="REGION"
    )
    with database.reader() as session:
        found = {row.study_instance_uid for row in find_studies(session, query)}
    assert found == {study for _, study in made}

    lone, _ = new("P9", "HOSP-9", "Gros^M")
    ingestor.ingest(lone.read_bytes())
    source = identity_views.regional_of(database, "P9", "HOSP-9")
    assert source is not None
    before = [identity_views.regional_patient(database, r) for r in (source, regional.regional_id)]
    change = identity_changes.merge(database, source, regional.regional_id, "test")
    assert len(identity_views.regional_patient(database, regional.regional_id).identities) == 9
    identity_changes.revert(database, change.event_id, "test")
    after = [identity_views.regional_patient(database, r) for r in (source, regional.regional_id)]
    assert after == before


@pytest.mark.parametrize("as_patient_id", [False, True])
@pytest.mark.parametrize("birth_name", ["", "DUPONT"])
def test_the_ingest_reads_identity_traits_as_pydicom_values_give_them(
    tmp_path: Path, as_patient_id: bool, birth_name: str
) -> None:
    """The header's raw value reader (header._text) and pydicom's values agree on the
    INS and traits, wherever the INS is carried (PS3.3 C.7.1.1)."""
    ins = make_ins("F", "19800214")
    path, _ = make_instance(
        tmp_path,
        "LOC-1",
        "HOSP_A",
        "MARTIN^Marie-Hélène Anne",
        sex="F",
        birth="19800214",
        ins=ins,
        ins_as_patient_id=as_patient_id,
        birth_name=birth_name,
    )
    record = parse_header(path.read_bytes())
    expected = identity_traits(pydicom.dcmread(path))
    assert (record.ins, record.ins_oid) == (ins, INS_TEST) == (expected.ins, expected.ins_oid)
    assert (record.birth_name, record.given_names) == (
        expected.birth_name,
        expected.given_names,
    )
    assert record.given_names == "Marie-Hélène Anne"


def test_new_identities_on_the_hot_path_match_the_general_path(
    database: Database,  # noqa: F811 (the fixture imported above)
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New local identities written in plain SQL (regional.identity_sql) and through
    SQLAlchemy (index._patient_pk + link_new_identity): the same four arrivals (a
    patient without INS, the first identity of an INS, a second identity of it, a
    namesake of the first) leave the same rows in two fresh indexes, on SQLite and on
    PostgreSQL; the namesake, which gets a link candidate, is left to the general path."""
    from sqlalchemy import select

    from pacs_hub.regional.identity_sql import NewIdentity
    from pacs_hub.storage.models import IdentityEvent, LinkCandidate, Patient, RegionalPatient

    if database.is_sqlite:
        general = Database(f"sqlite:///{tmp_path / 'general.sqlite3'}")
    else:
        general = Database(request.getfixturevalue("postgres_server").create_database())
    ins = make_ins("F", "19810203")
    new = maker(tmp_path / "in", "F", "19810203")
    files = [
        new("H1", "HOSP-H", "Leroy^Anne^Marie"),
        new("H2", "HOSP-H", "Leroy^Anne", ins=ins, birth_name="PETIT"),
        new("J7", "HOSP-J", "Petit^Anne", ins=ins, birth_name="PETIT", ins_as_patient_id=True),
        new("K3", "HOSP-K", "LEROY^ANNE"),  # the strict traits of H1
    ]
    taken = hot_path_taken(monkeypatch)
    hot = Ingestor(database, BlobStore(tmp_path / "hot"))
    for path, _study in files:
        hot.ingest(path.read_bytes())
    assert taken == [True, True, True, False]
    with monkeypatch.context() as patched:
        patched.setattr(NewIdentity, "create", lambda *_args: None)
        through_orm = Ingestor(general, BlobStore(tmp_path / "general"))
        for path, _study in files:
            through_orm.ingest(path.read_bytes())
    assert taken[4:] == [False] * 4

    def rows(db: Database) -> dict[str, list[dict[str, Any]]]:
        varying = {"created_at", "at"}
        dumped = {}
        with db.read_connection() as conn:
            for model in (Patient, RegionalPatient, IdentityEvent, LinkCandidate):
                table = model.__table__
                found = conn.execute(select(table).order_by(table.c.id)).mappings().all()
                dumped[table.name] = [
                    {k: v for k, v in row.items() if k not in varying} for row in found
                ]
        return dumped

    try:
        made_hot, made_general = rows(database), rows(general)
    finally:
        general.dispose()
    assert made_hot == made_general
    patients = made_hot["patients"]
    assert [(p["patient_id"], p["link_method"]) for p in patients] == [
        ("H1", "new"),
        ("H2", "ins"),
        (ins, "ins"),
        ("K3", "new"),
    ]
    assert patients[1]["regional_patient_pk"] == patients[2]["regional_patient_pk"]
    assert len(made_hot["regional_patients"]) == 3
    assert [(c["patient_pk"], c["status"]) for c in made_hot["link_candidates"]] == [
        (patients[3]["id"], "pending")
    ]
    assert [json.loads(e["detail"])["created"] for e in made_hot["identity_events"]] == [
        patients[0]["regional_patient_pk"],
        patients[1]["regional_patient_pk"],
        None,
        patients[3]["regional_patient_pk"],
    ]
