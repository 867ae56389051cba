"""Retrieve on demand streams: each pulled instance goes on as soon as it is durable.

The establishment PACS is a pynetdicom Query/Retrieve SCP on loopback that answers
the hub's C-FIND (Number of Study Related Instances, SOP Classes in Study) and sends a
study to the hub by C-MOVE, then *stalls* before a chosen instance until the test
opens its gate, or fails the C-MOVE there (Orthanc cannot be paused in the middle of
a C-MOVE; this peer can, so the tests need no timing). The requestors are pynetdicom
C-MOVE / C-GET SCUs, the destinations dcmtk storescp processes registered in the hub.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.conftest import HUB_AE, Hub, dcmtk, free_port, start_hub, wait_until
from tests.regional.study_factory import study_datasets

PACS_AE = "GATEDPACS"
COUNT = 4
GATE_TIMEOUT = 120.0


def make_study() -> tuple[str, list[Dataset]]:
    """A small CT study (Explicit VR Little Endian), as datasets."""
    return study_datasets(patient_id="ON-DEMAND", count=COUNT)


@dataclass
class GatedPacs:
    """A PACS holding studies; its C-MOVE to the hub stops before instance ``stop_at``:
    it waits for ``gate`` (or, when ``fail`` is set, ends there with 0xA702)."""

    hub_port: int
    studies: dict[str, list[Dataset]] = field(default_factory=dict)
    stop_at: int = COUNT
    fail: bool = False
    gate: threading.Event = field(default_factory=threading.Event)
    moves: list[str] = field(default_factory=list)

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        study = str(query.get("StudyInstanceUID", ""))
        if study in self.studies:
            answer = Dataset()
            for elem in query:
                answer.add_new(elem.tag, elem.VR, "")
            answer.QueryRetrieveLevel = "STUDY"
            answer.StudyInstanceUID = study
            answer.NumberOfStudyRelatedInstances = str(len(self.studies[study]))
            answer.SOPClassesInStudy = CTImageStorage
            yield 0xFF00, answer
        yield 0x0000, None

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        study = str(event.identifier.StudyInstanceUID)
        self.moves.append(study)
        if event.move_destination.strip() != HUB_AE:
            yield None, None
            return
        context = build_context(CTImageStorage, ExplicitVRLittleEndian)
        yield "127.0.0.1", self.hub_port, {"contexts": [context]}
        datasets = self.studies.get(study, [])
        yield len(datasets)
        for number, ds in enumerate(datasets):
            if number == self.stop_at:
                if self.fail:
                    yield 0xA702, None
                    return
                assert self.gate.wait(GATE_TIMEOUT), "the test never opened the gate"
            yield 0xFF00, ds


def _storescp(hub: Hub, folder: Path, ae_title: str) -> subprocess.Popen[bytes]:
    """dcmtk storescp writing to ``folder``, registered in the hub as ``ae_title``."""
    port = free_port()
    folder.mkdir()
    command = [dcmtk("storescp"), "+xa", "-aet", ae_title, "-od", str(folder), str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, what="storescp")
    hub.cli("nodes", "add", ae_title, "127.0.0.1", str(port), "--role", "destination")
    return process


@dataclass
class Region:
    hub: Hub
    pacs: GatedPacs
    folders: list[Path]


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    """A hub, the gated PACS (node GATEDPACS) and two dcmtk storescp destinations
    (STORESCP1, STORESCP2) for the whole module; each test pulls studies of its own."""
    root = tmp_path_factory.mktemp("on-demand")
    hub = start_hub(root / "data")
    pacs = GatedPacs(hub.dicom_port)
    ae = AE(ae_title=PACS_AE)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    port = free_port()
    handlers = [(evt.EVT_C_FIND, pacs.on_find), (evt.EVT_C_MOVE, pacs.on_move)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        hub.cli("nodes", "add", PACS_AE, "127.0.0.1", str(port), "--role", "pacs")
        folders = [root / f"received{n}" for n in (1, 2)]
        processes = [_storescp(hub, f, f"STORESCP{n}") for n, f in enumerate(folders, 1)]
        yield Region(hub, pacs, folders)
    finally:
        pacs.gate.set()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        server.shutdown()
        hub.stop()


@pytest.fixture
def setup(region: Region) -> tuple[Hub, GatedPacs]:
    """The module's hub and PACS, the PACS's gate closed again."""
    region.pacs.gate = threading.Event()
    region.pacs.stop_at, region.pacs.fail = COUNT, False
    region.pacs.moves.clear()
    return region.hub, region.pacs


@pytest.fixture
def storescps(region: Region) -> list[Path]:
    return region.folders


@dataclass
class Answer:
    """The responses a retrieve got: (status, identifier) pairs."""

    responses: list[tuple[Dataset, Dataset | None]] = field(default_factory=list)

    @property
    def final(self) -> Dataset:
        return self.responses[-1][0]

    @property
    def pending(self) -> list[Dataset]:
        return [s for s, _ in self.responses[:-1]]


def study_query(study: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    return query


def move_in_thread(hub: Hub, study: str, destination: str) -> tuple[threading.Thread, Answer]:
    """A C-MOVE to the hub from its own thread (the test watches the destination)."""
    answer = Answer()

    def run() -> None:
        ae = AE(ae_title="MOVESCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title=HUB_AE)
        assert assoc.is_established
        try:
            model = StudyRootQueryRetrieveInformationModelMove
            answer.responses += list(assoc.send_c_move(study_query(study), destination, model))
        finally:
            assoc.release()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, answer


def sop_uids(folder: Path, study: str) -> set[str]:
    """The SOP Instance UIDs of ``study`` a storescp wrote."""
    found = set()
    for path in folder.iterdir():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, EOFError):  # being written: not received yet
            continue
        if ds.StudyInstanceUID == study:
            found.add(str(ds.SOPInstanceUID))
    return found


def job_rows(hub: Hub, study: str) -> list[tuple[str, int, int | None]]:
    index = hub.data_dir / "index.sqlite3"
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT state, received, expected FROM retrieve_jobs WHERE study_instance_uid = ?",
            (study,),
        ).fetchall()


def received_count(folder: Path, study: str) -> int:
    return len(sop_uids(folder, study))


def test_instances_reach_the_destination_while_the_pacs_still_sends(
    setup: tuple[Hub, GatedPacs], storescps: list[Path]
) -> None:
    """The PACS stops after its first instance until the test sees that instance at
    the destination: a hub that waited for the whole pull would never get there."""
    hub, pacs = setup
    study, datasets = make_study()
    pacs.studies[study], pacs.stop_at = datasets, 1
    thread, answer = move_in_thread(hub, study, "STORESCP1")
    wait_until(
        lambda: received_count(storescps[0], study) >= 1,
        timeout=60,
        what="the first instance at the destination while the PACS stalls",
    )
    assert not pacs.gate.is_set() and thread.is_alive()
    pacs.gate.set()
    thread.join(timeout=120)
    assert not thread.is_alive()
    final = answer.final
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (COUNT, 0)
    counted = [s for s in answer.pending if "NumberOfCompletedSuboperations" in s]
    streamed = [s for s in counted if s.NumberOfCompletedSuboperations > 0]
    assert [s.NumberOfRemainingSuboperations for s in streamed] == [3, 2, 1, 0]
    assert [s.NumberOfCompletedSuboperations for s in streamed] == [1, 2, 3, 4]
    assert sop_uids(storescps[0], study) == {str(ds.SOPInstanceUID) for ds in datasets}
    assert pacs.moves == [study]
    assert job_rows(hub, study) == [("done", COUNT, COUNT)]


def test_two_requestors_share_one_pull_and_both_are_streamed(
    setup: tuple[Hub, GatedPacs], storescps: list[Path]
) -> None:
    """The second requestor comes while the pull stalls (part of the study is in the
    hub): it joins the pull, gets what is there at once, then the rest as it comes."""
    hub, pacs = setup
    study, datasets = make_study()
    pacs.studies[study], pacs.stop_at = datasets, 2
    first, first_answer = move_in_thread(hub, study, "STORESCP1")
    wait_until(
        lambda: received_count(storescps[0], study) >= 2, timeout=60, what="two at STORESCP1"
    )
    second, second_answer = move_in_thread(hub, study, "STORESCP2")
    wait_until(
        lambda: received_count(storescps[1], study) >= 2, timeout=60, what="two at STORESCP2"
    )
    assert not pacs.gate.is_set()
    pacs.gate.set()
    for thread in (first, second):
        thread.join(timeout=120)
        assert not thread.is_alive()
    expected = {str(ds.SOPInstanceUID) for ds in datasets}
    for answer, folder in zip((first_answer, second_answer), storescps, strict=True):
        assert answer.final.Status == 0x0000
        assert answer.final.NumberOfCompletedSuboperations == COUNT
        assert answer.final.NumberOfFailedSuboperations == 0
        assert sop_uids(folder, study) == expected
    assert pacs.moves == [study]  # one pull
    assert job_rows(hub, study) == [("done", COUNT, COUNT)]


def test_a_pull_failing_midway_ends_with_what_was_sent_and_the_rest_failed(
    setup: tuple[Hub, GatedPacs], storescps: list[Path]
) -> None:
    hub, pacs = setup
    study, datasets = make_study()
    pacs.studies[study], pacs.stop_at, pacs.fail = datasets, 2, True
    thread, answer = move_in_thread(hub, study, "STORESCP1")
    thread.join(timeout=120)
    assert not thread.is_alive()
    final, identifier = answer.responses[-1]
    assert final.Status == 0xB000  # sub-operations complete, one or more failures
    assert final.NumberOfCompletedSuboperations == 2
    assert final.NumberOfFailedSuboperations == 2
    assert final.NumberOfWarningSuboperations == 0
    assert "pull failed" in final.ErrorComment
    assert identifier is not None and "FailedSOPInstanceUIDList" in identifier
    assert not identifier.FailedSOPInstanceUIDList  # none failed toward the destination
    sent = {str(ds.SOPInstanceUID) for ds in datasets[:2]}
    assert sop_uids(storescps[0], study) == sent
    [(state, received, _expected)] = job_rows(hub, study)
    assert (state, received) == ("failed", 2)


def test_c_get_is_streamed_and_counts_a_failed_pull(setup: tuple[Hub, GatedPacs]) -> None:
    """C-GET: the first instance comes back on the requestor's own association while
    the PACS stalls; the second study's pull fails midway: Warning, 2 + 2."""
    hub, pacs = setup
    study, datasets = make_study()
    pacs.studies[study], pacs.stop_at = datasets, 1
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def get(query: Dataset, out: Answer) -> None:
        ae = AE(ae_title="GETSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate(
            "127.0.0.1",
            hub.dicom_port,
            ae_title=HUB_AE,
            ext_neg=[build_role(CTImageStorage, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        try:
            model = StudyRootQueryRetrieveInformationModelGet
            out.responses += list(assoc.send_c_get(query, model))
        finally:
            assoc.release()

    answer = Answer()
    thread = threading.Thread(target=get, args=(study_query(study), answer), daemon=True)
    thread.start()
    wait_until(lambda: len(received) >= 1, timeout=60, what="the first instance by C-GET")
    assert not pacs.gate.is_set()
    pacs.gate.set()
    thread.join(timeout=120)
    assert answer.final.Status == 0x0000
    assert answer.final.NumberOfCompletedSuboperations == COUNT
    assert sorted(received) == sorted(str(ds.SOPInstanceUID) for ds in datasets)

    failing, more = make_study()
    pacs.studies[failing], pacs.stop_at, pacs.fail = more, 2, True
    received.clear()
    answer = Answer()
    get(study_query(failing), answer)
    assert answer.final.Status == 0xB000
    assert (
        answer.final.NumberOfCompletedSuboperations,
        answer.final.NumberOfFailedSuboperations,
    ) == (2, 2)
    assert received == [str(ds.SOPInstanceUID) for ds in more[:2]]
