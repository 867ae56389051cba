"""PDUs read from the socket in one piece, P-DATA values handed on without copies.

pynetdicom 3.0 reads a PDU (``DULServiceProvider._read_pdu_data``) 4096 bytes per
``recv()`` call, appending each piece to a ``bytearray``, then copies the whole into
a second ``bytearray``, then into ``bytes``, then copies each Presentation Data
Value out of it. A 525 KB CT slice in 256 KiB PDUs is ~130 system calls and four
copies of the instance before the DIMSE layer sees it.

:func:`install` replaces both steps, keeping pynetdicom's events and log messages:

* ``AssociationSocket.recv`` fills one buffer of the size asked, as much per call as
  the socket holds (``recv_into``);
* ``_read_pdu_data`` reads a PDU's header and body into that one buffer. A
  P-DATA-TF (PS3.8 9.3.5: PDV items of Item-length, Presentation-context-ID and the
  value, its message control header first, PS3.8 E.2) becomes its P-DATA primitive
  directly: a command fragment as ``bytes`` (a few dozen bytes), a data set
  fragment as a ``memoryview`` of the buffer, which pynetdicom's and the hub's
  DIMSE readers write or join as they are. Other PDUs, and every PDU while a
  handler is bound to ``EVT_DATA_RECV`` or ``EVT_PDU_RECV`` (whose events carry the
  bytes and the decoded PDU), go through pynetdicom's decoding as before.
"""

from __future__ import annotations

import functools
import struct
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.dul import LOGGER as DUL_LOGGER
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

P_DATA_TF = 0x04
ONE_BUFFER = 4 << 20
"""Largest read given one buffer up front; a longer one (a PDU above any maximum
length negotiated here, PS3.8 D.1) is read as pynetdicom reads it, as the bytes come,
so that a peer cannot make the hub reserve memory it does not send."""
PDU_TYPES = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07})
_HEADER = struct.Struct(">BBL")
_ITEM = struct.Struct(">LB")
_INSTALL_LOCK = threading.Lock()
_PYNETDICOM_RECV = AssociationSocket.recv


def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: ``nr_bytes`` from the socket (fewer if it closes)."""
    assert self.socket is not None
    if nr_bytes > ONE_BUFFER:
        return bytearray(_PYNETDICOM_RECV(self, nr_bytes))
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    done = 0
    while done < nr_bytes:
        got = self.socket.recv_into(view[done:], nr_bytes - done)
        if not got:  # the connection closed: what was read so far
            del view
            del buffer[done:]
            return buffer
        done += got
    return buffer


class ReadPData:
    """A received P-DATA-TF whose primitive is made from views of its buffer."""

    def __init__(self, primitive: P_DATA) -> None:
        self._primitive = primitive

    def to_primitive(self) -> P_DATA:
        return self._primitive


def p_data(body: memoryview) -> P_DATA:
    """The P-DATA primitive of a P-DATA-TF body (PS3.8 9.3.5.1); ValueError if malformed."""
    values: list[tuple[int, bytes | memoryview]] = []
    pos, size = 0, len(body)
    while pos < size:
        if pos + 6 > size:
            raise ValueError("a partial PDV item header")
        length, context_id = _ITEM.unpack_from(body, pos)
        end = pos + 4 + length
        if length < 2 or end > size:
            raise ValueError("a PDV item length outside the PDU")
        value = body[pos + 5 : end]
        values.append((context_id, bytes(value) if value[0] & 0x01 else value))
        pos = end
    if not values:
        raise ValueError("a P-DATA-TF without PDV items")
    primitive = P_DATA()
    primitive._presentation_data_value_list = values  # type: ignore[assignment]
    return primitive


def _observed(dul: DULServiceProvider) -> bool:
    """True when a handler wants pynetdicom's own received bytes or PDU objects."""
    return any(dul.assoc.get_handlers(event) for event in (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV))


def _closed(dul: DULServiceProvider, exc: Exception) -> None:
    """The transport closed mid-PDU: pynetdicom's log lines, then Evt17."""
    DUL_LOGGER.error("Connection closed before the entire PDU was received")
    DUL_LOGGER.exception(exc)
    dul.event_queue.put("Evt17")


def read_pdu_data(self: DULServiceProvider, original: Any) -> None:
    """``DULServiceProvider._read_pdu_data`` reading into one buffer (module doc)."""
    if _observed(self):
        original(self)
        return
    sock = self.socket
    assert sock is not None
    try:
        header = sock.recv(6)
        pdu_type, _, pdu_length = _HEADER.unpack(header)
    except (OSError, TimeoutError) as exc:
        _closed(self, exc)
        return
    except struct.error:
        self.event_queue.put("Evt17")
        return
    if pdu_type not in PDU_TYPES:
        DUL_LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return
    try:
        body = sock.recv(pdu_length)
    except (OSError, TimeoutError) as exc:
        _closed(self, exc)
        return
    if len(body) != pdu_length:
        DUL_LOGGER.error(
            f"The received PDU is shorter than expected ({6 + len(body)} of "
            f"{6 + pdu_length} bytes received)"
        )
        self.event_queue.put("Evt17")
        return
    try:
        if pdu_type == P_DATA_TF:
            pdu: Any = ReadPData(p_data(memoryview(body)))
            event = "Evt10"
        else:
            pdu, event = self._decode_pdu(header + body)
        self.event_queue.put(event)
    except Exception as exc:
        DUL_LOGGER.error("Unable to decode the received PDU data")
        DUL_LOGGER.exception(exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)


def install() -> None:
    """Read PDUs into one buffer (module doc), once per process."""
    with _INSTALL_LOCK:
        original = DULServiceProvider._read_pdu_data
        if getattr(original, "_pacs_hub_reader", False):
            return

        @functools.wraps(original)
        def patched(self: DULServiceProvider) -> None:
            read_pdu_data(self, original)

        patched._pacs_hub_reader = True  # type: ignore[attr-defined]
        DULServiceProvider._read_pdu_data = patched  # type: ignore[method-assign]
        AssociationSocket.recv = recv  # type: ignore[method-assign]
