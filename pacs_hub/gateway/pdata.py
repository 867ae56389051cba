"""Sending DIMSE messages as P-DATA-TF PDUs written straight to the socket.

pynetdicom 3.0 sends a message (``DIMSEServiceProvider.send_msg``) by building the
command set as a pydicom ``Dataset``, encoding it twice (once for the Command
Group Length), cutting command and data set into ``P_DATA`` primitives (one per
PDU, each a copied slice), and queueing them for the DUL thread, which turns each
into a ``P_DATA_TF`` object, encodes it and sends it, one PDU per reactor loop.
A 526 KB instance sent to a peer with dcmtk's default 16 KB maximum PDU is 33
primitives, 33 thread hand-overs and 33 encodings.

:func:`install` replaces that path when it is safe to:

* the command set of a C-STORE request or response, of a C-FIND response (PS3.7
  9.3.2.2: one Pending response per match, the Identifier already encoded by the
  service class) and of a C-MOVE/C-GET response without Identifier is encoded
  directly (a handful of Implicit VR Little Endian elements, PS3.7 6.3.1); other
  messages still get pynetdicom's encoding;
* the PDUs (PS3.8 9.3.5: PDU header, one PDV item per PDU, message control header,
  PS3.8 E.2) are cut at the *peer's* maximum length like pynetdicom cuts them, and
  written by the calling thread in one ``sendall``, holding the DUL's lock so that
  the state machine (PS3.8 9.2) is in Sta6 (data transfer) and nothing is queued
  ahead. In any other state, or when something is queued, the message goes through
  pynetdicom's queue as before.

Every message, direct or not, is sent holding the association's *send lock*
(:func:`sending`): pynetdicom queues a message as one primitive per PDU, and a
second thread sending on the same association (a storage commitment report,
PS3.4 J.3.3, while C-STORE responses go out) must not slip a message between
those PDUs: the peer would read one message made of two (PS3.8 E.2). The number
of messages sent is counted (:func:`sent_count`, :func:`wait_sent`), so a thread
can wait until the response it must follow is on the wire.

It only applies when no handler is bound to the events this path does not raise
(``EVT_DIMSE_SENT``, ``EVT_PDU_SENT``, ``EVT_DATA_SENT``, ``EVT_FSM_TRANSITION``);
the hub binds none, and turns pynetdicom's logging handlers off unless it logs at
INFO or below (:func:`~pacs_hub.gateway.server.quiet_pynetdicom_handlers`).
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE

from pacs_hub.gateway import deferred

SILENT_EVENTS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT, evt.EVT_FSM_TRANSITION)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RSP = 0x8010
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_MOVE_RSP = 0x8021
DATASET_PRESENT = 0x0001
NO_DATASET = 0x0101
_PDU_HEADER = struct.Struct(">BBLLBB")  # PDU type, reserved, length, PDV length, id, control
_ELEMENT_HEADER = struct.Struct("<HHL")  # Implicit VR Little Endian: group, element, length
_INSTALL_LOCK = threading.Lock()
_ENCODER_LOCK = threading.Lock()
_STATE_LOCK = threading.Lock()


class SendState:
    """Per association: the lock held while a message is sent, and how many were sent."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.sent = 0
        self.changed = threading.Condition(threading.Lock())

    def count(self) -> None:
        with self.changed:
            self.sent += 1
            self.changed.notify_all()


def sending(assoc: Association) -> SendState:
    """The association's :class:`SendState` (made on first use)."""
    state: SendState | None = getattr(assoc, "_pacs_send", None)
    if state is None:
        with _STATE_LOCK:
            state = getattr(assoc, "_pacs_send", None)
            if state is None:
                state = SendState()
                assoc._pacs_send = state  # type: ignore[attr-defined]
    return state


def sent_count(assoc: Association) -> int:
    """How many DIMSE messages were sent on ``assoc`` so far."""
    return sending(assoc).sent


def wait_sent(assoc: Association, after: int, timeout: float) -> bool:
    """Wait until more than ``after`` messages were sent on ``assoc``; False on timeout."""
    state = sending(assoc)
    with state.changed:
        return state.changed.wait_for(lambda: state.sent > after, timeout)


