"""The registry of remote DICOM nodes (AE title, host, port), kept in the index.

Nodes are data, not configuration: a node added with ``pacs-hub nodes add`` is
seen by running gateways at their next lookup, with no restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select

from pacs_hub.errors import HubError, UnknownNode
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Node


class InvalidNode(HubError):
    """An AE title, host or port that PS3.8 does not allow."""

    http_status = 422
    title = "Invalid node"


@dataclass(frozen=True, slots=True)
class RemoteNode:
    """A registered remote application entity."""

    ae_title: str
    host: str
    port: int
    establishment: str


def validate_ae_title(ae_title: str) -> str:
    """PS3.5 6.2 (AE VR): 1-16 characters, no backslash or control characters."""
    value = ae_title.strip()
    if not 0 < len(value) <= 16:
        raise InvalidNode(f"AE title must be 1 to 16 characters, got {len(value)}")
    if any(c == "\\" or not c.isprintable() or ord(c) > 127 for c in value):
        raise InvalidNode(f"AE title {value!r} has a backslash or non-ASCII character")
    return value


def _record(node: Node) -> RemoteNode:
    return RemoteNode(node.ae_title, node.host, node.port, node.establishment)


def add_node(
    db: Database, ae_title: str, host: str, port: int, establishment: str = ""
) -> RemoteNode:
    """Register (or update) a remote node."""
    ae_title = validate_ae_title(ae_title)
    if not 0 < port < 65536:
        raise InvalidNode(f"port must be 1-65535, got {port}")
    if not host.strip():
        raise InvalidNode("host is empty")
    with db.session() as session:
        node = session.scalars(select(Node).where(Node.ae_title == ae_title)).one_or_none()
        if node is None:
            node = Node(ae_title=ae_title, created_at=datetime.now(UTC).replace(tzinfo=None))
            session.add(node)
        node.host, node.port, node.establishment = host.strip(), port, establishment
        return _record(node)


def list_nodes(db: Database) -> list[RemoteNode]:
    """Every registered node, by AE title."""
    with db.reader() as session:
        return [_record(n) for n in session.scalars(select(Node).order_by(Node.ae_title))]


def get_node(db: Database, ae_title: str) -> RemoteNode | None:
    """The node registered under ``ae_title``, or None."""
    with db.reader() as session:
        node = session.scalars(select(Node).where(Node.ae_title == ae_title.strip())).one_or_none()
        return _record(node) if node else None


def remove_node(db: Database, ae_title: str) -> None:
    """Forget a node; :class:`UnknownNode` if it was not registered."""
    with db.session() as session:
        result = session.execute(delete(Node).where(Node.ae_title == ae_title.strip()))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise UnknownNode(f"no node with AE title {ae_title!r}")
