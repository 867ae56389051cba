"""One Study Root C-FIND association to a PACS, on a non-blocking socket, no thread.

:class:`Link` is driven by whoever polls its socket (:class:`~pacs_hub.regional.
remote_find.MultiFind`): :meth:`Link.on_writable` and :meth:`Link.on_readable` advance
it, :meth:`Link.take_events` hands over each Pending answer's Identifier as it arrived
(:class:`Answered`; PS3.4 C.4.1.3: one Pending response per match) and
:class:`Finished` once every request it was given is answered. Any failure raises
:class:`LinkFailed`, whose message says why.

The upper layer is what a requestor of C-FIND needs (PS3.8 9): an A-ASSOCIATE-RQ
proposing the model with Explicit and Implicit VR Little Endian (pynetdicom's PDU
classes encode it and decode the A-ASSOCIATE-AC or -RJ, PS3.8 9.3.2-9.3.4),
P-DATA-TF PDUs cut at the peer's maximum length whose PDV items are reassembled into
messages (PS3.8 9.3.5, Annex E), A-RELEASE (PS3.8 7.2) and A-ABORT (PS3.8 7.3). The
command sets are Implicit VR Little Endian (PS3.7 6.3.1, 9.3.2;
:func:`pacs_hub.gateway.pdata.find_request_command`), the Identifiers encoded and
decoded by pydicom in the accepted transfer syntax.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from pacs_hub.gateway.pdata import (
    NO_DATASET,
    command_elements,
    find_request_command,
    message_pdus,
)
from pacs_hub.regional.scu import PENDING, PacsNode

MODEL = sc.StudyRootQueryRetrieveInformationModelFind
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
CONTEXT_ID = 1
C_FIND_RSP = 0x8020
COMMAND_FIELD, RESPONDED_TO, DATASET_TYPE, STATUS, ERROR_COMMENT = (
    0x00000100,
    0x00000120,
    0x00000800,
    0x00000900,
    0x00000902,
)
# PDU types (PS3.8 9.3.1) and the fixed PDUs this requestor sends or answers.
ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 2, 3, 4, 5, 6, 7
RELEASE_RQ_PDU = bytes([RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0])
RELEASE_RP_PDU = bytes([RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0])
ABORT_PDU = bytes([ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # source: service user
RELEASE_WAIT = 1.0
_PDU_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")


@dataclass(frozen=True, slots=True)
class Answered:
    """One Pending answer's Identifier from ``ae_title``."""

    ae_title: str
    identifier: Dataset


@dataclass(frozen=True, slots=True)
class Finished:
    """``ae_title`` answered every request (``reason`` empty) or gave up (why)."""

    ae_title: str
    reason: str = ""


class LinkFailed(Exception):
    """The association failed; the message says why (for the unavailable report)."""