class PreEncoded(Dataset):
    """A data set handed to pynetdicom already encoded: :attr:`encoded`, for the one
    transfer syntax :attr:`encoding` says (implicit VR, little endian, deflated, as
    pynetdicom asks ``dsutils.encode``). See :func:`pass_pre_encoded`."""

    encoded: bytes
    encoding: tuple[bool, bool, bool]


def pass_pre_encoded(module: ModuleType) -> None:
    """Make ``module.encode`` (pynetdicom's ``dsutils.encode`` as that module imported
    it) give a :class:`PreEncoded`'s bytes as they are when asked for its encoding, and
    None for any other (pynetdicom then fails that message: nothing is converted).
    Idempotent, per module."""
    with _ENCODER_LOCK:
        encode = getattr(module, "encode")  # noqa: B009 (any module importing it)
        if getattr(encode, "_pacs_hub_pre_encoded", False):
            return

        @functools.wraps(encode)
        def encode_pre_encoded(ds: Dataset, *args: Any, **kwargs: Any) -> bytes | None:
            if not isinstance(ds, PreEncoded):
                return cast(bytes | None, encode(ds, *args, **kwargs))
            wanted = (*args, kwargs.get("deflated", False))[:3]
            return ds.encoded if tuple(wanted) == ds.encoding else None

        encode_pre_encoded._pacs_hub_pre_encoded = True  # type: ignore[attr-defined]
        setattr(module, "encode", encode_pre_encoded)  # noqa: B010


def _us(group_element: int, value: int) -> bytes:
    return struct.pack("<IIH", group_element, 2, value)


