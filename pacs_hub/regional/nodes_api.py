"""Admin API for DICOM nodes: ``/api/nodes`` (included by the establishments router).

``POST /api/nodes`` registers a node (409 when the AE title is taken),
``GET /api/nodes[?role=pacs]`` lists them with their establishment and health,
``GET|PATCH|DELETE /api/nodes/{ae_title}`` read, change and forget one, and
``GET /api/nodes/{ae_title}/health`` gives the last C-ECHO check
(:mod:`pacs_hub.regional.health`). Running gateways see changes within a few
seconds, with no restart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.errors import UnknownNode
from pacs_hub.regional import nodes

router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]
Role = Literal["pacs", "modality", "workstation", "destination"]
Permission = Literal["store", "query", "retrieve"]
ALL_PERMISSIONS: tuple[Permission, ...] = ("store", "query", "retrieve")


class NodeIn(BaseModel):
    """A node to register."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    establishment: str = Field(default="", description="Code or name of its establishment")
    role: Role = "pacs"
    tls: bool = False
    permissions: list[Permission] = Field(
        default_factory=lambda: list(ALL_PERMISSIONS),
        description="What the node may do over DICOM (the access policy's node rule)",
    )


class NodeChange(BaseModel):
    """Fields to change; those left out stay ('' for establishment detaches the node)."""

    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    establishment: str | None = None
    role: Role | None = None
    tls: bool | None = None
    permissions: list[Permission] | None = None


class NodeHealth(BaseModel):
    """The last C-ECHO check of a node."""

    ae_title: str
    status: str
    down_since: datetime | None
    latency_ms: float | None
    checked_at: datetime | None


class NodeOut(BaseModel):
    """A registered node."""

    ae_title: str
    host: str
    port: int
    establishment: str
    establishment_name: str
    role: str
    tls: bool
    permissions: list[str]
    health: NodeHealth


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value else None


def health_of(node: nodes.RemoteNode) -> NodeHealth:
    """The health part of a node's record (times in UTC)."""
    return NodeHealth(
        ae_title=node.ae_title,
        status=node.health_status,
        down_since=_utc(node.down_since),
        latency_ms=node.latency_ms,
        checked_at=_utc(node.health_checked_at),
    )


def node_out(node: nodes.RemoteNode) -> NodeOut:
    """The API view of a node."""
    return NodeOut(
        ae_title=node.ae_title,
        host=node.host,
        port=node.port,
        establishment=node.establishment,
        establishment_name=node.establishment_name,
        role=node.role,
        tls=node.tls,
        permissions=[p for p in nodes.PERMISSIONS if p in node.permissions],
        health=health_of(node),
    )


def _get(hub: HubState, ae_title: str) -> nodes.RemoteNode:
    node = nodes.get_node(hub.database, ae_title)
    if node is None:
        raise UnknownNode(f"no node with AE title {ae_title!r}")
    return node


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(hub: Hub, role: Role | None = None) -> list[NodeOut]:
    """Every registered node (of ``role`` when given), by AE title."""
    return [node_out(n) for n in nodes.list_nodes(hub.database, role=role)]


@router.post("/nodes", status_code=201, response_model=NodeOut)
def create_node(body: NodeIn, hub: Hub, response: Response) -> NodeOut:
    """Register a node; 409 when its AE title is registered, 404 for an unknown establishment."""
    node = nodes.add_node(
        hub.database,
        body.ae_title,
        body.host,
        body.port,
        body.establishment,
        role=body.role,
        tls=body.tls,
        replace=False,
        permissions=body.permissions,
    )
    response.headers["Location"] = f"/api/nodes/{node.ae_title}"
    return node_out(node)


@router.get("/nodes/{ae_title}", response_model=NodeOut)
def get_node(ae_title: str, hub: Hub) -> NodeOut:
    """One node."""
    return node_out(_get(hub, ae_title))


@router.patch("/nodes/{ae_title}", response_model=NodeOut)
def change_node(ae_title: str, body: NodeChange, hub: Hub) -> NodeOut:
    """Change some fields of a node."""
    node = nodes.update_node(
        hub.database,
        ae_title,
        host=body.host,
        port=body.port,
        establishment=body.establishment,
        role=body.role,
        tls=body.tls,
        permissions=body.permissions,
    )
    return node_out(node)


@router.delete("/nodes/{ae_title}", status_code=204)
def delete_node(ae_title: str, hub: Hub) -> Response:
    """Forget a node."""
    nodes.remove_node(hub.database, ae_title)
    return Response(status_code=204)


@router.get("/nodes/{ae_title}/health", response_model=NodeHealth)
def node_health(ae_title: str, hub: Hub) -> NodeHealth:
    """The last C-ECHO check of a node: up, down (since when) or unknown, and its latency."""
    return health_of(_get(hub, ae_title))
