"""Admin API ``/api/archive`` (regional administrators; every call audited by the policy).

* ``GET /api/archive/integrity``: the integrity sweep (:mod:`pacs_hub.archive.sweep`):
  whether it runs and at what rate, the current cycle (started, instances and bytes
  checked, damaged instances found so far with their UIDs, blob and problem), the last
  cycle completed, and when the next one starts.
* ``GET /api/archive/retention/due[?establishment=CODE&as_of=YYYYMMDD]``: the studies
  whose legal retention has ended (:mod:`pacs_hub.archive.retention`);
  ``GET /api/archive/retention/studies/{study}``: one study's retention.
* ``GET /api/archive/destructions``, ``GET /api/archive/destructions/{id}`` (its record)
  (regional administrators), and ``POST /api/archive/destructions/{id}/signatures``
  (``{"capacity": "director" | "dim" | "archives", "reference": "..."}``): the signed-in
  user signs a destruction, a regional administrator or an administrator of its
  establishment (:mod:`pacs_hub.archive.destruction`; a refusal is audited too).
  Proposing and executing are the operator's (``pacs-hub archive destruction``).
* ``GET /api/archive/tiers``: the storage tiers (:mod:`pacs_hub.archive.tiers`): instances
  and bytes in the hot and cold tiers, the cold tier's size on disk and compression
  ratio, its cache, the replaced copies waiting to be erased, the last move pass.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.archive import destruction, retention, sweep, tier_sweep, tiers
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.trust.policy import NotAuthenticated
from pacs_hub.trust.principal import Kind, Principal
from pacs_hub.trust.requests import principal_of
from pacs_hub.trust.users_api import admin_caller
from pacs_hub.web.params import RowId

router = APIRouter(prefix="/archive", dependencies=[Depends(admin_caller)])
signing = APIRouter(prefix="/archive")
"""Signatures: any signed-in user may try; :func:`destruction.sign` decides (and audits)."""
Hub = Annotated[HubState, Depends(hub_state)]
Caller = Annotated[Principal, Depends(principal_of)]


class SignatureIn(BaseModel):
    """A signature of a destruction, by the signed-in user."""

    model_config = ConfigDict(extra="forbid")

    capacity: str = Field(description="director, dim, or archives (the archives' visa)")
    reference: str = Field(default="", max_length=128, description="The visa's reference")


@router.get("/integrity")
def integrity(hub: Hub) -> dict[str, Any]:
    """The integrity sweep's progress and findings."""
    return sweep.describe(hub.settings)


@router.get("/retention/due")
def retention_due(
    hub: Hub, establishment: str | None = None, as_of: str | None = None
) -> list[dict[str, Any]]:
    """The studies whose retention has ended (not held, in no open destruction)."""
    day = retention.parse_day(as_of) if as_of else retention.now().date()
    with hub.database.reader() as session:
        found = retention.due(session.connection(), hub.settings, day, establishment=establishment)
    return [s.as_dict() for s in found]


@router.get("/retention/studies/{study}")
def retention_of(study: str, hub: Hub) -> dict[str, Any]:
    """One study's retention: last contact, end, held."""
    with hub.database.reader() as session:
        found = retention.studies(session.connection(), hub.settings, study_uids=[study])
    if not found:
        raise retention.UnknownStudy(f"no study {study[:64]!r} in the archive")
    return found[0].as_dict()


@router.get("/tiers")
def tier_status(hub: Hub) -> dict[str, Any]:
    """Both storage tiers: counts, sizes, the cold tier's ratio and cache, the last pass."""
    found = tiers.describe(hub.database, hub.blobs, hub.settings.cold_cache_mb << 20)
    return {**found, "last_pass": tier_sweep.load(hub.settings) or None}


@router.get("/destructions")
def destructions(hub: Hub) -> list[dict[str, Any]]:
    """Every destruction: id, state, studies, size."""
    return destruction.listing(hub.database)


@router.get("/destructions/{destruction_id}")
def destruction_record(destruction_id: RowId, hub: Hub) -> dict[str, Any]:
    """A destruction's record: state, signatures, studies."""
    return destruction.record(hub.database, destruction_id)


@signing.post("/destructions/{destruction_id}/signatures")
def destruction_sign(
    destruction_id: RowId, body: SignatureIn, hub: Hub, caller: Caller
) -> dict[str, Any]:
    """The signed-in user signs the destruction in ``capacity`` (a regional administrator,
    or an administrator of the destruction's establishment); its record after it."""
    if caller.kind is Kind.ANONYMOUS:
        raise NotAuthenticated("no credentials: a destruction is signed by a signed-in user")
    if caller.kind is not Kind.USER:
        raise destruction.SignerNotAllowed("a destruction is signed by a signed-in user")
    destruction.sign(hub.database, destruction_id, body.capacity, caller.subject, body.reference)
    return destruction.record(hub.database, destruction_id)
