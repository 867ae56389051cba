"""One access policy on every DICOM path: the matrix DIMSE path x calling node x consent.

One hub with ``PACS_HUB_AUTH_REQUIRED=true`` and ``PACS_HUB_UNKNOWN_CALLERS=accept``
(the policy refuses unregistered callers whatever that setting says). Establishments A,
B and C; registered nodes:

* ``PACS_A`` (A) and ``PACS_C`` (C): store, query, retrieve; each is also a C-MOVE
  destination (dcmtk's movescu listens on the registered port);
* ``CT_A`` (A), ``CT_B`` (B), ``CT_C`` (C): modalities, store only.

Patient P has a study at A (``PA``, sent by CT_A) and one at B (``PB``, sent by CT_B)
under one Patient ID and issuer (one regional patient); patient Q has a study at C
(``QC``). P's ``regional-sharing`` consent goes none -> granted -> withdrawn (rows of
:class:`~pacs_hub.trust.models.Consent`, as the consent API records them). Callers:
the two PACS, the store-only modality CT_A, an unregistered AE, and PACS_A's AE title
calling from 127.0.0.2 instead of its registered 127.0.0.1 (pynetdicom, bound there:
dcmtk's tools cannot choose their source address).

:data:`VISIBLE` is the expected table (the rules of :mod:`pacs_hub.trust.policy`).
Every dcmtk tool is run by absolute path. A refusal carries no identifier and no data:
no Patient ID, name or UID of the refused studies in any answer, no file received.
TLS with client certificates: :mod:`tests.trust.test_access_dicom_tls`.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import sop_class as sc
from sqlalchemy import select

from pacs_hub.config import Settings
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Patient
from pacs_hub.trust.models import AuditEvent, Consent
from tests.conftest import Hub, dcmtk, free_port, start_hub
from tests.regional.study_factory import make_study, storescu

CONSENTS = ("none", "granted", "withdrawn")
CALLERS = ("PACS_A", "PACS_C", "CT_A", "UNKNOWN", "WRONG_SOURCE")
REGISTERED = ("PACS_A", "PACS_C", "CT_A")
STUDIES = ("PA", "PB", "QC")
PATIENT_IDS = {"PA": "PAT-P", "PB": "PAT-P", "QC": "PAT-Q"}
NAMES = {"PAT-P": "SECRET^PAULINE", "PAT-Q": "SECRET^QUENTIN"}
SENDERS = {"PA": "CT_A", "PB": "CT_B", "QC": "CT_C"}

# Studies each caller may query and retrieve, per P's regional-sharing consent.
# PACS_A: PA by its establishment, PB as P's care team (A holds a study of P) until P
# withdraws; QC never (Q gave no consent). PACS_C: QC by its establishment; P's studies
# only while P's consent is granted. CT_A may store only: its queries and retrieves are
# refused (0x0124). UNKNOWN and WRONG_SOURCE cannot even associate.
VISIBLE: dict[str, dict[str, frozenset[str]]] = {
    "PACS_A": {
        "none": frozenset({"PA", "PB"}),
        "granted": frozenset({"PA", "PB"}),
        "withdrawn": frozenset({"PA"}),
    },
    "PACS_C": {
        "none": frozenset({"QC"}),
        "granted": frozenset({"PA", "PB", "QC"}),
        "withdrawn": frozenset({"QC"}),
    },
}
MAY_QUERY = {"PACS_A": True, "PACS_C": True, "CT_A": False}
MAY_STORE = {"PACS_A": True, "PACS_C": True, "CT_A": True}


@dataclass
class StudyFiles:
    uid: str
    files: list[Path]
    sops: list[str]


@dataclass
class World:
    hub: Hub
    database: Database
    folder: Path
    studies: dict[str, StudyFiles]
    ports: dict[str, int]
    consent_state: list[str] = field(default_factory=lambda: ["none"])
    stores: int = 0

    def secrets(self, keys: list[str]) -> list[bytes]:
        """Byte strings of studies ``keys`` that must not appear in a refused answer."""
        found: list[bytes] = []
        for key in keys:
            study = self.studies[key]
            found += [study.uid.encode(), *(s.encode() for s in study.sops)]
            found.append(NAMES[PATIENT_IDS[key]].encode())
        return found


def _send(world_folder: Path, key: str, hub: Hub) -> StudyFiles:
    uid, files = make_study(
        world_folder / key, patient_id=PATIENT_IDS[key], issuer="REGION-TEST", count=2
    )
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName = NAMES[PATIENT_IDS[key]]
        ds.save_as(path, enforce_file_format=True)
    storescu(SENDERS[key], hub.ae_title, hub.dicom_port, files)
    sops = [str(pydicom.dcmread(p).SOPInstanceUID) for p in files]
    return StudyFiles(uid, files, sops)


def _start_hub(data_dir: Path, **env: str) -> Hub:
    """start_hub, tried again when the hub is not healthy within its 30 s (a loaded
    machine: the gateway process imports slowly); the same data folder is reused."""
    for _attempt in range(2):
        try:
            return start_hub(data_dir, **env)
        except AssertionError:
            continue
    return start_hub(data_dir, **env)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("access-dicom")
    hub = _start_hub(
        root / "data",
        PACS_HUB_AUTH_REQUIRED="true",
        PACS_HUB_UNKNOWN_CALLERS="accept",
        PACS_HUB_PREFETCH_ENABLED="false",
    )
    try:
        ports = {"PACS_A": free_port(), "PACS_C": free_port(), "CT_A": free_port()}
        for code in "ABC":
            hub.cli("establishments", "add", code, f"Etablissement {code}")
            port = str(ports.get(f"CT_{code}", 104))
            hub.cli("nodes", "add", f"CT_{code}", "127.0.0.1", port, "--establishment", code,
                    "--role", "modality", "--permissions", "store")  # fmt: skip
        for title in ("PACS_A", "PACS_C"):
            hub.cli("nodes", "add", title, "127.0.0.1", str(ports[title]), "--establishment",
                    title[-1], "--role", "workstation",
                    "--permissions", "store,query,retrieve")  # fmt: skip
        database = Database(Settings(data_dir=hub.data_dir).index_url)
        _wait_for_directory(hub)
        studies = {key: _send(root, key, hub) for key in STUDIES}
        yield World(hub, database, root, studies, ports)
    finally:
        hub.stop()


def _wait_for_directory(hub: Hub) -> None:
    """Nodes are seen by the gateway within its directory's TTL (3 s)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _echo(hub, "CT_A").returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError("the hub never accepted CT_A")


