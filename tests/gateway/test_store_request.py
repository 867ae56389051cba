"""C-STORE requests read directly (PS3.7 9.3.1.1, PS3.8 E.2) must equal pynetdicom's reading."""

from __future__ import annotations

import threading
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage

from pacs_hub.gateway import server, store_request
from pacs_hub.gateway.pdata import c_store_command
from pacs_hub.gateway.store_request import StoreMessage
from tests.gateway.test_network_layer import pynetdicom_command

CT = "1.2.840.10008.5.1.4.1.1.2"
FIELDS = (
    "MessageID",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
)


def request(instance: str = "1.2.3.4", originator: str | None = None, priority: int = 2) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = 9
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = instance
    primitive.Priority = priority
    primitive.DataSet = BytesIO(b"\x00\x00")
    if originator:
        primitive.MoveOriginatorApplicationEntityTitle = originator
        primitive.MoveOriginatorMessageID = 41
    command = c_store_command(primitive)
    assert command is not None
    return command


def p_data(*values: tuple[int, bytes]) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[context, data] for context, data in values]
    return primitive


def receive(message: Any, pdus: list[P_DATA]) -> Any:
    """Feed P-DATA primitives to a message reader; the primitive it makes at the end."""
    for number, pdu in enumerate(pdus, 1):
        complete = message.decode_msg(pdu)
        assert complete == (number == len(pdus))
    return message.message_to_primitive()


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45"])
@pytest.mark.parametrize("originator", [None, "MOVESCU", "ODD_AE_TITLE_X"])
@pytest.mark.parametrize("priority", [0, 1, 2])
@pytest.mark.parametrize("layout", ["one PDU", "command then fragments", "three PDUs"])
def test_a_c_store_request_is_read_as_pynetdicom_reads_it(
    instance: str, originator: str | None, priority: int, layout: str
) -> None:
    command = b"\x03" + request(instance, originator, priority)
    dataset = bytes(range(256)) * 40
    parts = [dataset[:1000], dataset[1000:5000], dataset[5000:]]
    fragments = [(b"\x00" if k < 2 else b"\x02") + part for k, part in enumerate(parts)]
    if layout == "one PDU":
        pdus = [p_data((3, command), *((3, f) for f in fragments))]
    elif layout == "command then fragments":
        pdus = [p_data((3, command)), p_data(*((3, f) for f in fragments))]
    else:
        pdus = [p_data((3, command), (3, fragments[0])), p_data((3, fragments[1]))]
        pdus.append(p_data((3, fragments[2])))
    fast_request = store_request.store_request(command)
    assert fast_request is not None
    fast = receive(StoreMessage(fast_request, 3), pdus)
    slow = receive(DIMSEMessage(), pdus)
    assert isinstance(slow, C_STORE)
    for name in FIELDS:
        assert getattr(fast, name) == getattr(slow, name), name
    assert fast.DataSet.getvalue() == slow.DataSet.getvalue() == dataset
    assert fast._context_id == slow._context_id == 3
    assert fast.is_valid_request


def test_other_messages_are_left_to_pynetdicom() -> None:
    plain = request()
    response = C_STORE()
    response.MessageIDBeingRespondedTo, response.Status = 9, 0
    response.AffectedSOPClassUID, response.AffectedSOPInstanceUID = CT, "1.2.3"
    answered = pynetdicom_command(C_STORE_RSP, response)
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, "1.2.840.10008.1.1"
    echoed = pynetdicom_command(C_ECHO_RQ, echo)
    assert store_request.store_request(b"\x03" + answered) is None  # a response
    assert store_request.store_request(b"\x03" + echoed) is None  # no data set
    assert store_request.store_request(b"\x01" + plain) is None  # not the last fragment
    assert store_request.store_request(b"\x02" + plain) is None  # a data set fragment
    assert store_request.store_request(b"\x03" + plain[:-3]) is None  # cut short
    wrong_length = plain[:8] + (len(plain) - 11).to_bytes(4, "little") + plain[12:]
    assert store_request.store_request(b"\x03" + wrong_length) is None
    not_ascii = plain.replace(b"1.2.3.4", b"1.2.\xe9.4")
    assert store_request.store_request(b"\x03" + not_ascii) is None
    assert store_request.store_request(b"\x03" + plain) is not None


def test_a_command_fragment_within_the_data_set_is_refused() -> None:
    command = b"\x03" + request()
    fast_request = store_request.store_request(command)
    assert fast_request is not None
    message = StoreMessage(fast_request, 1)
    assert not message.decode_msg(p_data((1, command), (1, b"\x00abcd")))
    assert message.decode_msg(p_data((1, command), (1, b"\x02efgh")))
    with pytest.raises(ValueError, match="command fragment"):
        message.message_to_primitive()


def test_an_scp_receives_through_the_direct_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom SCU -> in-process SCP: each data set arrives whole, by the direct path."""
    server.prepare_associations()
    made: list[int] = []
    original = StoreMessage.message_to_primitive

    def spy(self: StoreMessage) -> C_STORE:
        made.append(len(self.fragments))
        return original(self)

    monkeypatch.setattr(StoreMessage, "message_to_primitive", spy)
    received: list[bytes] = []
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        with lock:
            received.append(event.request.DataSet.getvalue())
        return 0x0000

    scp_ae = AE(ae_title="DIRECT_SCP")
    scp_ae.maximum_pdu_size = 16384  # the data sets come in several PDUs
    scp_ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    scp = scp_ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        port = scp.socket.getsockname()[1]  # type: ignore[union-attr]
        scu_ae = AE(ae_title="SENDER")
        scu_ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = scu_ae.associate("127.0.0.1", port, ae_title="DIRECT_SCP")
        assert assoc.is_established
        sent = []
        for n in range(3):
            ds = Dataset()
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
            ds.PatientName, ds.InstanceNumber, ds.BitsAllocated = "DIRECT^PATH", n, 8
            ds.PixelData = bytes([n + 1]) * (30000 + 2 * n)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000
            sent.append(ds)
        assoc.release()
    finally:
        scp.shutdown()
    assert len(made) == 3 and all(fragments > 1 for fragments in made)
    for ds, data in zip(sent, received, strict=True):
        back = dcmread(BytesIO(data), force=True)  # a bare data set, Explicit VR LE
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.PixelData == ds.PixelData
