"""PDUs read in one piece (pacs_hub/gateway/pdu_reader.py): the same P-DATA primitives
as pynetdicom's decoding, the same bytes from the socket, pynetdicom's own path kept
for associations whose handlers observe received PDUs."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.transport import AssociationSocket

from pacs_hub.gateway import pdu_reader
from pacs_hub.gateway.pdu_reader import p_data

# tests/conftest.py installs the reader in the test process, as every hub process does.

PDV = st.tuples(
    st.integers(1, 255),  # presentation context ID (odd in practice; any byte here)
    st.integers(0, 3),  # message control header: command/data set, last/not last
    st.binary(max_size=300),
)


def _body(items: list[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF body (PS3.8 9.3.5.1): per PDV, Item-length, context ID, value."""
    return b"".join(
        struct.pack(">LBB", 2 + len(data), context, control) + data
        for context, control, data in items
    )


@given(st.lists(PDV, min_size=1, max_size=5))
def test_p_data_values_are_pynetdicoms(items: list[tuple[int, int, bytes]]) -> None:
    body = _body(items)
    pdu = P_DATA_TF()
    pdu.decode(b"\x04\x00" + struct.pack(">L", len(body)) + body)
    expected = pdu.to_primitive().presentation_data_value_list
    got = p_data(memoryview(body)).presentation_data_value_list
    assert [(c, bytes(v)) for c, v in got] == [(c, bytes(v)) for c, v in expected]
    for (_, value), (_, control, _) in zip(got, items, strict=True):
        # a command fragment is copied out (small); a data set fragment is a view
        assert isinstance(value, bytes if control & 0x01 else memoryview)


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no PDV item
        struct.pack(">LB", 1, 1),  # no message control header
        struct.pack(">LBB", 10, 1, 3) + b"abc",  # longer than the PDU
        struct.pack(">LBB", 2, 1, 3) + b"\x00\x00",  # a partial item header after it
    ],
)
def test_malformed_p_data_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        p_data(memoryview(body))


@pytest.fixture
def pair() -> Iterator[tuple[AssociationSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    wrapped = AssociationSocket.__new__(AssociationSocket)
    wrapped.socket = ours
    try:
        yield wrapped, theirs
    finally:
        ours.close()
        theirs.close()


def test_recv_reads_exactly_what_is_asked_from_pieces(
    pair: tuple[AssociationSocket, socket.socket],
) -> None:
    ours, theirs = pair
    data = bytes(range(256)) * 4096  # 1 MiB, more than the socket buffers hold at once

    def send() -> None:
        for start in range(0, len(data), 65536):
            theirs.sendall(data[start : start + 65536])

    sender = threading.Thread(target=send)
    sender.start()
    got = ours.recv(len(data) - 10)
    rest = ours.recv(10)
    sender.join()
    assert bytes(got) == data[:-10] and bytes(rest) == data[-10:]


def test_recv_gives_what_came_when_the_peer_closes(
    pair: tuple[AssociationSocket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(b"abc")
    theirs.shutdown(socket.SHUT_WR)
    assert bytes(ours.recv(10)) == b"abc"


def test_a_read_longer_than_any_pdu_takes_memory_only_as_bytes_come(
    pair: tuple[AssociationSocket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer announcing a 4 GiB PDU does not get the hub to reserve 4 GiB."""
    ours, theirs = pair
    monkeypatch.setattr(pdu_reader, "ONE_BUFFER", 1000)
    theirs.sendall(b"x" * 1500)
    theirs.shutdown(socket.SHUT_WR)
    assert bytes(ours.recv(0xFFFFFFFF)) == b"x" * 1500


def _ct(size: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.PatientID = "PDU"
    ds.PixelData = bytes(range(256)) * (size // 256)
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("observed", [False, True])
def test_an_instance_arrives_whole_over_pdus_of_either_reading(observed: bool) -> None:
    """A 600 KB instance in 16 KiB PDUs (~40 P-DATA-TF) reaches the handler byte for
    byte; with an EVT_PDU_RECV handler bound, pynetdicom's decoding runs and the
    handler gets its PDU objects."""
    received: list[bytes] = []
    pdus: list[object] = []

    def on_store(event: evt.Event) -> int:
        received.append(bytes(event.request.DataSet.getvalue()))
        return 0x0000

    handlers = [(evt.EVT_C_STORE, on_store)]
    if observed:
        handlers.append((evt.EVT_PDU_RECV, lambda event: pdus.append(event.pdu)))
    scp = AE(ae_title="PDU_SCP")
    scp.maximum_pdu_size = 16384
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        scu = AE(ae_title="PDU_SCU")
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="PDU_SCP")
        assert assoc.is_established
        ds = _ct(600_000)
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    finally:
        server.shutdown()
    assert len(received) == 1
    assert bytes(range(256)) * (600_000 // 256) in received[0]
    if observed:
        assert sum(isinstance(pdu, P_DATA_TF) for pdu in pdus) >= 37
    else:
        assert pdus == []
