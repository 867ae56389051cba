"""Sending stored files as they are (pacs_hub.gateway.egress): bytes and file reads.

A pynetdicom storage SCP on loopback receives what ``send_c_store(StoredFile(...))``
sends; the opens of the stored file are counted with a Python audit hook (PEP 578),
which sees every ``open()`` of the process.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from pacs_hub.dicom.part10 import dataset_offset
from pacs_hub.gateway import egress
from pacs_hub.gateway.egress import StoredFile, enable_stored_file_sends
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


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[bytes]]]:
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

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
        path,
        "blob",
        "0" * 64,
        size_bytes=len(data),
    )
    return item, data[dataset_offset(io.BytesIO(data)) :]


def _send(port: int, item: RetrieveItem, times: int) -> list[int]:
    enable_stored_file_sends()
    ae = AE(ae_title="EGRESS_SCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="EGRESS_SCP")
    assert assoc.is_established
    WATCHED.append(str(item.path))
    try:
        return [int(assoc.send_c_store(StoredFile(item)).Status) for _ in range(times)]
    finally:
        WATCHED.clear()
        assoc.release()


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
