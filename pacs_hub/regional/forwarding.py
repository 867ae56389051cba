"""Sending stored instances to a remote node: the hub as Storage SCU (PS3.4 B.2.1).

Used by the routing queue (:mod:`pacs_hub.regional.routing`). Each instance goes out
*as stored*: the file's dataset bytes, in the transfer syntax it was received in,
through the same path as C-MOVE sub-operations
(:func:`pacs_hub.gateway.retrieve.enable_stored_file_sends`); nothing is decoded or
re-encoded. One presentation context is proposed per distinct (SOP class, transfer
syntax) (PS3.8 9.3.2.2); beyond 128 of them the instances are sent over several
associations. Sockets have TCP_NODELAY set, as everywhere in the hub.

A Success (0x0000) or Warning (0x0001, 0xB000-0xBFFF, PS3.4 B.2.3) answer counts as
sent; anything else, or no answer, as failed, with the reason kept for the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.association import Association

from pacs_hub.config import Settings
from pacs_hub.gateway.egress import linked
from pacs_hub.gateway.retrieve import MAX_CONTEXTS, enable_stored_file_sends
from pacs_hub.gateway.server import prepare_associations
from pacs_hub.storage.retrieval import RetrieveItem

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where to send: a registered node's AE title and address."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send achieved: instances accepted, refused, and the first reason."""

    sent: int
    failed: int
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when every instance was accepted."""
        return self.failed == 0 and not self.error


def _is_stored(status: int) -> bool:
    """Success or Warning of the Storage Service Class (PS3.4 B.2.3)."""
    return status in (0x0000, 0x0001) or 0xB000 <= status <= 0xBFFF


def _batches(items: Sequence[RetrieveItem]) -> list[list[RetrieveItem]]:
    """Split ``items`` so that no association needs more than 128 contexts."""
    batches: list[list[RetrieveItem]] = []
    pairs: set[tuple[str, str]] = set()
    for item in items:
        pair = (item.sop_class_uid, item.transfer_syntax_uid)
        if not batches or (pair not in pairs and len(pairs) >= MAX_CONTEXTS):
            batches.append([])
            pairs = set()
        pairs.add(pair)
        batches[-1].append(item)
    return batches


def _application_entity(settings: Settings, items: Sequence[RetrieveItem]) -> AE:
    prepare_associations()
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.connection_timeout = settings.acse_timeout
    ae.maximum_pdu_size = settings.max_pdu_size
    for pair in dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in items):
        ae.add_requested_context(pair[0], [pair[1]])
    return ae


def _association_failure(assoc: Association, where: Destination) -> str:
    if assoc.is_rejected:
        return f"{where.ae_title} at {where.host}:{where.port} rejected the association"
    return (
        f"no association with {where.ae_title} at {where.host}:{where.port}"
        " (connection refused, timed out or aborted)"
    )


def _send_batch(
    settings: Settings, where: Destination, items: Sequence[RetrieveItem]
) -> SendResult:
    ae = _application_entity(settings, items)
    assoc = ae.associate(where.host, where.port, ae_title=where.ae_title)
    if not assoc.is_established:
        return SendResult(0, len(items), _association_failure(assoc, where))
    sent, failed, error = 0, 0, ""
    try:
        for stored in linked(items):  # each read while the peer stores the one before
            if not assoc.is_established:
                failed += 1
                error = error or f"{where.ae_title} released or aborted the association"
                continue
            try:
                answer = assoc.send_c_store(stored)
            except (OSError, ValueError) as exc:
                answer, reason = None, f"{type(exc).__name__}: {exc}"
            else:
                reason = "no answer (timeout or abort)"
            code = int(answer.get("Status", -1)) if answer is not None and answer else -1
            if _is_stored(code):
                sent += 1
                continue
            failed += 1
            if not error:
                error = f"{where.ae_title} refused {stored.stored_sop_instance}: " + (
                    f"status 0x{code:04X}" if code >= 0 else reason
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return SendResult(sent, failed, error)


def send_instances(
    settings: Settings, where: Destination, items: Sequence[RetrieveItem]
) -> SendResult:
    """C-STORE every item to ``where`` as stored; report what was accepted.

    The hub's AE title (``settings.ae_title``) is the calling AE title.
    """
    enable_stored_file_sends()
    sent, failed, error = 0, 0, ""
    for batch in _batches(items):
        result = _send_batch(settings, where, batch)
        sent, failed = sent + result.sent, failed + result.failed
        error = error or result.error
        if result.sent == 0 and result.failed:
            # The peer took nothing: do not knock on its door once per batch.
            remaining = len(items) - sent - failed
            return SendResult(sent, failed + remaining, error)
    LOGGER.info("sent %d instance(s) to %s, %d failed", sent, where.ae_title, failed)
    return SendResult(sent, failed, error)
