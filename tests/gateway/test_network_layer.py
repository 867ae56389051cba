"""The gateway's network layer: direct DIMSE encodings and the event-driven reactors.

The encodings must be byte-identical to pynetdicom's; the reactors must keep
pynetdicom's timeouts and abort handling.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import (
    C_FIND_RQ,
    C_FIND_RSP,
    C_GET_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from pacs_hub.gateway.pdata import (
    c_store_command,
    command_elements,
    encode_message,
    find_request_command,
    find_response_command,
    retrieve_response_command,
    sending,
)
from pacs_hub.gateway.store_response import store_response
from tests.conftest import Hub, start_hub, wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"


def pynetdicom_command(message_class: type, primitive: object) -> bytes:
    """The command set pynetdicom itself would send for ``primitive``."""
    message = message_class()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))  # type: ignore[arg-type]


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1"])
@pytest.mark.parametrize("originator", [None, "MOVESCU", "ODD_AE_TITLE_X"])
def test_c_store_request_command_is_pynetdicoms(instance: str, originator: str | None) -> None:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = instance
    request.Priority = 2
    request.DataSet = BytesIO(b"\x00\x00")
    if originator:
        request.MoveOriginatorApplicationEntityTitle = originator
        request.MoveOriginatorMessageID = 3
    assert c_store_command(request) == pynetdicom_command(C_STORE_RQ, request)


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xB000])
@pytest.mark.parametrize("with_uids", [True, False])
def test_c_store_response_command_is_pynetdicoms(status: int, with_uids: bool) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 65535
    response.Status = status
    if with_uids:
        response.AffectedSOPClassUID = CT
        response.AffectedSOPInstanceUID = "1.2.3.45"
    assert c_store_command(response) == pynetdicom_command(C_STORE_RSP, response)


def test_c_store_response_with_error_comment_is_left_to_pynetdicom() -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 1
    response.Status = 0xA900
    response.ErrorComment = "keep-first conflict"
    assert c_store_command(response) is None


@pytest.mark.parametrize(
    ("primitive_class", "message_class"), [(C_MOVE, C_MOVE_RSP), (C_GET, C_GET_RSP)]
)
@pytest.mark.parametrize("counts", [(499, 1, 0, 0), (None, None, None, None), (0, 500, 2, 1)])
def test_retrieve_response_command_is_pynetdicoms(
    primitive_class: type, message_class: type, counts: tuple[int | None, ...]
) -> None:
    response = primitive_class()
    response.MessageIDBeingRespondedTo = 2
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    response.Status = 0xFF00
    (
        response.NumberOfRemainingSuboperations,
        response.NumberOfCompletedSuboperations,
        response.NumberOfFailedSuboperations,
        response.NumberOfWarningSuboperations,
    ) = counts
    assert retrieve_response_command(response) == pynetdicom_command(message_class, response)


def test_retrieve_response_with_identifier_is_left_to_pynetdicom() -> None:
    response = C_MOVE()
    response.MessageIDBeingRespondedTo = 2
    response.Status = 0xB000
    response.Identifier = BytesIO(b"\x08\x00\x58\x11\x00\x00\x00\x00")
    assert retrieve_response_command(response) is None


@pytest.mark.parametrize("status", [0xFF00, 0xFF01, 0x0000, 0xA700])
@pytest.mark.parametrize("identifier", [None, b"\x10\x00\x20\x00\x02\x00\x00\x00P1"])
@pytest.mark.parametrize("sop_class", [None, "1.2.840.10008.5.1.4.1.2.2.1"])
def test_find_response_command_is_pynetdicoms(
    status: int, identifier: bytes | None, sop_class: str | None
) -> None:
    response = C_FIND()
    response.MessageIDBeingRespondedTo = 9
    response.AffectedSOPClassUID = sop_class
    response.Status = status
    response.Identifier = None if identifier is None else BytesIO(identifier)
    assert find_response_command(response) == pynetdicom_command(C_FIND_RSP, response)
    encoded = encode_message(response)
    assert encoded is not None and encoded[1] == identifier  # the Identifier as encoded


def test_find_request_and_error_comment_are_left_to_pynetdicom() -> None:
    request = C_FIND()
    request.MessageID = 1
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    request.Priority = 2
    request.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    assert encode_message(request) is None  # requests (the hub as SCU) keep pynetdicom's path
    response = C_FIND()
    response.MessageIDBeingRespondedTo = 1
    response.Status = 0xA900
    response.ErrorComment = "bad identifier"
    assert find_response_command(response) is None


@pytest.fixture
def quick_timeouts_hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub whose network and ACSE timeouts are 1 second."""
    running = start_hub(tmp_path / "data", PACS_HUB_NETWORK_TIMEOUT="1", PACS_HUB_ACSE_TIMEOUT="1")
    try:
        yield running
    finally:
        running.stop()


