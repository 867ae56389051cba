"""Pending C-MOVE responses written while the move destination stores, off the
sub-operations' critical path.

A C-MOVE SCP (PS3.4 C.4.2.2) sends its C-STORE sub-operations one at a time on one
association: each waits for the destination's response before the next may start.
pynetdicom's Move SCP sends a Pending C-MOVE response (C.4.2.1.5: the counts of
remaining, completed, failed and warning sub-operations) after each sub-operation
*before* it starts the next, so that write and the requester's reading of it add to
every sub-operation's time while the destination sits idle.

While :func:`pending_moves_deferred` is active in the thread running a Move SCP, the
Pending response (no Identifier) is kept, encoded as it was then, and written by
:func:`flush` once the next C-STORE request is on the wire
(:func:`pacs_hub.gateway.egress.send_loaded`), i.e. while the destination is storing
that instance. Every message the thread sends flushes what was kept first, so the
requester still sees every Pending response, in order, before the final one; their
counts are those of when pynetdicom made them (PS3.4 C.4.2.3.1: Pending responses
report progress, the final response the totals).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom.dimse_primitives import C_MOVE

PENDING = 0xFF00
_LOCAL = threading.local()


@contextmanager
def pending_moves_deferred() -> Iterator[None]:
    """Keep the Pending C-MOVE responses of this thread for :func:`flush` until the
    block ends (everything kept is written then)."""
    _LOCAL.kept = []
    try:
        yield
    finally:
        flush()
        _LOCAL.kept = None


def defer(dimse: Any, primitive: Any, context_id: int) -> bool:
    """Keep ``primitive`` if it is a Pending C-MOVE response without Identifier and this
    thread defers them (True: the caller sends nothing now)."""
    kept: list[tuple[Any, Any, int]] | None = getattr(_LOCAL, "kept", None)
    if (
        kept is None
        or not isinstance(primitive, C_MOVE)
        or primitive.Status != PENDING
        or primitive.Identifier is not None
    ):
        return False
    kept.append((dimse, copy.copy(primitive), context_id))  # pynetdicom reuses it
    return True


def flush() -> None:
    """Write, in order, what this thread kept (through the DIMSE provider's send)."""
    kept: list[tuple[Any, Any, int]] | None = getattr(_LOCAL, "kept", None)
    if not kept:
        return
    _LOCAL.kept = None  # sent now, not kept again
    try:
        for dimse, primitive, context_id in kept:
            dimse.send_msg(primitive, context_id)
    finally:
        kept.clear()
        _LOCAL.kept = kept