def associate_request(calling: str, called: str, max_pdu: int) -> bytes:
    """The A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing the Study Root FIND model."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context(MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    context.context_id = CONTEXT_ID
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    primitive.user_information = [length, uid, version]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


class Link:
    """One association with one PACS on a non-blocking socket, one query at a time.

    :meth:`on_readable` and :meth:`on_writable` advance it; :meth:`take_events`
    hands over what it produced. States: ``connecting`` (TCP), ``associating``
    (A-ASSOCIATE-RQ sent), ``ready`` (idle, or between requests), ``finding``
    (a request sent, its responses coming), ``closed``.
    """

    def __init__(self, node: PacsNode, calling: str, max_pdu: int) -> None:
        self.node = node
        self.state = "connecting"
        self.implicit = False
        self.peer_max_pdu = 0
        self.message_id = 0
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.command = bytearray()
        self.dataset = bytearray()
        self.fields: dict[int, bytes] | None = None
        self.requests: list[Dataset] = []
        self.encoded: dict[tuple[int, bool], bytes] = {}
        self.answered = 0
        self.events: list[Answered | Finished] = []
        self._request_pdu = associate_request(calling, node.ae_title, max_pdu)
        address = socket.getaddrinfo(node.host, node.port, type=socket.SOCK_STREAM)[0]
        self.sock = socket.socket(address[0], address[1], address[2])
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = self.sock.connect_ex(address[4])
        if error not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.sock.close()
            raise LinkFailed(f"no association ({os.strerror(error)})")

    # -- what the poller needs -------------------------------------------------------
    @property
    def wants_write(self) -> bool:
        return self.state == "connecting" or bool(self.outbox)

    def stale(self) -> bool:
        """True when an idle association has something to read: the PACS closed,
        released or aborted it meanwhile (it sends nothing unasked on an idle one)."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)  # data, or b"" when closed
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def start(self, requests: list[Dataset], encoded: dict[tuple[int, bool], bytes]) -> None:
        """Send ``requests`` one after another, as soon as the association is up.

        ``encoded`` holds the Identifiers already encoded (by ``id`` and implicit VR),
        shared by the links of one query: the same request goes to every PACS.
        """
        self.requests, self.encoded, self.answered = list(requests), encoded, 0
        if self.state == "ready":
            self._next_request()

    def on_writable(self) -> None:
        if self.state == "connecting":
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise LinkFailed("no association (connection refused or timed out)")
            self.state = "associating"
            self.outbox += self._request_pdu
        self._flush()

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            raise LinkFailed(f"connection lost ({exc.strerror or exc})") from exc
        if not data:
            raise LinkFailed("connection closed by the PACS")
        self.inbox += data
        while len(self.inbox) >= 6:
            kind, length = _PDU_HEADER.unpack_from(self.inbox)
            if len(self.inbox) < 6 + length:
                return
            body = bytes(self.inbox[6 : 6 + length])
            del self.inbox[: 6 + length]
            self._on_pdu(kind, body)

    def take_events(self) -> list[Answered | Finished]:
        events, self.events = self.events, []
        return events

    # -- the upper layer (PS3.8 9) -----------------------------------------------------
    def _flush(self) -> None:
        if self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                return
            except OSError as exc:
                raise LinkFailed(f"connection lost ({exc.strerror or exc})") from exc
            del self.outbox[:sent]

    def _on_pdu(self, kind: int, body: bytes) -> None:
        header = _PDU_HEADER.pack(kind, len(body))
        if kind == ASSOCIATE_AC and self.state == "associating":
            self._accepted(header + body)
        elif kind == ASSOCIATE_RJ and self.state == "associating":
            rejected = A_ASSOCIATE_RJ()
            rejected.decode(header + body)
            raise LinkFailed(
                f"association rejected (result {rejected.result}, source {rejected.source},"
                f" reason {rejected.reason_diagnostic})"
            )
        elif kind == P_DATA_TF and self.state == "finding":
            self._on_p_data(body)
        elif kind == RELEASE_RQ:
            self.outbox += RELEASE_RP_PDU
            self._flush()
            raise LinkFailed("association released by the PACS")
        elif kind == ABORT:
            raise LinkFailed("association aborted")
        else:
            raise LinkFailed(f"unexpected PDU type 0x{kind:02X} in state {self.state}")

    def _accepted(self, pdu: bytes) -> None:
        accept = A_ASSOCIATE_AC()
        accept.decode(pdu)
        primitive = accept.to_primitive()
        results = primitive.presentation_context_definition_results_list
        context = next((cx for cx in results if cx.context_id == CONTEXT_ID), None)
        if context is None or context.result != 0 or not context.transfer_syntax:
            raise LinkFailed("Study Root C-FIND not accepted by the PACS")
        self.implicit = context.transfer_syntax[0] == ImplicitVRLittleEndian
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
        self.state = "ready"
        if self.requests:
            self._next_request()

    def _next_request(self) -> None:
        request = self.requests.pop(0)
        self.message_id = self.message_id % 0xFFFF + 1
        identifier = self.encoded.get((id(request), self.implicit))
        if identifier is None:
            identifier = encode(request, self.implicit, True)
            if identifier is None:
                raise LinkFailed("cannot encode the request Identifier")
            self.encoded[id(request), self.implicit] = identifier
        command = find_request_command(self.message_id, MODEL)
        self.outbox += message_pdus(command, identifier, CONTEXT_ID, self.peer_max_pdu)
        self.state = "finding"
        self._flush()

    # -- DIMSE messages (PS3.7 9.3.2.2, PS3.8 E.2) -----------------------------------------
    def _on_p_data(self, body: bytes) -> None:
        offset = 0
        while offset + 6 <= len(body):
            length, _context, control = _PDV_HEADER.unpack_from(body, offset)
            fragment = body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            last = bool(control & 0x02)
            if control & 0x01:
                self.command += fragment
                if last:
                    self.fields = command_elements(bytes(self.command))
                    self.command.clear()
                    if self.fields.get(DATASET_TYPE) == NO_DATASET.to_bytes(2, "little"):
                        self._on_response(None)
            else:
                self.dataset += fragment
                if last and self.fields is not None:
                    data, self.dataset = bytes(self.dataset), bytearray()
                    self._on_response(data)

    def _on_response(self, data: bytes | None) -> None:
        fields, self.fields = self.fields or {}, None
        field = int.from_bytes(fields.get(COMMAND_FIELD, b""), "little")
        responded = int.from_bytes(fields.get(RESPONDED_TO, b""), "little")
        if field != C_FIND_RSP or responded != self.message_id:
            raise LinkFailed(f"unexpected DIMSE message 0x{field:04X}")
        status = int.from_bytes(fields.get(STATUS, b""), "little")
        title = self.node.ae_title
        if status in PENDING:
            if data:
                identifier = decode(BytesIO(data), self.implicit, True)
                self.answered += 1
                self.events.append(Answered(title, identifier))
            return
        if status != 0x0000:
            comment = fields.get(ERROR_COMMENT, b"").decode("ascii", "replace").strip(" \x00")
            raise LinkFailed(f"C-FIND status 0x{status:04X} {comment}".strip())
        self.state = "ready"
        if self.requests:
            self._next_request()
        else:
            self.events.append(Finished(title))

    # -- ending ---------------------------------------------------------------------
    def abort(self) -> None:
        """A-ABORT (PS3.8 7.3.1) if the association is up, then close."""
        if self.state in ("ready", "finding"):
            with contextlib.suppress(OSError):
                self.sock.send(ABORT_PDU)
        self.close()

    def release(self) -> None:
        """A-RELEASE (PS3.8 7.2): the request, the reply awaited briefly, then close."""
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(RELEASE_WAIT)
            self.sock.sendall(RELEASE_RQ_PDU)
            self.sock.recv(64)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        self.state = "closed"
        self.sock.close()