def _associate(hub: Hub) -> object:
    ae = AE(ae_title="NETTEST")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title=hub.ae_title)
    assert assoc.is_established
    return assoc


def test_idle_association_is_aborted_at_the_network_timeout(quick_timeouts_hub: Hub) -> None:
    assoc = _associate(quick_timeouts_hub)
    started = time.monotonic()
    wait_until(lambda: not assoc.is_established, timeout=10, what="network timeout")  # type: ignore[attr-defined]
    assert assoc.is_aborted  # type: ignore[attr-defined]
    assert 0.9 < time.monotonic() - started < 5


def test_silent_connection_is_closed_at_the_acse_timeout(quick_timeouts_hub: Hub) -> None:
    with socket.create_connection(("127.0.0.1", quick_timeouts_hub.dicom_port)) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 0.9 < time.monotonic() - started < 5


def test_a_peer_abort_ends_only_its_association(hub: Hub) -> None:
    aborted = _associate(hub)
    kept = _associate(hub)
    aborted.abort()  # type: ignore[attr-defined]
    assert kept.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    kept.release()  # type: ignore[attr-defined]
    assert kept.is_released  # type: ignore[attr-defined]
    again = _associate(hub)
    assert again.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    again.release()  # type: ignore[attr-defined]


def test_no_response_is_taken_by_the_reactor_of_a_busy_sender() -> None:
    """A ``send_*`` caller always gets its own response (the reactor hand-over).

    With pynetdicom's hand-over about one C-STORE in 3,000 lost its response to the
    reactor when four associations sent at once (the sender then waited out its DIMSE
    timeout); 20,000 sends here.
    """
    result = subprocess.run(
        [sys.executable, "-m", "tests.gateway.send_burst", "5000"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts == {"sent": 20000, "lost": 0}


@pytest.mark.parametrize("message_id", [1, 2, 65535])
@pytest.mark.parametrize("priority", [0, 1, 2])
def test_c_find_request_command_is_pynetdicoms(message_id: int, priority: int) -> None:
    request = C_FIND()
    request.MessageID = message_id
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    request.Priority = priority
    request.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    command = find_request_command(message_id, "1.2.840.10008.5.1.4.1.2.2.1", priority)
    assert command == pynetdicom_command(C_FIND_RQ, request)
    fields = command_elements(command)  # and read back
    assert fields[0x00000100] == (0x0020).to_bytes(2, "little")
    assert fields[0x00000110] == message_id.to_bytes(2, "little")
    assert fields[0x00000002] == b"1.2.840.10008.5.1.4.1.2.2.1\x00"


def pynetdicom_reads(fragment: bytes) -> C_STORE:
    """The primitive pynetdicom's own DIMSE decoding makes of one P-DATA fragment."""
    data = P_DATA()
    data.presentation_data_value_list = [[1, fragment]]
    message = DIMSEMessage()
    assert message.decode_msg(data)
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    return primitive


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700])
@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45"])
def test_a_plain_c_store_response_is_read_as_pynetdicom_reads_it(
    status: int, instance: str
) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 513
    response.AffectedSOPClassUID = CT
    response.AffectedSOPInstanceUID = instance
    response.Status = status
    command = c_store_command(response)
    assert command is not None
    fragment = b"\x03" + command
    fast, slow = store_response(fragment), pynetdicom_reads(fragment)
    assert fast is not None
    for name in ("MessageIDBeingRespondedTo", "AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        assert getattr(fast, name) == getattr(slow, name)
    assert fast.Status == slow.Status == status
    assert fast.is_valid_response and fast.ErrorComment is None


def pynetdicom_reads_any(fragment: bytes) -> object:
    """As :func:`pynetdicom_reads`, whatever the message."""
    data = P_DATA()
    data.presentation_data_value_list = [[1, fragment]]
    message = DIMSEMessage()
    assert message.decode_msg(data)
    return message.message_to_primitive()


RETRIEVE_COUNTS = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)


