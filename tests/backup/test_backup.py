"""Backup target for hospitals, end to end with real peers (Orthanc, dcmtk, the hub).

One scenario, in order (the module's tests share it): an Orthanc PACS with 300 small
instances (one study without Study Date) is enrolled and backfilled (the hub killed
-9 mid-way and restarted), the reconciliation finds nothing missing; Orthanc dies and
loses its storage, the hub stands in for its AE title (findscu, movescu from a
workstation, storescu from a modality); an empty Orthanc comes back and is restored
(the restore killed -9 mid-way and run again, Orthanc committing to every instance),
the reconciliation finds nothing missing or different, outage studies included; an
Orthanc that refuses a transfer syntax gets a restore report naming what it refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.backup.storescp import running_storescp
from tests.conftest import DATA, HUB_AE, Hub, _healthy, dcmtk, free_port, wait_until
from tests.peers import OrthancPeer, start_orthanc
from tests.regional.study_factory import make_study, storescu

PACS_AE = "HOSP_PACS"
STUDIES, SERIES, PER_SERIES = 20, 3, 5
JPEG = DATA / "modalities" / "nm_nema_wg04_nm1_jpeg_lossless.dcm"


@dataclass
class Scenario:
    """Everything the steps share."""

    root: Path
    hub: Hub
    pacs: OrthancPeer
    env: dict[str, str]
    studies: list[str]
    outage: list[str] = field(default_factory=list)
    other: str = ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.hub.cli(*args, check=check)

    def state(self, code: str = "H1") -> dict[str, Any]:
        """The state file with its journal folded in, as the hub reads it."""
        from pacs_hub.backup import state
        from pacs_hub.config import Settings

        path = self.hub.data_dir / "backup" / f"{code}.json"
        return state.load(Settings(data_dir=self.hub.data_dir), code) if path.exists() else {}

    def status(self) -> dict[str, Any]:
        """GET /api/backup/H1 (a CLI start costs seconds on this machine)."""
        answer = httpx.get(f"{self.hub.url}/api/backup/H1", timeout=60)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def api_reconcile(self) -> dict[str, Any]:
        """POST /api/backup/H1/reconcile."""
        answer = httpx.post(f"{self.hub.url}/api/backup/H1/reconcile", timeout=120)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def reconcile(self) -> dict[str, Any]:
        done = self.cli("backup", "reconcile", "H1", "--json", check=False)
        assert done.returncode in (0, 1), done.stderr
        found: dict[str, Any] = json.loads(done.stdout)
        return found


def hub_env(dicom_port: int, http_port: int) -> dict[str, str]:
    return {
        "PACS_HUB_DICOM_PORT": str(dicom_port),
        "PACS_HUB_HTTP_PORT": str(http_port),
        "PACS_HUB_HEALTH_CHECK_INTERVAL": "1",
        "PACS_HUB_BACKUP_INTERVAL": "1",
        "PACS_HUB_BACKUP_SINCE": "20200101",
        "PACS_HUB_BACKUP_RATE_LIMIT": "60",
        "PACS_HUB_BACKUP_RESTORE_ASSOCIATIONS": "1",
        "PACS_HUB_ACSE_TIMEOUT": "5",
        "PACS_HUB_PREFETCH_ENABLED": "false",
        "PACS_HUB_BACKUP_COMMITMENT_TIMEOUT": "60",
    }


def start_hub(data_dir: Path, **extra_env: str) -> Hub:
    """conftest's start_hub with a deadline for a loaded machine (2 shared cores)."""
    env = dict(os.environ)
    env.update(
        PACS_HUB_DATA_DIR=str(data_dir),
        PACS_HUB_AE_TITLE=HUB_AE,
        PACS_HUB_HOST="127.0.0.1",
        PACS_HUB_GATEWAY_PROCESSES="1",
        PACS_HUB_UNKNOWN_CALLERS="accept",
        PACS_HUB_AUTH_REQUIRED="false",
    )
    env.update(extra_env)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log = (data_dir.parent / "hub.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs_hub.cli", "serve"], env=env, stdout=log, stderr=log
    )
    hub = Hub(
        process, data_dir, int(env["PACS_HUB_DICOM_PORT"]), int(env["PACS_HUB_HTTP_PORT"]), env
    )
    try:
        wait_until(lambda: _healthy(hub.url) or process.poll() is not None, 120, what="hub")
    except AssertionError:
        hub.stop()
        raise
    assert process.poll() is None, f"hub exited; see {log.name}"
    return hub