@pytest.fixture(scope="module", params=CONSENTS)
def consent(request: pytest.FixtureRequest, world: World) -> str:
    """P's regional-sharing consent, moved forward in the order of CONSENTS."""
    state = str(request.param)
    if world.consent_state[-1] != state:
        with world.database.session() as session:
            regional = session.execute(
                select(Patient.regional_patient_pk).where(Patient.patient_id == "PAT-P")
            ).scalar_one()
            session.add(
                Consent(
                    regional_pk=regional,
                    purpose="regional-sharing",
                    doctor_ref="",
                    status=state,
                    method="in-person",
                    recorded_by="user:radiologist-A",
                    proof_sha256="0" * 64,
                    at=datetime.now(UTC).replace(tzinfo=None),
                )
            )
        world.consent_state.append(state)
    assert world.consent_state[-1] == state, "consent states run in order"
    return state


# -- running the DIMSE services --------------------------------------------------------------


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=60, cwd=cwd, check=False)


def _echo(hub: Hub, title: str) -> subprocess.CompletedProcess[bytes]:
    return _run([dcmtk("echoscu"), "-aet", title, "-aec", hub.ae_title, "127.0.0.1",
                 str(hub.dicom_port)])  # fmt: skip


def _wrong_source(world: World) -> bool:
    """Does PACS_A's AE title, calling from 127.0.0.2, get an association? (it must not)"""
    ae = AE(ae_title="PACS_A")
    ae.add_requested_context(sc.Verification)
    ae.acse_timeout = 10
    assoc = ae.associate(
        "127.0.0.1",
        world.hub.dicom_port,
        ae_title=world.hub.ae_title,
        bind_address=("127.0.0.2", 0),
    )
    established = assoc.is_established
    if established:
        assoc.release()
    return established


def _refused_association(
    world: World, caller: str, result: subprocess.CompletedProcess[bytes]
) -> None:
    """UNKNOWN and WRONG_SOURCE: no association, hence nothing else."""
    if caller == "WRONG_SOURCE":
        assert not _wrong_source(world)
        return
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert b"Association Rejected" in text or b"rejected" in text.lower(), text