@pytest.mark.parametrize("kind", ["move", "get"])
@pytest.mark.parametrize("status", [0xFF00, 0xFF01])
def test_a_pending_retrieve_response_is_read_as_pynetdicom_reads_it(kind: str, status: int) -> None:
    response: C_MOVE | C_GET = C_MOVE() if kind == "move" else C_GET()
    response.MessageIDBeingRespondedTo = 77
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    response.Status = status
    for name, value in zip(RETRIEVE_COUNTS, (498, 1, 0, 1), strict=True):
        setattr(response, name, value)
    fragment = b"\x03" + pynetdicom_command(C_MOVE_RSP if kind == "move" else C_GET_RSP, response)
    fast, slow = store_response(fragment), pynetdicom_reads_any(fragment)
    assert fast is not None and type(fast) is type(slow) is type(response)
    names = ("MessageIDBeingRespondedTo", "AffectedSOPClassUID", "Status", *RETRIEVE_COUNTS)
    assert [getattr(fast, n) for n in names] == [getattr(slow, n) for n in names]
    assert [getattr(fast, n) for n in RETRIEVE_COUNTS] == [498, 1, 0, 1]
    assert fast.is_valid_response and fast.Identifier is None and fast.ErrorComment is None


def test_final_or_unusual_retrieve_responses_are_left_to_pynetdicom() -> None:
    response = C_MOVE()
    response.MessageIDBeingRespondedTo = 3
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    response.Status = 0x0000
    for name in RETRIEVE_COUNTS:
        setattr(response, name, 0)
    final = pynetdicom_command(C_MOVE_RSP, response)  # Success: may carry an Identifier
    response.Status = 0xFF00
    response.ErrorComment = "slow"  # an optional element
    commented = pynetdicom_command(C_MOVE_RSP, response)
    response.ErrorComment = None
    response.NumberOfWarningSuboperations = None  # a count left out
    partial = pynetdicom_command(C_MOVE_RSP, response)
    for command in (final, commented, partial):
        assert store_response(b"\x03" + command) is None


def test_other_messages_are_left_to_pynetdicom() -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 2
    response.AffectedSOPClassUID = CT
    response.AffectedSOPInstanceUID = "1.2.3"
    response.Status = 0xA700
    plain = c_store_command(response)
    assert plain is not None
    response.ErrorComment = "no space"  # an optional element: pynetdicom reads it
    commented = pynetdicom_command(C_STORE_RSP, response)
    request = C_STORE()
    request.MessageID, request.Priority = 2, 0
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CT, "1.2.3"
    request.DataSet = BytesIO(b"\x00\x00")
    asked = c_store_command(request)
    assert asked is not None
    assert store_response(b"\x03" + commented) is None
    assert store_response(b"\x03" + asked) is None  # a request, not a response
    assert store_response(b"\x01" + plain) is None  # not the last command fragment
    assert store_response(b"\x02" + plain) is None  # a data set fragment
    assert store_response(b"\x03" + plain) is not None