@dataclass(frozen=True)
class NodeSpec:
    """A node to register: AE title, port, establishment, role, permissions."""

    ae_title: str
    port: int
    establishment: str
    role: str = "pacs"
    permissions: tuple[str, ...] = ("store", "query", "retrieve")


def register(
    data_dir: Path,
    establishments: list[str],
    nodes: list[NodeSpec],
    imports: dict[str, Path],
    enrol: str,
    standin: str = "auto",
) -> None:
    """What the CLI would do, in this process (each CLI start costs seconds here)."""
    from rich.console import Console

    from pacs_hub.backup import inventory
    from pacs_hub.backup.status import set_standin
    from pacs_hub.config import Settings
    from pacs_hub.importer import run_import
    from pacs_hub.regional.establishments import create_establishment
    from pacs_hub.regional.nodes import add_node
    from pacs_hub.storage.database import Database

    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.index_url)
    for code in establishments:
        create_establishment(database, code, f"Hospital {code}")
    for node in nodes:
        add_node(
            database,
            node.ae_title,
            "127.0.0.1",
            node.port,
            node.establishment,
            role=node.role,
            permissions=node.permissions,
        )
    quiet = Console(quiet=True)
    for sender, folder in imports.items():
        run_import(settings, [folder], received_from=sender, workers=1, console=quiet)
    if enrol:
        inventory.enrol(settings, database, enrol)
        set_standin(settings, enrol, standin)
    database.engine.dispose()


def make_archive(folder: Path) -> tuple[list[str], list[Path]]:
    studies, files = [], []
    for index in range(STUDIES):
        study = pydicom.uid.generate_uid()
        date = f"202{3 + index % 3}0{1 + index % 9}1{index % 10}"
        if index == STUDIES - 1:
            date = ""  # no Study Date: no date window finds it, the undated pass does
        for _series in range(SERIES):
            _uid, written = make_study(
                folder / str(index),
                patient_id=f"P{index:03d}",
                study_uid=study,
                study_date=date,
                count=PER_SERIES,
            )
            files += written
        studies.append(study)
    return studies, files


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("backup")
    env = hub_env(free_port(), free_port())
    hub_port = int(env["PACS_HUB_DICOM_PORT"])
    pacs = start_orthanc(
        root / "pacs1", aet=PACS_AE, modalities={"HUB": ("PACS_HUB", "127.0.0.1", hub_port)}
    )
    studies, files = make_archive(root / "archive")
    storescu("MODALITY", PACS_AE, pacs.dicom_port, files)
    register(root / "data", ["H1"], [NodeSpec(PACS_AE, pacs.dicom_port, "H1")], {}, "")
    hub = start_hub(root / "data", **env)
    found = Scenario(root, hub, pacs, env, studies)
    yield found
    found.hub.stop()
    found.pacs.stop()


