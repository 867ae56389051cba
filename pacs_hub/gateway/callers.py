"""Who may associate with the hub: registered nodes only, unless configured otherwise.

On each A-ASSOCIATE-RQ (PS3.8 7.1.1) the calling AE title is looked up in the node
registry (:class:`~pacs_hub.regional.nodes.NodeDirectory`, a per-process snapshot
reloaded every few seconds, so a node added while the hub runs is accepted without
a restart). With ``PACS_HUB_UNKNOWN_CALLERS=refuse`` an unregistered caller gets an
A-ASSOCIATE-RJ: result rejected-permanent (1), source DICOM UL service-user (1),
reason calling-AE-title-not-recognized (3) (PS3.8 9.3.4). With ``accept`` it is let
in (the embedded demo) and logged as unregistered. Accepted calls from a registered
node are logged with the node's establishment.

With the access policy on (``PACS_HUB_AUTH_REQUIRED=true``) the stricter admission
of :mod:`pacs_hub.gateway.access` applies instead, whatever ``unknown_callers`` says:
registered nodes only, from their registered host, over TLS with a client
certificate when the node is marked ``tls``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pynetdicom import evt
from pynetdicom.association import Association

from pacs_hub.gateway import access
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.regional.nodes import NodeDirectory

LOGGER = logging.getLogger(__name__)
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SERVICE_USER = 0x01
NO_REASON_GIVEN = 0x01
CALLING_AE_NOT_RECOGNIZED = 0x03


@dataclass
class CallerPolicy:
    """The A-ASSOCIATE-RQ check of one gateway process."""

    directory: NodeDirectory
    refuse_unknown: bool
    _warned: set[str] = field(default_factory=set)
    ctx: GatewayContext | None = None
    """Set for the hub's SCP: the access policy's admission applies when it is on."""

    @classmethod
    def for_gateway(cls, ctx: GatewayContext) -> CallerPolicy:
        """The policy of ``ctx.settings.unknown_callers``, sharing the ingest's directory.

        One snapshot per process: once a caller is accepted as a registered node,
        the ingest of what it sends sees that node (and its default issuer) too.
        """
        return cls(ctx.ingestor.senders, ctx.settings.unknown_callers == "refuse", ctx=ctx)

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED handler (acceptor side): reject or attribute the caller."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        if not assoc.is_acceptor or request is None:
            return
        calling = str(request.calling_ae_title).strip()
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        enforced = self.ctx is not None and access.policy_of(self.ctx.settings).enforced
        try:
            owner = self.directory.lookup(calling)
        except Exception:
            LOGGER.exception("association from %s (%s): node registry unavailable", calling, peer)
            if self.refuse_unknown or enforced:
                _reject(assoc, REJECTED_TRANSIENT, NO_REASON_GIVEN)
            return
        if enforced and self.ctx is not None and not access.admit(self.ctx, assoc, calling, owner):
            _reject(assoc, REJECTED_PERMANENT, CALLING_AE_NOT_RECOGNIZED)
            return
        if owner is not None:
            LOGGER.info(
                "association from %s (establishment %s) at %s",
                calling,
                owner.establishment or "none",
                peer,
            )
        elif self.refuse_unknown:
            LOGGER.warning("association from unregistered AE %s at %s refused", calling, peer)
            _reject(assoc, REJECTED_PERMANENT, CALLING_AE_NOT_RECOGNIZED)
        elif calling not in self._warned:
            self._warned.add(calling)  # once per AE title and process, not per association
            LOGGER.info("association from unregistered AE %s at %s accepted", calling, peer)

    def handlers(self) -> list[evt.EventHandlerType]:
        """The event handlers to bind to the SCP."""
        return [(evt.EVT_REQUESTED, self.on_requested)]


def _reject(assoc: Association, result: int, diagnostic: int) -> None:
    """Send A-ASSOCIATE-RJ and end the association, as pynetdicom's own ACSE checks do."""
    assoc.acse.send_reject(result, SERVICE_USER, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def handlers(ctx: GatewayContext) -> list[evt.EventHandlerType]:
    """EVT_REQUESTED handler of this gateway process (one registry snapshot per process)."""
    return CallerPolicy.for_gateway(ctx).handlers()
