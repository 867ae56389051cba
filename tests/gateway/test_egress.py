"""Sending stored files as they are (pacs_hub.gateway.egress): bytes and file reads.

A pynetdicom storage SCP on loopback receives what ``send_c_store(StoredFile(...))``
sends; the opens of the stored file are counted with a Python audit hook (PEP 578),
which sees every ``open()`` of the process.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from pacs_hub.dicom.part10 import dataset_offset
from pacs_hub.gateway import egress
from pacs_hub.gateway.egress import StoredFile, enable_stored_file_sends
from pacs_hub.storage import cold
from pacs_hub.storage.blob_ref import BlobRef
from pacs_hub.storage.retrieval import RetrieveItem
from tests.conftest import DATA, free_port

CT_FILE = sorted((DATA / "volumes" / "ct_philips_ingenuity_head_phantom_axial_5mm").iterdir())[0]
WATCHED: list[str] = []
OPENS: list[str] = []


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    watched = event == "open" and WATCHED and isinstance(args[0], str | Path)
    if watched and str(args[0]) in WATCHED:
        OPENS.append(str(args[0]))


sys.addaudithook(_count_opens)  # audit hooks cannot be removed; this one only counts


ANSWER: list[Any] = [0x0000]  # what the receiver answers (a status, or a status Dataset)


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[bytes]]]:
    received: list[bytes] = []

    def on_store(event: evt.Event) -> Any:
        received.append(event.request.DataSet.getvalue())
        return ANSWER[0]

    ae = AE(ae_title="EGRESS_SCP")
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    yield port, received
    server.shutdown()


def _stored(tmp_path: Path) -> tuple[RetrieveItem, bytes]:
    data = CT_FILE.read_bytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    item = RetrieveItem(
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
        BlobRef.whole(path),
        "blob",
        "0" * 64,
        size_bytes=len(data),
    )
    return item, data[dataset_offset(io.BytesIO(data)) :]


def _statuses(port: int, item: RetrieveItem, times: int, watched: bool = False) -> list[Any]:
    """Send ``item`` ``times`` on one association; each status Dataset.

    ``watched``: a handler bound to EVT_DIMSE_SENT, so that the message goes through
    pynetdicom's own ``send_c_store`` instead of the direct write (egress.send_loaded).
    """
    enable_stored_file_sends()
    ae = AE(ae_title="EGRESS_SCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    handlers = [(evt.EVT_DIMSE_SENT, lambda _event: None)] if watched else []
    assoc = ae.associate("127.0.0.1", port, ae_title="EGRESS_SCP", evt_handlers=handlers)
    assert assoc.is_established
    WATCHED.append(str(item.blob.file))
    try:
        return [assoc.send_c_store(StoredFile(item)) for _ in range(times)]
    finally:
        WATCHED.clear()
        assoc.release()


def _send(port: int, item: RetrieveItem, times: int) -> list[int]:
    return [int(status.Status) for status in _statuses(port, item, times)]


def test_a_stored_file_is_read_once_per_send_and_sent_as_stored(
    receiver: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    port, received = receiver
    item, dataset = _stored(tmp_path)
    OPENS.clear()
    assert _send(port, item, 3) == [0, 0, 0]
    assert len(OPENS) == 3  # one open per send
    assert received == [dataset] * 3  # the stored dataset bytes, unchanged


def test_a_large_file_goes_from_disk_unchanged(
    receiver: tuple[int, list[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = receiver
    item, dataset = _stored(tmp_path)
    monkeypatch.setattr(egress, "IN_MEMORY_MAX", item.size_bytes - 1)
    OPENS.clear()
    assert _send(port, item, 1) == [0]
    assert len(OPENS) == 2  # pynetdicom's chunked path: its meta, then the dataset
    assert received == [dataset]


@pytest.mark.parametrize("answer", ["success", "warning", "failure with a comment"])
def test_the_direct_send_and_pynetdicoms_send_the_same_and_read_the_same_status(
    receiver: tuple[int, list[bytes]],
    tmp_path: Path,
    answer: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, received = receiver
    direct_sends: list[bool] = []
    send_loaded = egress.send_loaded

    def spy(*args: Any, **kwargs: Any) -> Any:
        sent = send_loaded(*args, **kwargs)
        direct_sends.append(sent is not None)
        return sent

    monkeypatch.setattr(egress, "send_loaded", spy)
    # As the hub runs (server.quiet_pynetdicom_handlers): no logging handler bound to
    # EVT_DIMSE_SENT, which the direct write does not raise.
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", "none")
    item, dataset = _stored(tmp_path)
    status = pydicom.Dataset()
    status.Status = {"success": 0x0000, "warning": 0xB000, "failure with a comment": 0xA700}[answer]
    if answer == "failure with a comment":
        status.ErrorComment = "out of space"
    ANSWER[0] = status
    try:
        direct = _statuses(port, item, 2)
        through_pynetdicom = _statuses(port, item, 2, watched=True)
    finally:
        ANSWER[0] = 0x0000
    assert direct_sends == [True, True, False, False]  # written directly, then by pynetdicom
    assert received == [dataset] * 4  # the same bytes either way
    assert direct == through_pynetdicom  # the same status Dataset either way
    assert direct[0].Status == status.Status
    assert direct[0].get("ErrorComment") == status.get("ErrorComment")


def test_linked_sends_read_each_blob_once_while_the_peer_stores_the_one_before(
    receiver: tuple[int, list[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = receiver
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", "none")  # the direct path
    item, dataset = _stored(tmp_path)
    second = tmp_path / "second"
    second.write_bytes(item.blob.file.read_bytes())
    items = [item, replace(item, source=BlobRef.whole(second))]
    enable_stored_file_sends()
    ae = AE(ae_title="EGRESS_SCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="EGRESS_SCP")
    assert assoc.is_established
    WATCHED.extend([str(item.blob.file), str(second)])
    OPENS.clear()
    try:
        files = list(egress.linked(items))
        assert int(assoc.send_c_store(files[0]).Status) == 0
        assert [str(item.blob.file), str(second)] == OPENS  # the next one read meanwhile
        assert "preloaded" in vars(files[1])
        assert int(assoc.send_c_store(files[1]).Status) == 0
        assert len(OPENS) == 2  # not read again
    finally:
        WATCHED.clear()
        assoc.release()
    assert received == [dataset] * 2


def test_a_blob_that_cannot_be_read_ahead_fails_its_own_send(tmp_path: Path) -> None:
    item, _dataset = _stored(tmp_path)
    missing = replace(item, source=BlobRef(tmp_path / "gone", 0, item.size_bytes))
    first, following = egress.linked([item, missing])
    egress.preload(first)
    assert "preloaded" not in vars(following)
    with pytest.raises(OSError):
        egress.stored_body(following)


def test_a_blob_found_at_first_use_fails_its_own_send_not_the_plan(tmp_path: Path) -> None:
    item, dataset = _stored(tmp_path)
    asked: list[str] = []

    def damaged() -> BlobRef:
        asked.append("damaged")
        raise cold.ColdRecordError("cold record x.zpack@40 damaged")

    def found() -> BlobRef:
        asked.append("found")
        return item.blob

    later = [replace(item, source=damaged), replace(item, source=found)]
    first, bad, good = egress.linked([item, *later])
    assert asked == []  # a cold blob is not looked for while the retrieve is planned
    egress.preload(first)
    assert asked == ["damaged"] and "preloaded" not in vars(bad)
    with pytest.raises(OSError, match="damaged"):
        egress.stored_body(bad)
    egress.preload(bad)
    assert asked == ["damaged", "damaged", "found"]
    assert bytes(vars(good)["preloaded"]) == dataset
    assert good.stored_blob == item.blob and len(asked) == 3  # found once