def _find(
    world: World, caller: str, folder: Path, federated: bool = False
) -> subprocess.CompletedProcess[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    called = "PACS_HUB_FED" if federated else world.hub.ae_title
    title = "UNKNOWN_AE" if caller == "UNKNOWN" else caller
    return _run(
        [dcmtk("findscu"), "-v", "-S", "-aet", title, "-aec", called, "-X",
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT-*", "-k", "PatientName",
         "-k", "StudyInstanceUID", "127.0.0.1", str(world.hub.dicom_port)],
        cwd=folder,
    )  # fmt: skip


def _answers(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def _uids(world: World, answers: list[Dataset]) -> set[str]:
    by_uid = {study.uid: key for key, study in world.studies.items()}
    found = {str(a.StudyInstanceUID) for a in answers}
    assert found <= set(by_uid), "a query answered a study outside the test's world"
    return {by_uid[uid] for uid in found}


def _refused_status(output: bytes) -> bool:
    """dcmtk reported 0x0124 Refused: Not Authorized (printed as 0x124 or by name)."""
    return re.search(rb"0x0?124\b|Refused", output) is not None


def _no_secret(blob: bytes, secrets: list[bytes]) -> None:
    for secret in secrets:
        assert secret not in blob, f"refused answer leaks {secret!r}"


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("rsp")]


# -- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
def test_echo_and_association(world: World, caller: str) -> None:
    """Only registered nodes from their registered host associate (C-ECHO, PS3.4 A)."""
    if caller == "WRONG_SOURCE":
        assert not _wrong_source(world)
        return
    result = _echo(world.hub, "UNKNOWN_AE" if caller == "UNKNOWN" else caller)
    if caller in REGISTERED:
        assert result.returncode == 0, result.stderr
    else:
        _refused_association(world, caller, result)


@pytest.mark.parametrize("caller", CALLERS)
def test_find(world: World, consent: str, caller: str, tmp_path: Path) -> None:
    """C-FIND answers exactly the visible studies; a refusal is 0x0124 and empty."""
    result = _find(world, caller, tmp_path)
    output = result.stdout + result.stderr
    if caller not in REGISTERED:
        _refused_association(world, caller, result)
        return
    answers = _answers(tmp_path)
    if not MAY_QUERY[caller]:
        assert answers == []
        assert _refused_status(output), output
        _no_secret(output, world.secrets(list(STUDIES)))
        return
    assert _uids(world, answers) == VISIBLE[caller][consent]
    hidden = [k for k in STUDIES if k not in VISIBLE[caller][consent]]
    blob = output + b"".join(p.read_bytes() for p in tmp_path.glob("rsp*.dcm"))
    _no_secret(blob, [s for s in world.secrets(hidden) if s not in world.secrets(
        [k for k in STUDIES if k in VISIBLE[caller][consent]])])  # fmt: skip


@pytest.mark.parametrize("caller", ("PACS_A", "PACS_C", "CT_A"))
def test_federated_find(world: World, consent: str, caller: str, tmp_path: Path) -> None:
    """The federated AE title filters the hub's own results the same way."""
    result = _find(world, caller, tmp_path, federated=True)
    answers = _answers(tmp_path)
    if not MAY_QUERY[caller]:
        assert answers == []
        return
    assert result.returncode == 0, result.stderr
    assert _uids(world, answers) == VISIBLE[caller][consent]


def _retrieve(world: World, tool: str, caller: str, key: str, folder: Path,
              destination: str = "") -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    title = "UNKNOWN_AE" if caller == "UNKNOWN" else caller
    uid = world.studies[key].uid
    args = [dcmtk(tool), "-v", "-S", "-aet", title, "-aec", world.hub.ae_title,
            "-od", str(folder), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={uid}"]  # fmt: skip
    if tool == "movescu":  # it listens on the caller's registered port
        args += ["-aem", destination or title, "+P", str(world.ports.get(title, free_port()))]
    return _run([*args, "127.0.0.1", str(world.hub.dicom_port)])


@pytest.mark.parametrize("key", STUDIES)
@pytest.mark.parametrize("tool", ("movescu", "getscu"))
@pytest.mark.parametrize("caller", CALLERS)
def test_retrieve(
    world: World, consent: str, caller: str, tool: str, key: str, tmp_path: Path
) -> None:
    """C-MOVE (to the caller itself) and C-GET send a study only when it is visible;
    otherwise 0x0124, no file, no UID of the study's instances."""
    result = _retrieve(world, tool, caller, key, tmp_path)
    if caller not in REGISTERED:
        _refused_association(world, caller, result)
        assert _files_in(tmp_path) == []
        return
    output = result.stdout + result.stderr
    received = _files_in(tmp_path)
    if MAY_QUERY[caller] and key in VISIBLE[caller][consent]:
        assert len(received) == len(world.studies[key].files), output
        return
    assert received == []
    assert _refused_status(output), output
    _no_secret(output.replace(world.studies[key].uid.encode(), b""), world.secrets([key])[1:])


def test_move_destination_must_be_allowed(world: World, consent: str, tmp_path: Path) -> None:
    """PACS_C may see QC, PACS_A may not: a C-MOVE of QC to PACS_A sends nothing."""
    listener = subprocess.Popen(
        [dcmtk("storescp"), "-od", str(tmp_path), str(world.ports["PACS_A"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = _retrieve(world, "movescu", "PACS_C", "QC", tmp_path / "none", "PACS_A")
    finally:
        listener.terminate()
        listener.wait()
    assert _files_in(tmp_path) == []
    assert _refused_status(result.stdout + result.stderr)


@pytest.mark.parametrize("caller", CALLERS)
def test_store(world: World, caller: str, tmp_path: Path) -> None:
    """C-STORE: every registered node here may store; the others cannot associate."""
    world.stores += 1
    _uid, files = make_study(tmp_path, patient_id=f"STORE-{world.stores}", count=1)
    if caller == "WRONG_SOURCE":
        assert not _wrong_source(world)
        return
    title = "UNKNOWN_AE" if caller == "UNKNOWN" else caller
    result = _run([dcmtk("storescu"), "-aet", title, "-aec", world.hub.ae_title, "127.0.0.1",
                   str(world.hub.dicom_port), str(files[0])])  # fmt: skip
    if caller in REGISTERED and MAY_STORE[caller]:
        assert result.returncode == 0, result.stderr
    else:
        _refused_association(world, caller, result)


def test_store_refused_without_permission(world: World, tmp_path: Path) -> None:
    """A node without the store permission gets 0x0124 and nothing is indexed."""
    world.hub.cli("nodes", "add", "RO_A", "127.0.0.1", "104", "--establishment", "A",
                  "--role", "workstation", "--permissions", "query,retrieve")  # fmt: skip
    _wait_until_registered(world, "RO_A")
    _uid, files = make_study(tmp_path, patient_id="STORE-RO", count=1)
    result = _run([dcmtk("storescu"), "-v", "-aet", "RO_A", "-aec", world.hub.ae_title,
                   "127.0.0.1", str(world.hub.dicom_port), str(files[0])])  # fmt: skip
    assert _refused_status(result.stdout + result.stderr)
    with world.database.reader() as session:
        assert (
            session.execute(select(Patient).where(Patient.patient_id == "STORE-RO")).first() is None
        )


def _wait_until_registered(world: World, title: str) -> None:
    deadline = time.monotonic() + 15
    while _echo(world.hub, title).returncode != 0:
        assert time.monotonic() < deadline, f"{title} never accepted"
        time.sleep(0.3)


def test_audit_one_entry_per_association_study_action(world: World) -> None:
    """Denies are all recorded; a C-STORE association is recorded once per study."""
    with world.database.reader() as session:
        events = session.scalars(select(AuditEvent)).all()
    stores = [e for e in events if e.action == "store" and e.outcome == "allow"]
    sent = {(e.actor_id, e.study_uid) for e in stores}
    assert len(stores) == len(sent)
    assert {f"node:{SENDERS[k]}" for k in STUDIES} <= {e.actor_id for e in stores}
    pa = world.studies["PA"].uid
    assert len([e for e in stores if e.study_uid == pa]) == 1  # two instances, one entry
    denies = [e for e in events if e.outcome == "deny"]
    assert {"associate", "retrieve", "query"} <= {e.action for e in denies}
    for event in events:
        text = f"{event.reason} {event.detail}"
        assert "PAT-P" not in text and "SECRET" not in text


@pytest.mark.parametrize("caller", REGISTERED)
def test_storage_commitment_reports_only_what_the_caller_may_see(
    world: World, consent: str, caller: str
) -> None:
    """Storage commitment (PS3.4 J): an instance the caller neither sent nor may see is
    reported 'no such object instance' (0x0112), like one the hub lacks."""
    from types import SimpleNamespace

    from pacs_hub.gateway import access
    from pacs_hub.gateway.commitment import (
        NO_SUCH_OBJECT,
        CommitmentRequest,
        Reference,
        check_commitment,
        only_visible,
    )
    from pacs_hub.gateway.context import GatewayContext
    from pacs_hub.regional.nodes import NodeDirectory

    settings = Settings(data_dir=world.hub.data_dir, auth_required=True)
    ctx = GatewayContext.open(settings)
    owner = NodeDirectory(ctx.database).lookup(caller)
    assert owner is not None
    assoc = SimpleNamespace(_pacs_hub_caller=access.Caller(access.node_principal(owner)))
    refs = tuple(
        Reference(pydicom.dcmread(path).SOPClassUID, sop)
        for key in STUDIES
        for path, sop in zip(world.studies[key].files, world.studies[key].sops, strict=True)
    )
    seen = access.visible_instances(ctx, assoc, [r.sop_instance_uid for r in refs])  # type: ignore[arg-type]
    assert seen is not None
    result = only_visible(check_commitment(ctx, CommitmentRequest("1.2.3.4", refs)), seen)
    committed = {r.sop_instance_uid for r in result.committed}
    visible = VISIBLE.get(caller, {}).get(consent, frozenset())
    sent = {k for k in STUDIES if SENDERS[k] == caller} | ({"PA"} if caller == "CT_A" else set())
    expected = {sop for k in visible | sent for sop in world.studies[k].sops}
    assert committed == expected
    assert all(reason == NO_SUCH_OBJECT for _ref, reason in result.failed)