def _text(group_element: int, value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += pad
    return struct.pack("<II", group_element, len(raw)) + raw


def _with_group_length(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return struct.pack("<III", 0x00000000, 4, len(body)) + body


def c_store_command(primitive: C_STORE) -> bytes | None:
    """The encoded command set of a C-STORE request or response, or None.

    None when the primitive carries something encoded here is not meant for
    (an Error Comment, an Offending Element, a missing mandatory value); the caller
    then uses pynetdicom's encoder. Byte-identical to pynetdicom's encoding.
    """
    p = primitive
    if p.MessageIDBeingRespondedTo is None:
        if None in (p.AffectedSOPClassUID, p.MessageID, p.AffectedSOPInstanceUID, p.Priority):
            return None
        return c_store_request_command(
            int(p.MessageID),  # type: ignore[arg-type]
            str(p.AffectedSOPClassUID),
            str(p.AffectedSOPInstanceUID),
            int(p.Priority),
            p.MoveOriginatorApplicationEntityTitle,
            p.MoveOriginatorMessageID,
        )
    if p.Status is None or p.ErrorComment is not None or p.OffendingElement is not None:
        return None
    elements = []
    if p.AffectedSOPClassUID is not None:
        elements.append(_text(0x00020000, str(p.AffectedSOPClassUID), b"\x00"))
    elements += [
        _us(0x01000000, C_STORE_RSP),
        _us(0x01200000, int(p.MessageIDBeingRespondedTo)),
        _us(0x08000000, NO_DATASET),
        _us(0x09000000, int(p.Status)),
    ]
    if p.AffectedSOPInstanceUID is not None:
        elements.append(_text(0x10000000, str(p.AffectedSOPInstanceUID), b"\x00"))
    return _with_group_length(elements)


def c_store_request_command(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int = 2,
    originator_ae_title: str | None = None,
    originator_message_id: int | None = None,
) -> bytes:
    """The encoded command set of a C-STORE request (PS3.7 9.3.1.1), with the Move
    Originator elements of a C-MOVE sub-operation when given (PS3.7 9.1.1.1.10).
    Byte-identical to pynetdicom's encoding of the same request."""
    elements = [
        _text(0x00020000, sop_class_uid, b"\x00"),
        _us(0x01000000, C_STORE_RQ),
        _us(0x01100000, message_id),
        _us(0x07000000, priority),
        _us(0x08000000, DATASET_PRESENT),
        _text(0x10000000, sop_instance_uid, b"\x00"),
    ]
    if originator_ae_title is not None:
        elements.append(_text(0x10300000, originator_ae_title, b" "))
    if originator_message_id is not None:
        elements.append(_us(0x10310000, originator_message_id))
    return _with_group_length(elements)


def retrieve_response_command(primitive: C_GET | C_MOVE) -> bytes | None:
    """The encoded command set of a C-GET or C-MOVE response without Identifier, or None.

    PS3.7 9.3.3.2 / 9.3.4.2: the Pending responses sent after every sub-operation
    carry only the status and the sub-operation counts. A response with an
    Identifier (Failed SOP Instance UID List), an Error Comment or an Offending
    Element is left to pynetdicom. Byte-identical to pynetdicom's encoding.
    """
    p = primitive
    if (
        p.MessageIDBeingRespondedTo is None
        or p.Status is None
        or p.Identifier is not None
        or p.ErrorComment is not None
        or p.OffendingElement is not None
    ):
        return None
    elements = []
    if p.AffectedSOPClassUID is not None:
        elements.append(_text(0x00020000, str(p.AffectedSOPClassUID), b"\x00"))
    field = C_MOVE_RSP if isinstance(p, C_MOVE) else C_GET_RSP
    elements += [
        _us(0x01000000, field),
        _us(0x01200000, int(p.MessageIDBeingRespondedTo)),
        _us(0x08000000, NO_DATASET),
        _us(0x09000000, int(p.Status)),
    ]
    counts = (
        p.NumberOfRemainingSuboperations,
        p.NumberOfCompletedSuboperations,
        p.NumberOfFailedSuboperations,
        p.NumberOfWarningSuboperations,
    )
    for element, count in zip(
        (0x10200000, 0x10210000, 0x10220000, 0x10230000), counts, strict=True
    ):
        if count is not None:
            elements.append(_us(element, int(count)))
    return _with_group_length(elements)


def find_response_command(primitive: C_FIND) -> bytes | None:
    """The encoded command set of a C-FIND response (PS3.7 9.3.2.2), or None.

    A response with an Error Comment or an Offending Element is left to pynetdicom,
    as is an Identifier that is not already encoded. Byte-identical to pynetdicom's
    encoding (Command Data Set Type 0x0001 whenever an Identifier is given).
    """
    p = primitive
    if (
        p.MessageIDBeingRespondedTo is None
        or p.Status is None
        or p.ErrorComment is not None
        or p.OffendingElement is not None
        or not (p.Identifier is None or isinstance(p.Identifier, BytesIO))
    ):
        return None
    elements = []
    if p.AffectedSOPClassUID is not None:
        elements.append(_text(0x00020000, str(p.AffectedSOPClassUID), b"\x00"))
    elements += [
        _us(0x01000000, C_FIND_RSP),
        _us(0x01200000, int(p.MessageIDBeingRespondedTo)),
        _us(0x08000000, NO_DATASET if p.Identifier is None else DATASET_PRESENT),
        _us(0x09000000, int(p.Status)),
    ]
    return _with_group_length(elements)


def find_request_command(message_id: int, sop_class_uid: str, priority: int = 0) -> bytes:
    """The encoded command set of a C-FIND request with an Identifier (PS3.7 9.3.2.1):
    Affected SOP Class UID, Command Field, Message ID, Priority (0: MEDIUM) and
    Command Data Set Type, after the Command Group Length (PS3.7 6.3.1, E.1)."""
    return _with_group_length(
        [
            _text(0x00020000, sop_class_uid, b"\x00"),
            _us(0x01000000, C_FIND_RQ),
            _us(0x01100000, message_id),
            _us(0x07000000, priority),
            _us(0x08000000, DATASET_PRESENT),
        ]
    )


def command_elements(command: bytes) -> dict[int, bytes]:
    """A command set's elements (Implicit VR Little Endian, PS3.7 6.3.1), tag -> value."""
    elements, offset = {}, 0
    while offset + 8 <= len(command):
        group, element, length = _ELEMENT_HEADER.unpack_from(command, offset)
        offset += 8
        elements[group << 16 | element] = command[offset : offset + length]
        offset += length
    return elements


def message_pdus(
    command: bytes, dataset: bytes | memoryview | None, context_id: int, max_pdu: int
) -> bytes:
    """The P-DATA-TF PDUs of one DIMSE message, ready to write (see :func:`_pdus`)."""
    parts: list[bytes | memoryview] = []
    _pdus(parts, command, context_id, max_pdu, 0x01)
    if dataset is not None:
        _pdus(parts, memoryview(dataset), context_id, max_pdu, 0x00)
    return b"".join(parts)


def _fragments(data: bytes | memoryview, size: int) -> Iterator[bytes | memoryview]:
    """``data`` cut into ``size``-byte fragments (one, if size is 0); at least one."""
    if size <= 0 or len(data) <= size:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _pdus(
    parts: list[bytes | memoryview], data: Any, context_id: int, max_pdu: int, flag: int
) -> None:
    """Append the P-DATA-TF PDUs of one command or data set to ``parts``.

    ``flag`` is the message control header's command bit (PS3.8 E.2); the last
    fragment gets the "last" bit. Fragment size as pynetdicom's: maximum PDU
    length minus 6 (PDV item length, context ID, control header).
    """
    pieces = list(_fragments(data, max_pdu - 6 if max_pdu else 0))
    last = len(pieces) - 1
    for index, piece in enumerate(pieces):
        control = flag | (0x02 if index == last else 0x00)
        parts.append(_PDU_HEADER.pack(0x04, 0, len(piece) + 6, len(piece) + 2, context_id, control))
        parts.append(piece)


def _dataset_bytes(primitive: Any) -> bytes | None:
    """The data set a message carries (from memory or a stored file), or None."""
    path_offset: tuple[Path, int] | None = getattr(primitive, "_dataset_path", None)
    if path_offset is not None:
        path, offset = path_offset
        with open(path, "rb") as fp:
            fp.seek(offset)
            return fp.read()
    dataset = getattr(primitive, "DataSet", None)
    if isinstance(dataset, BytesIO):
        return dataset.getvalue()
    return None


def silent(assoc: Association) -> bool:
    """True when no handler is bound to an event the direct path would skip."""
    for event in SILENT_EVENTS:
        handlers = assoc.get_handlers(event)
        if handlers and handlers[0] is not None:
            return False
    return True


def encode_message(primitive: Any) -> tuple[bytes, bytes | None] | None:
    """(command set, data set) of a C-STORE request or response, of a C-FIND response,
    or of a C-MOVE or C-GET response without Identifier; None for any other message."""
    if isinstance(primitive, C_FIND):
        found = find_response_command(primitive)
        if found is None:
            return None
        identifier = primitive.Identifier
        if identifier is None:
            return found, None
        data = identifier.getvalue()
        return (found, data) if data else None  # an empty one: pynetdicom knows
    if isinstance(primitive, C_MOVE | C_GET):
        retrieve = retrieve_response_command(primitive)
        return None if retrieve is None else (retrieve, None)
    if not isinstance(primitive, C_STORE):
        return None
    command = c_store_command(primitive)
    if command is None:
        return None
    if primitive.MessageIDBeingRespondedTo is not None:
        return command, None
    dataset = _dataset_bytes(primitive)
    if not dataset:  # pynetdicom's path knows what to send for an empty data set
        return None
    return command, dataset


def write_message(
    assoc: Association, context_id: int, command: bytes, dataset: bytes | memoryview | None
) -> bool:
    """Write the message's PDUs now if the DUL is in Sta6 with nothing queued.

    Returns False (nothing written) otherwise. A failed write is the transport
    closing (Evt17), as in ``AssociationSocket.send``.
    """
    dul = assoc.dul
    lock: threading.RLock | None = getattr(dul, "_pacs_lock", None)
    if lock is None:
        return False
    max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
    pdus = message_pdus(command, dataset, context_id, max_pdu)
    with lock:
        sock = dul.socket
        if (
            dul.state_machine.current_state != "Sta6"
            or dul.to_provider_queue.qsize()
            or sock is None
            or sock.socket is None
        ):
            return False
        try:
            sock.socket.sendall(pdus)
        except Exception:
            dul.event_queue.put("Evt17")
    return True


def install() -> None:
    """Send C-STORE, C-FIND, C-MOVE and C-GET messages directly when safe, once per process."""
    with _INSTALL_LOCK:
        original = DIMSEServiceProvider.send_msg
        if getattr(original, "_pacs_hub_direct", False):
            return

        @functools.wraps(original)
        def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
            if deferred.defer(self, primitive, context_id):
                return  # a Pending C-MOVE response, written at the next flush
            deferred.flush()  # what this thread kept goes first
            assoc = self.assoc
            state = sending(assoc)
            with state.lock:
                encoded = encode_message(primitive) if silent(assoc) else None
                if encoded is None or not write_message(assoc, context_id, *encoded):
                    original(self, primitive, context_id)
            state.count()

        send_msg._pacs_hub_direct = True  # type: ignore[attr-defined]
        DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
