"""Storage Commitment SCU of a restore (PS3.4 J): a PACS without it, reports kept apart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from pacs_hub.backup import commit
from pacs_hub.config import Settings
from pacs_hub.regional.scu import PacsNode
from tests.backup.storescp import running_storescp
from tests.conftest import DATA, start_hub
from tests.regional.study_factory import storescu

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, ae_title="PACS_HUB", backup_commitment_timeout=5)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[PacsNode]:
    """dcmtk's storescp: Storage and Verification, no Storage Commitment."""
    with running_storescp("PLAIN", tmp_path / "in") as port:
        yield PacsNode(0, "PLAIN", "127.0.0.1", port)


def test_a_pacs_rejecting_the_sop_class_is_reported_as_not_supported(
    settings: Settings, storescp: PacsNode
) -> None:
    outcome = commit.request_commitment(settings, storescp, [(CT, generate_uid())])
    assert (outcome.supported, outcome.state) == (False, "not supported")
    report = outcome.as_report(1)
    assert report["not_committed"] == 0 and report["committed"] == 0  # not held against it
    assert "rejected the Storage Commitment SOP class" in report["detail"]


def _report(transaction: str, committed: list[str], failed: list[str]) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction
    info.ReferencedSOPSequence = Sequence()
    for uid in committed:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, uid
        info.ReferencedSOPSequence.append(item)
    info.FailedSOPSequence = Sequence()
    for uid in failed:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, uid
        item.FailureReason = 0x0112
        info.FailedSOPSequence.append(item)
    return info


def test_a_report_is_taken_only_for_a_transaction_asked_of_that_node(settings: Settings) -> None:
    asked, other = generate_uid(), generate_uid()
    folder = settings.data_dir / "backup" / "commitment"
    folder.mkdir(parents=True)
    (folder / f"{asked}.pending").write_text('{"node": "HOSP_PACS", "references": 2}')
    report = _report(asked, ["1.2.3"], ["1.2.4"])
    assert commit.receive(settings, "HOSP_PACS", 2, _report(other, ["1.2.3"], [])) == 0x0115
    assert commit.receive(settings, "INTRUDER", 2, report) == 0x0115  # another node
    assert not (folder / f"{asked}.json").exists()
    assert commit.receive(settings, "HOSP_PACS", 7, report) == 0x0113  # no such event type
    assert commit.receive(settings, "HOSP_PACS", 2, report) == 0x0000
    outcome = commit.Commitment(True, "answered")
    commit._collect(settings, {asked: 2}, outcome)
    assert outcome.committed == {"1.2.3"} and outcome.failed == {"1.2.4": 0x0112}
    shown = outcome.as_report(2)
    assert shown["not_committed"] == 1
    assert shown["failed"] == [
        {"sop_instance_uid": "1.2.4", "reason": "0x0112 no such object instance"}
    ]
    assert list(folder.iterdir()) == []  # both files removed once read


def test_a_report_that_never_comes_leaves_the_instances_not_committed(settings: Settings) -> None:
    settings = settings.model_copy(update={"backup_commitment_timeout": 0.5})
    outcome = commit.Commitment(True, "answered")
    commit._collect(settings, {generate_uid(): 3}, outcome)
    assert (outcome.state, outcome.unanswered) == ("no report", 3)
    assert outcome.as_report(3)["not_committed"] == 3


def test_a_report_on_the_same_association_is_answered_before_the_release(
    tmp_path: Path,
) -> None:
    """The hub itself as the PACS: it reports on the requesting association (J.3.3).

    Five restores' commitments on one hub, each report read and answered before the
    release: no exception in any thread (an answer sent after the A-RELEASE-RQ raises
    one in pynetdicom's DUL thread). The window is small here, the report being polled
    every 0.2 s: this checks the path end to end more than it provokes the race.
    """
    files = [DATA / "charsets/clunie/chrFren.dcm", DATA / "charsets/clunie/chrGerm.dcm"]
    hub = start_hub(tmp_path / "hub")
    errors: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        storescu("STORESCU", hub.ae_title, hub.dicom_port, files)
        stored = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        references = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in stored]
        settings = Settings(data_dir=tmp_path / "restorer", backup_commitment_timeout=20)
        where = PacsNode(0, hub.ae_title, "127.0.0.1", hub.dicom_port)
        for _ in range(5):
            outcome = commit.request_commitment(settings, where, references)
            assert (outcome.supported, outcome.state) == (True, "answered")
            assert outcome.committed == {uid for _, uid in references}
    finally:
        threading.excepthook = previous
        hub.stop()
    assert errors == []
