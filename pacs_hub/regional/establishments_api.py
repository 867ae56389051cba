"""Admin API for establishments (``/api/establishments``) and their nodes (``/api/nodes``).

``POST /api/establishments`` ``{code, name, default_issuer, issuers[]}`` registers one
(409 when the code exists or an issuer belongs to another establishment);
``GET /api/establishments`` lists them, ``GET|PATCH|DELETE /api/establishments/{code}``
read, change and remove one (409 while nodes are attached). Errors are
``application/problem+json``. The node routes are in :mod:`pacs_hub.regional.nodes_api`.

Access (issue 4): regional administrators only (the access policy's action admin,
purpose admin; :func:`pacs_hub.dicomweb.access.regional_admin`), every call audited.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.dicomweb.access import regional_admin
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.regional import establishments as registry
from pacs_hub.regional import nodes_api

router = APIRouter(dependencies=[Depends(regional_admin)])
router.include_router(nodes_api.router)
Hub = Annotated[HubState, Depends(hub_state)]


class EstablishmentIn(BaseModel):
    """An establishment to register."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=32, description="FINESS-like identifier")
    name: str = Field(min_length=1, max_length=128)
    default_issuer: str = Field(
        default="", max_length=64, description="Issuer given to instances of its nodes lacking one"
    )
    issuers: list[str] = Field(default_factory=list, description="Issuers of Patient ID it uses")


class EstablishmentChange(BaseModel):
    """Fields to change; ``issuers`` replaces the owned set (the default issuer stays in it)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=128)
    default_issuer: str | None = Field(default=None, max_length=64)
    issuers: list[str] | None = None


class EstablishmentOut(BaseModel):
    """A registered establishment with its issuers and the AE titles of its nodes."""

    code: str
    name: str
    default_issuer: str
    issuers: list[str]
    nodes: list[str]
    created_at: datetime


def _out(record: registry.EstablishmentRecord) -> EstablishmentOut:
    return EstablishmentOut(
        code=record.code,
        name=record.name,
        default_issuer=record.default_issuer,
        issuers=list(record.issuers),
        nodes=list(record.nodes),
        created_at=record.created_at.replace(tzinfo=UTC),
    )


@router.get("/establishments", response_model=list[EstablishmentOut])
def list_establishments(hub: Hub) -> list[EstablishmentOut]:
    """Every establishment, by code."""
    return [_out(r) for r in registry.list_establishments(hub.database)]


@router.post("/establishments", status_code=201, response_model=EstablishmentOut)
def create_establishment(body: EstablishmentIn, hub: Hub, response: Response) -> EstablishmentOut:
    """Register an establishment."""
    record = registry.create_establishment(
        hub.database, body.code, body.name, body.default_issuer, body.issuers
    )
    response.headers["Location"] = f"/api/establishments/{record.code}"
    return _out(record)


@router.get("/establishments/{code}", response_model=EstablishmentOut)
def get_establishment(code: str, hub: Hub) -> EstablishmentOut:
    """One establishment."""
    return _out(registry.get_establishment(hub.database, code))


@router.patch("/establishments/{code}", response_model=EstablishmentOut)
def change_establishment(code: str, body: EstablishmentChange, hub: Hub) -> EstablishmentOut:
    """Change the name, the default issuer or the owned issuers."""
    record = registry.update_establishment(
        hub.database,
        code,
        name=body.name,
        default_issuer=body.default_issuer,
        issuers=body.issuers,
    )
    return _out(record)


@router.delete("/establishments/{code}", status_code=204)
def delete_establishment(code: str, hub: Hub) -> Response:
    """Remove an establishment; 409 while nodes are attached to it."""
    registry.remove_establishment(hub.database, code)
    return Response(status_code=204)
