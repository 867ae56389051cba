"""C-STORE requests read straight from their command set, without pydicom.

Every instance a modality, a PACS or a C-MOVE sends to the hub arrives as a
C-STORE-RQ (PS3.7 9.3.1.1). pynetdicom 3.0 reads each one by decoding its command
set into a pydicom ``Dataset``, picking the message class from it, copying every
element into a new primitive, and writing every data set fragment into a
``BytesIO``: in a profile of ingest from dcmtk's storescu, about a tenth of a
gateway's interpreter time per instance.

:func:`install` reads the common case directly. When no message is being
received and a P-DATA-TF starts with one complete command (PS3.8 E.2: control
header "command, last fragment"), Implicit VR Little Endian (PS3.7 6.3.1), whose
elements are those of a C-STORE-RQ with a data set (Command Group Length,
Affected SOP Class UID, Command Field 0x0001, Message ID, Priority, Command Data
Set Type, Affected SOP Instance UID, and optionally Move Originator Application
Entity Title and Message ID, PS3.7 Table 9.3-1), the primitive is made from those
values through pynetdicom's own validating setters, and the data set fragments
that follow are kept as they come and joined once. The message then takes
pynetdicom's usual way to the service class (the message queue, ``EVT_C_STORE``),
so the handler sees the same primitive. Anything else, an association with a
handler bound to ``EVT_DIMSE_RECV`` (whose event would not carry a decoded command
set), or pynetdicom set to receive data sets into files, goes through pynetdicom as
before.
"""

from __future__ import annotations

import functools
import threading
from io import BytesIO
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE

from pacs_hub.gateway.pdata import NO_DATASET
from pacs_hub.gateway.store_response import _uid, _us, command_fields, response_from

C_STORE_RQ = 0x0001
REQUIRED = frozenset(
    {0x00000000, 0x00000002, 0x00000100, 0x00000110, 0x00000700, 0x00000800, 0x00001000}
)
MOVE_ORIGINATOR = frozenset({0x00001030, 0x00001031})
_US_TAGS = (0x00000100, 0x00000110, 0x00000700, 0x00000800)
_INSTALL_LOCK = threading.Lock()


def request_from(fields: dict[int, bytes], length: int) -> C_STORE | None:
    """The C-STORE-RQ primitive, without its data set, of a command's elements
    (``length`` bytes in all); None when it is anything else."""
    if not REQUIRED <= fields.keys() <= REQUIRED | MOVE_ORIGINATOR:
        return None
    if sum(8 + len(value) for value in fields.values()) != length:
        return None  # a value cut short
    if len(fields[0x00000000]) != 4 or _us(fields[0x00000000]) != length - 12:
        return None  # Command Group Length (UL) must count every element after it
    if any(len(fields[tag]) != 2 for tag in _US_TAGS):
        return None
    if _us(fields[0x00000100]) != C_STORE_RQ or _us(fields[0x00000800]) == NO_DATASET:
        return None
    primitive = C_STORE()
    try:
        primitive.MessageID = _us(fields[0x00000110])
        primitive.AffectedSOPClassUID = _uid(fields[0x00000002])
        primitive.AffectedSOPInstanceUID = _uid(fields[0x00001000])
        primitive.Priority = _us(fields[0x00000700])
        if MOVE_ORIGINATOR & fields.keys():
            originator = fields.get(0x00001030, b"").decode("ascii").strip(" \x00")
            message_id = fields.get(0x00001031, b"")
            if not originator or len(message_id) != 2:
                return None
            primitive.MoveOriginatorApplicationEntityTitle = originator
            primitive.MoveOriginatorMessageID = _us(message_id)
    except (UnicodeDecodeError, ValueError, TypeError):
        return None  # pynetdicom's own reading decides, and reports it
    if primitive.AffectedSOPClassUID is None or primitive.AffectedSOPInstanceUID is None:
        return None
    return primitive


def store_request(data: bytes) -> C_STORE | None:
    """The C-STORE-RQ primitive of one complete command fragment (its control header
    byte first), without its data set; None when it is anything else."""
    fields = command_fields(data)
    return None if fields is None else request_from(fields, len(data) - 1)


class StoreMessage:
    """Stands in for pynetdicom's ``DIMSEMessage`` while one C-STORE-RQ is received.

    ``decode_msg`` and ``message_to_primitive`` are what
    ``DIMSEServiceProvider.receive_primitive`` calls; the attributes it resets
    afterwards exist so that it can.
    """

    def __init__(self, primitive: C_STORE, context_id: int) -> None:
        self.primitive = primitive
        self.context_id = context_id
        self.fragments: list[memoryview] = []
        self.command_seen = False
        self.invalid = False
        self.encoded_command_set: Any = None
        self.data_set: Any = None
        self._data_set_file: Any = None
        self._data_set_path: Any = None

    def decode_msg(self, primitive: Any, assoc: Any = None) -> bool:
        """Take a P-DATA's fragments; True once the data set's last one is in (PS3.8 E.2)."""
        for _context_id, data in primitive.presentation_data_value_list:
            control = data[0]
            if control & 0x01:  # a command fragment: only the one already read is expected
                self.invalid = self.invalid or self.command_seen
                self.command_seen = True
                continue
            self.fragments.append(memoryview(data)[1:])  # copied once, when joined
            if control & 0x02:
                return True
        return False

    def message_to_primitive(self) -> C_STORE:
        """The C-STORE primitive with its data set, as pynetdicom would make it."""
        if self.invalid:
            raise ValueError("a command fragment arrived within a C-STORE data set")
        self.primitive.DataSet = BytesIO(b"".join(self.fragments))
        self.fragments = []
        self.primitive._context_id = self.context_id
        self.primitive._dataset_path = None
        self.primitive._dataset_file = None
        return self.primitive


def install() -> None:
    """Read common C-STORE requests, and plain C-STORE responses
    (:mod:`~pacs_hub.gateway.store_response`), directly; once per process.

    One hook on ``DIMSEServiceProvider.receive_primitive``: the first fragment of each
    message has its command elements read once, then taken as a response, else as a
    request, else left to pynetdicom.
    """
    with _INSTALL_LOCK:
        original = DIMSEServiceProvider.receive_primitive
        if getattr(original, "_pacs_hub_store", False):
            return

        @functools.wraps(original)
        def receive_primitive(self: DIMSEServiceProvider, primitive: Any) -> None:
            values = getattr(primitive, "presentation_data_value_list", None)
            if self.message is None and values:
                context_id, data = values[0]
                fields = command_fields(data)  # read once, for both directions
                bound = fields is not None and self.assoc.get_handlers(evt.EVT_DIMSE_RECV)
                if fields is not None and not (bound and bound[0]):
                    response = response_from(fields) if len(values) == 1 else None
                    if response is not None:
                        response._context_id = context_id
                        response._dataset_path = None
                        response._dataset_file = None
                        self.msg_queue.put((context_id, response))
                        return
                    request = None
                    if not _config.STORE_RECV_CHUNKED_DATASET:
                        request = request_from(fields, len(data) - 1)
                    if request is not None:
                        self.message = StoreMessage(request, context_id)  # type: ignore[assignment]
            original(self, primitive)

        receive_primitive._pacs_hub_store = True  # type: ignore[attr-defined]
        DIMSEServiceProvider.receive_primitive = receive_primitive  # type: ignore[method-assign]
