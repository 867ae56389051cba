"""The registry of remote DICOM nodes (AE title, host, port), kept in the index.

Nodes are data, not configuration: a node added with ``pacs-hub nodes add`` (or
``POST /api/nodes``) is seen by running gateways at their next lookup, with no
restart. A node may belong to an establishment (:mod:`pacs_hub.regional.establishments`),
which its calls are attributed to, and has a role: ``pacs`` (a query/retrieve peer,
C-ECHOed by :mod:`pacs_hub.regional.health`), ``modality``, ``workstation`` or
``destination``.

:class:`NodeDirectory` is the per-process view the hot paths use (association
acceptance, ingest): a snapshot of every node and its establishment, reloaded at
most every few seconds.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pacs_hub.errors import HubError, UnknownNode
from pacs_hub.regional.establishments import resolve_establishment
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, Node

LOGGER = logging.getLogger(__name__)
ROLES = ("pacs", "modality", "workstation", "destination")
PERMISSIONS = ("store", "query", "retrieve")
"""What a node may be permitted to do (Node.can_store, can_query, can_retrieve)."""
DIRECTORY_TTL = 3.0
"""Seconds a process keeps its snapshot of the registry (a new node is seen after this)."""


class InvalidNode(HubError):
    """An AE title, host, port or role that PS3.8 or the registry does not allow."""

    http_status = 422
    title = "Invalid node"


class NodeInUse(HubError):
    """A node that other records (routing rules, jobs) still refer to."""

    http_status = 409
    title = "Node in use"


class NodeExists(HubError):
    """``POST /api/nodes`` for an AE title already registered."""

    http_status = 409
    title = "Node already registered"


@dataclass(frozen=True, slots=True)
class RemoteNode:
    """A registered remote application entity, its owner and its last known health."""

    ae_title: str
    host: str
    port: int
    establishment: str
    """Code of the owning establishment ('' when none; free text for rows of old versions)."""
    role: str = "pacs"
    tls: bool = False
    establishment_name: str = ""
    health_status: str = "unknown"
    """unknown, up or down (see :mod:`pacs_hub.regional.health`)."""
    down_since: datetime | None = None
    latency_ms: float | None = None
    health_checked_at: datetime | None = None
    pk: int = 0
    permissions: frozenset[str] = frozenset(PERMISSIONS)
    """Which of store, query, retrieve it may do (:data:`PERMISSIONS`)."""


def validate_ae_title(ae_title: str) -> str:
    """PS3.5 6.2 (AE VR): 1-16 characters, no backslash or control characters."""
    value = ae_title.strip()
    if not 0 < len(value) <= 16:
        raise InvalidNode(f"AE title must be 1 to 16 characters, got {len(value)}")
    if any(c == "\\" or not c.isprintable() or ord(c) > 127 for c in value):
        raise InvalidNode(f"AE title {value!r} has a backslash or non-ASCII character")
    return value


def _check_address(host: str, port: int) -> str:
    if not 0 < port < 65536:
        raise InvalidNode(f"port must be 1-65535, got {port}")
    if not host.strip():
        raise InvalidNode("host is empty")
    return host.strip()


def parse_permissions(value: str | Iterable[str]) -> frozenset[str]:
    """``store,query,retrieve`` (any subset, comma-separated or a list; '' or 'none' for
    nothing) as a set; :class:`InvalidNode` for another word."""
    words = value.split(",") if isinstance(value, str) else list(value)
    names = {w.strip().lower() for w in words if w.strip() and w.strip().lower() != "none"}
    unknown = names - set(PERMISSIONS)
    if unknown:
        raise InvalidNode(
            f"permissions are {', '.join(PERMISSIONS)}; got {', '.join(sorted(unknown))}"
        )
    return frozenset(names)


def _permit(node: Node, permissions: Iterable[str] | None) -> None:
    if permissions is None:
        return
    allowed = parse_permissions(permissions)
    node.can_store = "store" in allowed
    node.can_query = "query" in allowed
    node.can_retrieve = "retrieve" in allowed


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidNode(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def _record(node: Node, owner: Establishment | None) -> RemoteNode:
    return RemoteNode(
        ae_title=node.ae_title,
        host=node.host,
        port=node.port,
        establishment=owner.code if owner else node.establishment,
        role=node.role,
        tls=node.tls,
        establishment_name=owner.name if owner else "",
        health_status=node.health_status,
        down_since=node.down_since,
        latency_ms=node.latency_ms,
        health_checked_at=node.health_checked_at,
        pk=node.id,
        permissions=frozenset(
            name
            for name, ok in zip(
                PERMISSIONS, (node.can_store, node.can_query, node.can_retrieve), strict=True
            )
            if ok is not False
        ),
    )


def _owner(session: Session, node: Node) -> Establishment | None:
    return session.get(Establishment, node.establishment_pk) if node.establishment_pk else None


def _attach(session: Session, node: Node, establishment: str) -> Establishment | None:
    """Point ``node`` at the establishment named by code or name ('' detaches)."""
    owner = resolve_establishment(session, establishment) if establishment.strip() else None
    node.establishment_pk = owner.id if owner else None
    node.establishment = owner.code if owner else ""
    return owner


def add_node(
    db: Database,
    ae_title: str,
    host: str,
    port: int,
    establishment: str = "",
    *,
    role: str = "pacs",
    tls: bool = False,
    replace: bool = True,
    permissions: Iterable[str] | None = None,
) -> RemoteNode:
    """Register a remote node, or update it when ``replace`` (the CLI's ``nodes add``).

    ``permissions``: which of store, query, retrieve it may do (None: all for a new
    node, unchanged for a registered one).

    ``establishment`` is the code or the name of a registered establishment
    (:class:`~pacs_hub.regional.establishments.UnknownEstablishment` otherwise).
    """
    ae_title = validate_ae_title(ae_title)
    host = _check_address(host, port)
    role = _check_role(role)
    with db.session() as session:
        node = session.scalars(select(Node).where(Node.ae_title == ae_title)).one_or_none()
        if node is not None and not replace:
            raise NodeExists(f"a node with AE title {ae_title!r} is already registered")
        if node is None:
            node = Node(ae_title=ae_title, created_at=datetime.now(UTC).replace(tzinfo=None))
            session.add(node)
        _readdress(node, host, port)
        node.role, node.tls = role, tls
        _permit(node, permissions)
        owner = _attach(session, node, establishment)
        session.flush()
        return _record(node, owner)


def update_node(
    db: Database,
    ae_title: str,
    *,
    host: str | None = None,
    port: int | None = None,
    establishment: str | None = None,
    role: str | None = None,
    tls: bool | None = None,
    permissions: Iterable[str] | None = None,
) -> RemoteNode:
    """Change the given fields of a registered node (``establishment=''`` detaches it)."""
    with db.session() as session:
        node = _find(session, ae_title)
        new_port = node.port if port is None else port
        _readdress(node, _check_address(node.host if host is None else host, new_port), new_port)
        if role is not None:
            node.role = _check_role(role)
        if tls is not None:
            node.tls = tls
        _permit(node, permissions)
        owner = _owner(session, node)
        if establishment is not None:
            owner = _attach(session, node, establishment)
        return _record(node, owner)


def _readdress(node: Node, host: str, port: int) -> None:
    """Set the address; a new address makes the last health check meaningless."""
    if node.id is not None and (node.host, node.port) != (host, port):
        node.health_status, node.down_since, node.latency_ms = "unknown", None, None
        node.health_checked_at = None
    node.host, node.port = host, port


def _find(session: Session, ae_title: str) -> Node:
    node = session.scalars(select(Node).where(Node.ae_title == ae_title.strip())).one_or_none()
    if node is None:
        raise UnknownNode(f"no node with AE title {ae_title!r}")
    return node


def list_nodes(db: Database, *, role: str | None = None) -> list[RemoteNode]:
    """Every registered node (of ``role`` when given), by AE title."""
    query = select(Node, Establishment).outerjoin(
        Establishment, Establishment.id == Node.establishment_pk
    )
    if role is not None:
        query = query.where(Node.role == role)
    with db.reader() as session:
        rows = session.execute(query.order_by(Node.ae_title)).all()
        return [_record(node, owner) for node, owner in rows]


def get_node(db: Database, ae_title: str) -> RemoteNode | None:
    """The node registered under ``ae_title``, or None."""
    with db.reader() as session:
        node = session.scalars(select(Node).where(Node.ae_title == ae_title.strip())).one_or_none()
        return _record(node, _owner(session, node)) if node else None


def remove_node(db: Database, ae_title: str) -> None:
    """Forget a node; :class:`UnknownNode` if it was not registered, :class:`NodeInUse`
    while routing rules, queued forwards or retrieve jobs refer to it."""
    try:
        with db.session() as session:
            result = session.execute(delete(Node).where(Node.ae_title == ae_title.strip()))
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise UnknownNode(f"no node with AE title {ae_title!r}")
    except IntegrityError as exc:
        raise NodeInUse(
            f"node {ae_title.strip()!r} is used by routing rules, the routing queue or"
            " retrieve jobs: remove those first"
        ) from exc


@dataclass(frozen=True, slots=True)
class NodeOwner:
    """What the hot paths need to know about a calling or sending AE title."""

    ae_title: str
    establishment: str
    """Code of the owning establishment, '' when none."""
    default_issuer: str
    """The establishment's default Issuer of Patient ID, '' when none."""
    establishment_pk: int | None = None
    """Primary key of the owning establishment (recorded on the studies it sends)."""
    host: str = ""
    """The registered host (name or address)."""
    addresses: frozenset[str] = frozenset()
    """``host`` as IP addresses (a name resolved once per reload; '' when unresolvable)."""
    tls: bool = False
    permissions: frozenset[str] = frozenset({"store", "query", "retrieve"})
    """Which of store, query, retrieve the node may do (the access policy's node rule)."""


def node_addresses(host: str) -> frozenset[str]:
    """The IP addresses of ``host``: itself when it is one, else its resolution (every
    address family); empty when it cannot be resolved. IPv4-mapped IPv6 addresses are
    written as IPv4, so they compare with what a socket reports."""
    try:
        return frozenset({normal_address(host)})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        LOGGER.warning("node host %s does not resolve; calls from it are not recognised", host)
        return frozenset()
    return frozenset(normal_address(str(info[4][0])) for info in infos)


def normal_address(address: str) -> str:
    """An IP address in its canonical text (``::ffff:10.0.0.1`` -> ``10.0.0.1``);
    ValueError when ``address`` is not an IP address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class NodeDirectory:
    """A per-process snapshot of the registry: AE title -> :class:`NodeOwner`.

    Reloaded (one query) when older than ``ttl`` seconds, so a node registered
    while the hub runs is seen within ``ttl``; safe to share between threads.
    When a reload fails the previous snapshot is kept and the next lookup retries.
    """

    def __init__(self, database: Database, ttl: float = DIRECTORY_TTL) -> None:
        self._database = database
        self._ttl = ttl
        self._lock = threading.Lock()
        self._owners: dict[str, NodeOwner] | None = None
        self._loaded_at = 0.0

    def lookup(self, ae_title: str) -> NodeOwner | None:
        """The registered node with this AE title (spaces stripped), or None."""
        return self._snapshot().get(ae_title.strip())

    def _snapshot(self) -> dict[str, NodeOwner]:
        owners = self._owners
        if owners is not None and time.monotonic() - self._loaded_at < self._ttl:
            return owners
        with self._lock:
            if self._owners is not None and time.monotonic() - self._loaded_at < self._ttl:
                return self._owners
            try:
                self._owners = self._load()
            except Exception:
                if self._owners is None:
                    raise
                LOGGER.warning("node registry reload failed; keeping the previous snapshot")
            self._loaded_at = time.monotonic()
            return self._owners

    def _load(self) -> dict[str, NodeOwner]:
        query = select(
            Node.ae_title,
            Establishment.code,
            Establishment.default_issuer,
            Establishment.id,
            Node.host,
            Node.tls,
            Node.can_store,
            Node.can_query,
            Node.can_retrieve,
        ).outerjoin(Establishment, Establishment.id == Node.establishment_pk)
        with self._database.read_connection() as conn:
            rows = conn.execute(query).all()
        resolved: dict[str, frozenset[str]] = {}
        owners = {}
        for ae, code, issuer, est_pk, host, tls, can_store, can_query, can_retrieve in rows:
            if host not in resolved:
                resolved[host] = node_addresses(str(host))
            allowed = zip(PERMISSIONS, (can_store, can_query, can_retrieve), strict=True)
            owners[str(ae)] = NodeOwner(
                str(ae),
                str(code or ""),
                str(issuer or ""),
                est_pk,
                host=str(host),
                addresses=resolved[host],
                tls=bool(tls),
                permissions=frozenset(name for name, ok in allowed if ok is not False),
            )
        return owners