def test_backfill_survives_a_kill_and_reconciles_to_zero_missing(scenario: Scenario) -> None:
    # Another establishment's study in the hub: never shown by the stand-in.
    other, files = make_study(scenario.root / "other", patient_id="OTHER", count=2)
    scenario.other = other
    storescu("ELSEWHERE", "PACS_HUB", scenario.hub.dicom_port, files)
    scenario.cli("backup", "enrol", "H1")  # requests the backfill: the hub's task runs it

    def some_done() -> bool:
        studies = (scenario.state().get("backfill") or {}).get("studies") or {}
        return sum(1 for s in studies.values() if s.get("done")) >= 3

    wait_until(some_done, timeout=60, what="first studies backfilled")
    assert scenario.hub.stop(signal.SIGKILL) == -signal.SIGKILL
    run = scenario.state()["backfill"]
    assert run["state"] == "running"
    assert sum(1 for s in run["studies"].values() if s["done"]) < STUDIES
    partial = scenario.reconcile()  # the hub is down: the CLI asks the PACS itself
    assert 0 < len(partial["missing"]) < STUDIES and not partial["matched"]
    assert partial["rpo_seconds"] > 3600 and partial["rpo_alert"] is True  # studies of 2023-25
    scenario.hub = start_hub(scenario.root / "data", **scenario.env)  # same ports
    shown = scenario.cli("backup", "backfill", "H1", "--resume")  # follows the hub's run
    assert "backfill done: 20/20 studies, 300 instances" in shown.stdout
    undated = scenario.state()["backfill"]["studies"][scenario.studies[-1]]
    assert undated["d"] == "" and undated["done"] and undated["n"] == SERIES * PER_SERIES
    found = scenario.api_reconcile()
    assert found["pacs_studies"] == STUDIES and found["hub_studies"] == STUDIES
    assert found["missing"] == [] and found["different"] == [] and found["extra"] == []
    assert found["matched"] and found["last_matched"] and found["rpo_seconds"] == 0
    status = json.loads(scenario.cli("backup", "status", "H1", "--json").stdout)[0]  # the CLI
    assert status["backfill"]["instances_done"] == STUDIES * SERIES * PER_SERIES
    assert status["backfill"]["bytes_done"] == status["backfill"]["bytes_total"] > 0
    assert status["rpo_alert"] is False
    again = scenario.cli("backup", "backfill", "H1")  # the same backfill twice: nothing to pull
    assert "backfill done: 20/20 studies, 300 instances" in again.stdout
    assert scenario.api_reconcile()["hub_studies"] == STUDIES
    backfill = scenario.status()["backfill"]  # the API
    assert backfill["state"] == "done" and backfill["studies_done"] == backfill["studies_total"]


def _findscu(scenario: Scenario, outdir: Path) -> list[pydicom.Dataset]:
    outdir.mkdir(parents=True)
    command = [
        dcmtk("findscu"),
        "-S",
        "-aet",
        "WORKSTATION",
        "-aec",
        PACS_AE,
        "-X",
        "-od",
        str(outdir),
        "127.0.0.1",
        str(scenario.hub.dicom_port),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
        "-k",
        "PatientID",
        "-k",
        "RetrieveAETitle",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]