class _Threads:
    """A pynetdicom SCP (the hub's reactors, installed by conftest) recording which
    thread served each request: the association's DUL thread or its reactor."""

    def __init__(self, store_seconds: float = 0.0, network_timeout: float = 60.0) -> None:
        self.served: list[tuple[str, str]] = []
        self.store_seconds = store_seconds
        handlers = [
            (evt.EVT_C_ECHO, self._echo),
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_C_FIND, self._find),
        ]
        self.ae = AE(ae_title="THREADS")
        self.ae.network_timeout = network_timeout
        self.ae.add_supported_context(Verification)
        self.ae.add_supported_context(CTImageStorage)
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def _who(self, event: evt.Event, what: str) -> None:
        me, assoc = threading.get_ident(), event.assoc
        thread = "dul" if me == assoc.dul.ident else "reactor" if me == assoc.ident else "?"
        self.served.append((what, thread))

    def _echo(self, event: evt.Event) -> int:
        self._who(event, "echo")
        return 0x0000

    def _store(self, event: evt.Event) -> int:
        self._who(event, "store")
        time.sleep(self.store_seconds)
        return 0x0000

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self._who(event, "find")
        yield 0x0000, None

    def acceptor(self) -> Association:
        wait_until(lambda: len(self.server.active_associations) == 1, what="the acceptor")
        return self.server.active_associations[0]


@pytest.fixture
def threads_scp() -> Iterator[_Threads]:
    scp = _Threads()
    try:
        yield scp
    finally:
        scp.server.shutdown()


def _ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, "1.2.826.0.1.3680043.8.498.7"
    ds.PatientID = "THREADS"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def test_c_echo_and_c_store_are_served_in_the_dul_thread(threads_scp: _Threads) -> None:
    """No hand-over to the reactor for a request that needs nothing while served; a
    C-FIND (which may be cancelled while its answers go out) still goes to the reactor."""
    ae = AE(ae_title="NETTEST")
    for context in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", threads_scp.port, ae_title="THREADS")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(_ct()).Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        assert answers[-1][0].Status == 0x0000
        assert assoc.send_c_store(_ct()).Status == 0x0000
    finally:
        assoc.release()
    assert threads_scp.served == [
        ("echo", "dul"),
        ("store", "dul"),
        ("find", "reactor"),
        ("store", "dul"),
    ]


def test_a_c_store_waits_for_the_reactor_while_another_thread_sends(
    threads_scp: _Threads,
) -> None:
    """While another thread holds the association's send lock (a storage commitment
    report going out on it), the DUL thread does not serve: it would take the send lock
    after its own, the other thread the other way round."""
    ae = AE(ae_title="NETTEST")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", threads_scp.port, ae_title="THREADS")
    assert assoc.is_established
    acceptor = threads_scp.acceptor()
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with sending(acceptor).lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(10)
        assert assoc.send_c_store(_ct()).Status == 0x0000
        done.set()
        holder.join(10)
        assert assoc.send_c_store(_ct()).Status == 0x0000
    finally:
        done.set()
        assoc.release()
    assert threads_scp.served == [("store", "reactor"), ("store", "dul")]


def test_a_request_served_in_the_dul_thread_runs_to_its_end_past_the_network_timeout() -> None:
    """As for a request the reactor serves, the network timeout (PS3.8 9.1.5 leaves it
    to the implementation) does not cut a C-STORE short while it is being stored."""
    scp = _Threads(store_seconds=2.0, network_timeout=1.0)
    try:
        ae = AE(ae_title="NETTEST")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="THREADS")
        assert assoc.is_established
        answer = assoc.send_c_store(_ct())
        assert answer.Status == 0x0000
        assert scp.served == [("store", "dul")]
        wait_until(lambda: not assoc.is_established, timeout=10, what="the network timeout")
    finally:
        scp.server.shutdown()
