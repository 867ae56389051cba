"""Storage Commitment Push Model SCP (PS3.4 J) against a real hub, pynetdicom as the SCU.

Two deliveries of the N-EVENT-REPORT: on the same association (the SCU is not a
registered node and keeps the association open) and on a new association to the SCU
(registered with ``pacs-hub nodes add``), which may release right after N-ACTION.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from pacs_hub.gateway.commitment import event_information
from tests.blobs import blob_keys, blob_of
from tests.conftest import DATA, Hub, dcmtk, free_port, start_hub

FILES = [DATA / "charsets/clunie/chrFren.dcm", DATA / "charsets/clunie/chrGerm.dcm"]
STORED = [pydicom.dcmread(p, stop_before_pixels=True) for p in FILES]
REPORT_TIMEOUT = 30.0


def ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def action_information(transaction: str, *refs: Dataset) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction
    info.ReferencedSOPSequence = list(refs)
    return info


STORED_REFS = [ref(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in STORED]


@pytest.fixture(scope="module")
def commit_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = start_hub(tmp_path_factory.mktemp("commitment") / "data")
    try:
        subprocess.run(
            [dcmtk("storescu"), "-aec", hub.ae_title, "127.0.0.1", str(hub.dicom_port)]
            + [str(p) for p in FILES],
            check=True,
            timeout=60,
        )
        yield hub
    finally:
        hub.stop()


def reports_to(reports: queue.Queue[tuple[int, Dataset]]) -> list[evt.EventHandlerType]:
    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put((int(event.event_type), event.event_information))
        return 0x0000, None

    return [(evt.EVT_N_EVENT_REPORT, on_report)]


def n_action(hub: Hub, ae: AE, info: Dataset, **kwargs: object) -> tuple[Dataset, object]:
    """Send N-ACTION Request Storage Commitment; returns (status, association)."""
    assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title=hub.ae_title, **kwargs)  # type: ignore[arg-type]
    assert assoc.is_established
    status, _ = assoc.send_n_action(
        info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
    )
    return status, assoc


def test_report_on_the_same_association_lists_successes_and_failures(commit_hub: Hub) -> None:
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
    ae = AE(ae_title="UNREGISTERED")
    ae.add_requested_context(StorageCommitmentPushModel)
    transaction = generate_uid()
    unknown = ref(str(STORED[0].SOPClassUID), "1.2.3.4.5.6")
    mismatch = ref("1.2.840.10008.5.1.4.1.1.2", str(STORED[1].SOPInstanceUID))  # CT, not SC
    info = action_information(transaction, *STORED_REFS[:1], unknown, mismatch)
    status, assoc = n_action(commit_hub, ae, info, evt_handlers=reports_to(reports))
    try:
        assert status.Status == 0x0000
        event_type, report = reports.get(timeout=REPORT_TIMEOUT)
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert event_type == 2
    assert report.TransactionUID == transaction
    assert [r.ReferencedSOPInstanceUID for r in report.ReferencedSOPSequence] == [
        STORED[0].SOPInstanceUID
    ]
    failures = {f.ReferencedSOPInstanceUID: f.FailureReason for f in report.FailedSOPSequence}
    assert failures == {"1.2.3.4.5.6": 0x0112, STORED[1].SOPInstanceUID: 0x0119}


def test_reports_on_the_same_association_follow_their_n_action_response(commit_hub: Hub) -> None:
    """J.3.3: the report comes after the N-ACTION response, never in the middle of it.

    The report is sent by another thread than the response; before the hub held a
    send lock per association and waited for the response, about one in forty
    such exchanges lost its report (the SCU read the two messages' PDUs as one).
    """
    failures: list[str] = []

    def exchange(index: int) -> None:
        reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
        ae = AE(ae_title="UNREGISTERED")
        ae.add_requested_context(StorageCommitmentPushModel)
        transaction = generate_uid()
        try:
            status, assoc = n_action(
                commit_hub,
                ae,
                action_information(transaction, *STORED_REFS),
                evt_handlers=reports_to(reports),
            )
            try:
                event_type, report = reports.get(timeout=REPORT_TIMEOUT)
            finally:
                assoc.release()  # type: ignore[attr-defined]
            if (status.Status, event_type, report.TransactionUID) != (0, 1, transaction):
                failures.append(f"{index}: {status.Status:#06x} {event_type}")
        except Exception as exc:  # collected, asserted below
            failures.append(f"{index}: {exc!r}")

    for batch in range(6):
        threads = [threading.Thread(target=exchange, args=(batch * 8 + i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


@pytest.fixture
def registered_scu(commit_hub: Hub) -> Iterator[tuple[str, queue.Queue[tuple[int, Dataset]]]]:
    """An SCU that also listens for the report (J.3.3), registered as a node."""
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
    ae = AE(ae_title="COMMITSCU")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=reports_to(reports))
    commit_hub.cli("nodes", "add", "COMMITSCU", "127.0.0.1", str(port))
    try:
        yield "COMMITSCU", reports
    finally:
        commit_hub.cli("nodes", "remove", "COMMITSCU", check=False)
        server.shutdown()


def test_report_on_a_new_association_to_a_registered_node(
    commit_hub: Hub, registered_scu: tuple[str, queue.Queue[tuple[int, Dataset]]]
) -> None:
    title, reports = registered_scu
    ae = AE(ae_title=title)
    ae.add_requested_context(StorageCommitmentPushModel)
    transaction = generate_uid()
    status, assoc = n_action(commit_hub, ae, action_information(transaction, *STORED_REFS))
    assoc.release()  # type: ignore[attr-defined]  # the report does not need this association
    assert status.Status == 0x0000
    event_type, report = reports.get(timeout=REPORT_TIMEOUT)
    assert event_type == 1
    assert report.TransactionUID == transaction
    assert report.RetrieveAETitle == commit_hub.ae_title
    assert "FailedSOPSequence" not in report
    assert {r.ReferencedSOPInstanceUID for r in report.ReferencedSOPSequence} == {
        str(ds.SOPInstanceUID) for ds in STORED
    }


def test_corrupt_blob_is_not_committed(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "data")
    try:
        subprocess.run(
            [
                dcmtk("storescu"),
                "-aec",
                hub.ae_title,
                "127.0.0.1",
                str(hub.dicom_port),
                str(FILES[0]),
            ],
            check=True,
            timeout=60,
        )
        ((key),) = blob_keys(hub.data_dir).values()
        blob = blob_of(hub.data_dir, key)
        blob.file.chmod(0o600)
        with blob.file.open("r+b") as fp:  # flip its last byte: the SHA-256 no longer matches
            fp.seek(blob.offset + blob.size - 1)
            last = fp.read(1)
            fp.seek(blob.offset + blob.size - 1)
            fp.write(bytes([last[0] ^ 0xFF]))
        reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
        ae = AE(ae_title="UNREGISTERED")
        ae.add_requested_context(StorageCommitmentPushModel)
        info = action_information(generate_uid(), STORED_REFS[0])
        status, assoc = n_action(hub, ae, info, evt_handlers=reports_to(reports))
        try:
            event_type, report = reports.get(timeout=REPORT_TIMEOUT)
        finally:
            assoc.release()  # type: ignore[attr-defined]
    finally:
        hub.stop()
    assert status.Status == 0x0000
    assert event_type == 2
    assert [f.FailureReason for f in report.FailedSOPSequence] == [0x0110]
    assert "ReferencedSOPSequence" not in report


@pytest.mark.parametrize(
    ("action_type", "info", "expected"),
    [
        (2, action_information("1.2.3", STORED_REFS[0]), 0x0123),
        (1, action_information("1.2.3"), 0x0115),
        (1, action_information("", STORED_REFS[0]), 0x0115),
    ],
)
def test_malformed_requests_are_refused(
    commit_hub: Hub, action_type: int, info: Dataset, expected: int
) -> None:
    ae = AE(ae_title="UNREGISTERED")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", commit_hub.dicom_port, ae_title=commit_hub.ae_title)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(
            info, action_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
    finally:
        assoc.release()
    assert status.Status == expected


def test_event_information_omits_empty_sequences() -> None:
    from pacs_hub.gateway.commitment import CommitmentResult, Reference

    only_failed = CommitmentResult("1.2.3", (), ((Reference("1.2", "1.2.9"), 0x0112),))
    info = event_information(only_failed, "HUB")
    assert only_failed.event_type == 2
    assert "ReferencedSOPSequence" not in info
    assert "RetrieveAETitle" not in info
    assert info.FailedSOPSequence[0].FailureReason == 0x0112
