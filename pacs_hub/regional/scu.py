"""The hub as a DICOM *requestor* of establishment PACS: node look-up and associations.

Retrieve on demand (:mod:`pacs_hub.regional.pull`), prefetch and backup open
associations (PS3.8 7.1) to the nodes whose role is ``pacs``, calling with the hub's
own AE title (the PACS must know it, as it must for a C-MOVE back to the hub). Every
requested socket gets TCP_NODELAY, as the gateway's do; the timeouts come from the
settings. Federated C-FIND keeps its own associations
(:mod:`pacs_hub.regional.remote_find`), under the query's deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import select

from pacs_hub.config import Settings
from pacs_hub.errors import HubError, UnknownNode
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Node

LOGGER = logging.getLogger(__name__)
PACS_ROLE = "pacs"
PENDING = (0xFF00, 0xFF01)
"""Pending statuses of C-FIND, C-MOVE and C-GET responses (PS3.4 C.4.1.1.4, C.4.2.1.5)."""


class SourceUnavailable(HubError):
    """A remote PACS refused, dropped or did not answer an association in time."""

    dicom_status = 0xA702
    http_status = 502
    title = "Remote PACS unavailable"


@dataclass(frozen=True, slots=True)
class PacsNode:
    """A registered node with role ``pacs``: an establishment's query/retrieve peer."""

    pk: int
    ae_title: str
    host: str
    port: int


def _record(node: Node) -> PacsNode:
    return PacsNode(node.id, node.ae_title, node.host, node.port)


def pacs_nodes(database: Database) -> list[PacsNode]:
    """Every node whose role is ``pacs``, by AE title."""
    with database.reader() as session:
        stmt = select(Node).where(Node.role == PACS_ROLE).order_by(Node.ae_title)
        return [_record(node) for node in session.scalars(stmt)]


def pacs_node(database: Database, ae_title: str) -> PacsNode:
    """The node registered as ``ae_title``; :class:`UnknownNode` if none or not a PACS."""
    with database.reader() as session:
        node = session.scalars(select(Node).where(Node.ae_title == ae_title.strip())).one_or_none()
        if node is None:
            raise UnknownNode(f"no node with AE title {ae_title.strip()[:16]!r}")
        if node.role != PACS_ROLE:
            raise UnknownNode(f"node {node.ae_title} has role {node.role!r}, expected 'pacs'")
        return _record(node)


def node_by_pk(database: Database, pk: int) -> PacsNode | None:
    """The node with primary key ``pk`` (any role), or None."""
    with database.reader() as session:
        node = session.get(Node, pk)
        return _record(node) if node is not None else None


def requestor_ae(settings: Settings, contexts: Sequence[str]) -> AE:
    """An AE calling as the hub (``settings.ae_title``) proposing ``contexts``, with the
    gateway's ACSE, DIMSE and network timeouts."""
    from pacs_hub.gateway.server import prepare_associations  # no import cycle

    prepare_associations()
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.acse_timeout = ae.connection_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    for uid in contexts:
        ae.add_requested_context(uid)
    return ae


def associate(ae: AE, node: PacsNode) -> Association:
    """An established association with ``node``; :class:`SourceUnavailable` otherwise."""
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        reason = "association rejected"
    elif assoc.is_aborted:
        reason = "association aborted"
    else:
        reason = "no association (connection refused or timed out)"
    raise SourceUnavailable(f"{node.ae_title}: {reason}")
