"""Pending C-MOVE responses kept while the destination stores (gateway.deferred): kept
only inside the block, only Pending ones without Identifier, written in order before
anything else the thread sends and when the block ends."""

from __future__ import annotations

import threading
from io import BytesIO
from typing import Any

from pynetdicom.dimse_primitives import C_FIND, C_MOVE

from pacs_hub.gateway import deferred


class Provider:
    """Records what is sent, as a DIMSE service provider's ``send_msg`` would send it."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int | None]] = []

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if deferred.defer(self, primitive, context_id):
            return
        deferred.flush()
        self.sent.append((primitive.Status, primitive.NumberOfRemainingSuboperations))


def _move_response(status: int, remaining: int | None = None) -> C_MOVE:
    rsp = C_MOVE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = status
    rsp.NumberOfRemainingSuboperations = remaining
    return rsp


def test_pending_responses_wait_for_a_flush_and_keep_their_counts() -> None:
    provider = Provider()
    rsp = _move_response(0xFF00)
    with deferred.pending_moves_deferred():
        for remaining in (2, 1):  # pynetdicom reuses one primitive
            rsp.NumberOfRemainingSuboperations = remaining
            provider.send_msg(rsp, 1)
        assert provider.sent == []
        deferred.flush()  # the next sub-operation is on the wire
        assert provider.sent == [(0xFF00, 2), (0xFF00, 1)]
        rsp.NumberOfRemainingSuboperations = 0
        provider.send_msg(rsp, 1)
    assert provider.sent == [(0xFF00, 2), (0xFF00, 1), (0xFF00, 0)]  # the block's end


def test_anything_else_sent_goes_after_what_was_kept() -> None:
    provider = Provider()
    with deferred.pending_moves_deferred():
        provider.send_msg(_move_response(0xFF00, 0), 1)
        provider.send_msg(_move_response(0x0000, 0), 1)  # the final response
    assert provider.sent == [(0xFF00, 0), (0x0000, 0)]


def test_only_pending_move_responses_without_identifier_are_kept() -> None:
    with deferred.pending_moves_deferred():
        with_identifier = _move_response(0xFF00, 1)
        with_identifier.Identifier = BytesIO(b"\x08\x00\x58\x00\x00\x00\x00\x00")
        find = C_FIND()
        find.MessageIDBeingRespondedTo = 1
        find.Status = 0xFF00
        assert not deferred.defer(Provider(), with_identifier, 1)
        assert not deferred.defer(Provider(), find, 1)
        assert not deferred.defer(Provider(), _move_response(0xB000, 0), 1)
    assert not deferred.defer(Provider(), _move_response(0xFF00, 1), 1)  # outside a block


def test_another_thread_sends_at_once() -> None:
    provider = Provider()
    with deferred.pending_moves_deferred():
        other = threading.Thread(target=provider.send_msg, args=(_move_response(0xFF00, 3), 1))
        other.start()
        other.join()
        assert provider.sent == [(0xFF00, 3)]