def _movescu(scenario: Scenario, study: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            dcmtk("movescu"),
            "-S",
            "-aet",
            "WORKSTATION",
            "-aec",
            PACS_AE,
            "-aem",
            "WORKSTATION",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            str(scenario.hub.dicom_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def workstation(scenario: Scenario, tmp_path: Path) -> Iterator[Path]:
    outdir = tmp_path / "ws"
    with running_storescp("WORKSTATION", outdir) as port:
        register(
            scenario.hub.data_dir, [], [NodeSpec("WORKSTATION", port, "H1", "workstation")], {}, ""
        )
        yield outdir


def test_the_hub_stands_in_while_the_pacs_is_down(
    scenario: Scenario, workstation: Path, tmp_path: Path
) -> None:
    scenario.pacs.stop()
    shutil.rmtree(scenario.pacs.workdir / "storage")  # storage and index lost

    def standing_in() -> bool:
        return bool(scenario.status()["standin_active"])

    wait_until(standing_in, timeout=30, what="stand-in active (health down)")
    answers = _findscu(scenario, tmp_path / "find")
    assert sorted(str(a.StudyInstanceUID) for a in answers) == sorted(scenario.studies)
    assert {str(a.RetrieveAETitle) for a in answers} == {PACS_AE}
    done = _movescu(scenario, scenario.studies[0])
    assert done.returncode == 0, done.stderr
    assert len(list(workstation.iterdir())) == SERIES * PER_SERIES
    refused = _movescu(scenario, scenario.other)  # another establishment's study
    final = (refused.stdout + refused.stderr).split("Final Move Response")[-1][:200]
    assert "Success" not in final, final
    assert len(list(workstation.iterdir())) == SERIES * PER_SERIES
    new, files = make_study(tmp_path / "new", patient_id="P900", study_date="20260110", count=4)
    storescu("MODALITY", PACS_AE, scenario.hub.dicom_port, files)
    scenario.outage.append(new)
    assert scenario.status()["outage_instances"] == 4
    answers = _findscu(scenario, tmp_path / "find2")
    assert new in {str(a.StudyInstanceUID) for a in answers}


def _restore(scenario: Scenario, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pacs_hub.cli",
            "restore",
            "--establishment",
            "H1",
            "--to",
            PACS_AE,
            "--json",
            *args,
        ],
        env=scenario.hub.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_restore_survives_a_kill_and_reconciles_to_zero_missing(scenario: Scenario) -> None:
    scenario.pacs = start_orthanc(
        scenario.root / "pacs1-rebuilt",
        aet=PACS_AE,
        dicom_port=scenario.pacs.dicom_port,
        modalities={"HUB": ("PACS_HUB", "127.0.0.1", scenario.hub.dicom_port)},
    )
    scenario.cli("backup", "standin", "H1", "off")
    empty = scenario.api_reconcile()
    assert empty["missing"] == [] and len(empty["extra"]) == STUDIES + 1
    first = _restore(scenario)

    def some_restored() -> bool:
        studies = (scenario.state().get("restore") or {}).get("studies") or {}
        return sum(1 for s in studies.values() if s.get("done")) >= 2 or first.poll() is not None

    wait_until(some_restored, timeout=60, what="first studies restored")
    first.send_signal(signal.SIGKILL)
    first.wait()
    run = scenario.state()["restore"]
    assert run["state"] == "running", "the restore finished before it could be killed"
    second = _restore(scenario)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, f"{err[-2000:]}\n{out[-3000:]}"  # the report says why
    report = json.loads(out)
    assert report["complete"] and report["refused"] == [] and report["count_mismatches"] == []
    assert report["studies"] == STUDIES + 1
    assert report["byte_check"]["sampled"] == 5 and report["byte_check"]["identical"] == 5
    assert (
        report["verdict"].startswith("COMPLETE") and f"committed by {PACS_AE}" in report["verdict"]
    )
    commitment = report["storage_commitment"]  # Orthanc reports on a new association
    assert commitment["supported"] and commitment["state"] == "answered"
    assert commitment["committed"] == STUDIES * SERIES * PER_SERIES + 4
    assert commitment["not_committed"] == 0 and commitment["failed"] == []
    assert report["outage_returned"] == 4 and scenario.status()["outage_instances"] == 0
    assert len(scenario.pacs.api.studies.get_all_ids()) == STUDIES + 1
    instances = len(scenario.pacs.api.instances.get_all_ids())
    assert instances == STUDIES * SERIES * PER_SERIES + 4  # nothing missing, nothing twice
    found = scenario.reconcile()
    assert found["missing"] == [] and found["different"] == [] and found["extra"] == []
    assert found["pacs_studies"] == STUDIES + 1 and scenario.outage[0] not in found["missing"]


def test_a_pacs_refusing_a_transfer_syntax_is_named_in_the_report(
    scenario: Scenario, tmp_path: Path
) -> None:
    refuser = start_orthanc(
        tmp_path / "refuser",
        aet="REFUSER",
        extra_config={"AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]},
    )
    try:
        make_study(tmp_path / "h2", patient_id="H2P", count=2)
        shutil.copy(JPEG, tmp_path / "h2" / "jpeg.dcm")
        register(
            scenario.hub.data_dir,
            ["H2"],
            [NodeSpec("REFUSER", refuser.dicom_port, "H2")],
            {"REFUSER": tmp_path / "h2"},
            "H2",
        )
        done = scenario.cli(
            "restore", "--establishment", "H2", "--to", "REFUSER", "--json", check=False
        )
        assert done.returncode == 1, done.stderr
        report = json.loads(done.stdout)
        jpeg = pydicom.dcmread(JPEG, stop_before_pixels=True)
        assert [r["sop_instance_uid"] for r in report["refused"]] == [str(jpeg.SOPInstanceUID)]
        assert "presentation context not accepted" in report["refused"][0]["reason"]
        assert report["restored"] == 2 and report["count_mismatches"] == []
        assert (
            report["verdict"].startswith("INCOMPLETE")
            and "1 refused by REFUSER" in report["verdict"]
        )
        # The hub is not in REFUSER's DicomModalities: Orthanc drops the N-ACTION.
        assert report["storage_commitment"]["state"] == "declined"
        assert "storage commitment declined" in report["verdict"]
    finally:
        refuser.stop()


def test_with_the_policy_on_the_stand_in_shows_what_the_caller_may_see(tmp_path: Path) -> None:
    dead = free_port()  # the PACS are down: nothing listens there
    mine, _ = make_study(tmp_path / "h1", patient_id="A1", count=2)
    make_study(tmp_path / "h2", patient_id="B1", count=2)
    register(
        tmp_path / "data",
        ["H1", "H2"],
        [
            NodeSpec(PACS_AE, dead, "H1"),
            NodeSpec("H2_PACS", dead, "H2"),
            NodeSpec("WS1", dead, "H1", "workstation", ("query", "retrieve")),
            NodeSpec("WS2", dead, "H2", "workstation", ("query", "retrieve")),
            NodeSpec("WS1_NOQ", dead, "H1", "workstation", ("retrieve",)),
        ],
        {PACS_AE: tmp_path / "h1", "H2_PACS": tmp_path / "h2"},
        "H1",
        standin="on",
    )
    env = hub_env(free_port(), free_port())
    hub = start_hub(tmp_path / "data", **env, PACS_HUB_AUTH_REQUIRED="true")
    try:

        def found(calling: str, name: str) -> list[str]:
            outdir = tmp_path / name
            outdir.mkdir()
            command = [
                dcmtk("findscu"),
                "-S",
                "-aet",
                calling,
                "-aec",
                PACS_AE,
                "-X",
                "-od",
                str(outdir),
                "127.0.0.1",
                str(hub.dicom_port),
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "StudyInstanceUID",
            ]
            subprocess.run(command, capture_output=True, text=True, timeout=60)
            return [str(pydicom.dcmread(p).StudyInstanceUID) for p in outdir.glob("rsp*.dcm")]

        wait_until(
            lambda: found("WS1", f"w{time.monotonic_ns()}") == [mine], 10, what="stand-in active"
        )
        assert found("WS2", "ws2") == []  # H2's node: none of H1's studies, nor its own here
        assert found("WS1_NOQ", "noq") == []  # no query permission: refused
        assert found("UNKNOWN", "unknown") == []  # not a registered node: no association
    finally:
        hub.stop()


def _find_on(port: int, calling: str, called: str, outdir: Path) -> tuple[int, list[str]]:
    """findscu at STUDY level: (exit status, Study Instance UIDs found)."""
    outdir.mkdir()
    command = [dcmtk("findscu"), "-S", "-aet", calling, "-aec", called, "-X", "-od", str(outdir)]
    command += ["127.0.0.1", str(port), "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return done.returncode, [str(pydicom.dcmread(p).StudyInstanceUID) for p in outdir.glob("rsp*")]


def test_a_stand_in_on_a_port_of_its_own_serves_any_called_ae_title(tmp_path: Path) -> None:
    dead, own_port = free_port(), free_port()
    mine, _ = make_study(tmp_path / "h1", patient_id="A1", count=2)
    make_study(tmp_path / "h2", patient_id="B1", count=2)
    register(
        tmp_path / "data",
        ["H1", "H2"],
        [NodeSpec(PACS_AE, dead, "H1"), NodeSpec("H2_PACS", dead, "H2")],
        {PACS_AE: tmp_path / "h1", "H2_PACS": tmp_path / "h2"},
        "H1",
        standin="on",
    )
    hub = start_hub(tmp_path / "data", **hub_env(free_port(), free_port()))
    try:
        # Set while the hub runs: the gateways open the port without a restart.
        hub.cli("backup", "standin", "H1", "on", "--port", str(own_port))

        def status_on_own_port() -> int:
            outdir = tmp_path / f"f{time.monotonic_ns()}"
            return _find_on(own_port, "MODALITY", "OLD_PACS_AE", outdir)[0]

        wait_until(lambda: status_on_own_port() == 0, 30, what="the stand-in's own port open")
        # The modalities kept the PACS's address: any called AE title, H1's data only.
        assert _find_on(own_port, "MODALITY", "OLD_PACS_AE", tmp_path / "f1") == (0, [mine])
        new, files = make_study(tmp_path / "new", patient_id="A2", count=3)
        storescu("MODALITY", "OLD_PACS_AE", own_port, files)
        outage = (tmp_path / "data" / "backup" / "H1.outage").read_text().split()
        assert len(outage) == 3  # marked for return to the PACS
        code, found = _find_on(own_port, "MODALITY", "OLD_PACS_AE", tmp_path / "f2")
        assert code == 0 and sorted(found) == sorted([mine, new])
        code, found = _find_on(hub.dicom_port, "MODALITY", "PACS_HUB", tmp_path / "f3")
        assert code == 0 and len(found) == 3  # the hub's own port: the hub, as before
        hub.cli("backup", "standin", "H1", "off")
        wait_until(
            lambda: status_on_own_port() != 0, 30, what="stand-in port refusing associations"
        )
        shown = hub.cli("backup", "status", "H1", "--json").stdout
        assert json.loads(shown)[0]["standin_port"] == own_port
    finally:
        hub.stop()


def test_a_study_destroyed_at_the_end_of_its_retention_is_not_pulled_back(
    scenario: Scenario,
) -> None:
    """Destroyed in the hub (its retention ended) while the hospital's PACS still holds
    it: the reconciliation says so (not missing), and a new backfill leaves it out."""
    scenario.cli("archive", "retention", "period", "H1", "1")  # studies of 2023-25 are due
    due = json.loads(
        scenario.cli("archive", "retention", "due", "--establishment", "H1", "--json").stdout
    )
    target = due[0]["study_instance_uid"]
    assert target in scenario.studies and len(due) < STUDIES  # the undated one is new here
    for user in ("dirh1", "dimh1"):
        scenario.cli("users", "add", user, "--role", "regional-admin", "--password", "pw-" * 4)
    proposed = scenario.cli(
        "archive", "destruction", "propose", "--establishment", "H1", "--limit", "1", "--private"
    )
    number = proposed.stdout.split()[1]
    for capacity, user in (("director", "dirh1"), ("dim", "dimh1")):
        scenario.cli("archive", "destruction", "sign", number, "--as", capacity, "--user", user,
                     "--password", "pw-" * 4)  # fmt: skip
    scenario.cli("archive", "destruction", "execute", number)
    found = scenario.reconcile()
    assert found["missing"] == [] and found["destroyed"] == [target] and found["matched"]
    assert found["hub_studies"] == STUDIES  # of STUDIES + 1 (the outage's)
    shown = scenario.cli("backup", "backfill", "H1")
    assert "backfill done" in shown.stdout
    held = httpx.get(
        f"{scenario.hub.url}/dicom-web/studies", params={"StudyInstanceUID": target}, timeout=60
    )
    assert held.status_code == 200 and held.json() == []
    assert scenario.reconcile()["destroyed"] == [target]
