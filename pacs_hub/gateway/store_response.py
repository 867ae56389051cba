"""C-STORE responses read straight from their command set, without pydicom.

Every C-STORE the hub sends (C-MOVE and C-GET sub-operations, forwarding, restore)
waits for the peer's C-STORE-RSP (PS3.7 9.3.1.2). pynetdicom 3.0 reads each one by
decoding its command set into a pydicom ``Dataset``, picking the message class from
it, then copying every element into a new primitive through validating setters: in
a profile of a C-MOVE to dcmtk's storescp, a third of the hub's interpreter time per
instance.

:func:`install` reads the common case directly: a P-DATA-TF carrying one complete
command (PS3.8 E.2: control header "command, last fragment"), Implicit VR Little
Endian (PS3.7 6.3.1), whose elements are exactly those of a C-STORE-RSP without
data set and without Error Comment, Offending Element or any other optional
element: Command Group Length, Affected SOP Class UID, Command Field (0x8001),
Message ID Being Responded To, Command Data Set Type (0x0101), Status and Affected
SOP Instance UID. The primitive it queues holds what pynetdicom's would. Anything
else, or an association with a handler bound to ``EVT_DIMSE_RECV`` (the fast path
does not raise it), goes through pynetdicom as before. The hook that reads it is
:func:`pacs_hub.gateway.store_request.install`, which reads requests too.

A pull (:mod:`pacs_hub.regional.pull`) gets one Pending C-MOVE-RSP per instance the
PACS sends to the hub (PS3.4 C.4.2.1.5); a C-GET-RSP likewise (C.4.3.1.4). The common
one is read the same way: Command Group Length, Affected SOP Class UID, Command Field
(0x8021 or 0x8010), Message ID Being Responded To, Command Data Set Type (0x0101),
Status Pending (0xFF00 or 0xFF01) and the four Number of Remaining / Completed /
Failed / Warning Sub-operations (PS3.7 9.3.4.2, 9.3.3.2), nothing else (dcmtk's and
Orthanc's). Final responses, which may carry an Identifier, go through pynetdicom.
"""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE

from pacs_hub.gateway.pdata import NO_DATASET, command_elements

C_STORE_RSP = 0x8001
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021
PENDING = (0xFF00, 0xFF01)
ELEMENTS = frozenset(
    {0x00000000, 0x00000002, 0x00000100, 0x00000120, 0x00000800, 0x00000900, 0x00001000}
)
RETRIEVE_PENDING_ELEMENTS = frozenset(
    {0x00000000, 0x00000002, 0x00000100, 0x00000120, 0x00000800, 0x00000900}
    | {0x00001020, 0x00001021, 0x00001022, 0x00001023}
)
_US_ELEMENTS = (0x00000120, 0x00000900, 0x00001020, 0x00001021, 0x00001022, 0x00001023)


def _us(value: bytes) -> int:
    return int.from_bytes(value, "little")


def _uid(value: bytes) -> UID:
    """A UI value as pydicom reads it: trailing NUL padding and spaces removed."""
    return UID(value.decode("ascii").rstrip("\x00 ").strip())


def command_fields(data: bytes) -> dict[int, bytes] | None:
    """The elements of one complete command fragment (its control header byte first,
    PS3.8 E.2: "command, last fragment"); None for anything else."""
    if len(data) < 2 or data[0] & 0x03 != 0x03:
        return None
    return command_elements(data[1:])


def retrieve_pending_from(fields: dict[int, bytes]) -> C_MOVE | C_GET | None:
    """The Pending C-MOVE-RSP or C-GET-RSP primitive of a command's elements, or None
    when it is anything else (see the module docstring)."""
    if any(len(fields[tag]) != 2 for tag in _US_ELEMENTS):
        return None
    field, status = _us(fields[0x00000100]), _us(fields[0x00000900])
    if field not in (C_MOVE_RSP, C_GET_RSP) or status not in PENDING:
        return None
    if _us(fields[0x00000800]) != NO_DATASET:
        return None
    try:
        sop_class = _uid(fields[0x00000002])
    except UnicodeDecodeError:
        return None
    primitive = C_MOVE() if field == C_MOVE_RSP else C_GET()
    primitive._affected_sop_class_uid = sop_class
    primitive._message_id_being_responded_to = _us(fields[0x00000120])
    primitive._status = status
    primitive._number_of_remaining_suboperations = _us(fields[0x00001020])
    primitive._number_of_completed_suboperations = _us(fields[0x00001021])
    primitive._number_of_failed_suboperations = _us(fields[0x00001022])
    primitive._number_of_warning_suboperations = _us(fields[0x00001023])
    return primitive


def response_from(fields: dict[int, bytes]) -> C_STORE | C_MOVE | C_GET | None:
    """The C-STORE-RSP, or Pending C-MOVE-RSP or C-GET-RSP, primitive of a command's
    elements, or None when it is anything else (see the module docstring)."""
    if fields.keys() == RETRIEVE_PENDING_ELEMENTS:
        return retrieve_pending_from(fields)
    if fields.keys() != ELEMENTS:
        return None
    if _us(fields[0x00000100]) != C_STORE_RSP or _us(fields[0x00000800]) != NO_DATASET:
        return None
    if any(len(fields[tag]) != 2 for tag in (0x00000120, 0x00000900)):
        return None
    try:
        sop_class, sop_instance = _uid(fields[0x00000002]), _uid(fields[0x00001000])
    except UnicodeDecodeError:
        return None
    primitive = C_STORE()
    primitive._affected_sop_class_uid = sop_class
    primitive._affected_sop_instance_uid = sop_instance
    primitive._message_id_being_responded_to = _us(fields[0x00000120])
    primitive._status = _us(fields[0x00000900])
    return primitive


def store_response(data: bytes) -> C_STORE | C_MOVE | C_GET | None:
    """The response primitive of one complete command fragment (as :func:`response_from`)."""
    fields = command_fields(data)
    return None if fields is None else response_from(fields)
