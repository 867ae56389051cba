"""Admin API of the regional patient identity (``/api/patients``), france.md 3-4.

* ``GET /api/patients?ins=<matricule>``: regional patients holding that INS;
  ``?patient_id=<local id>&issuer=<issuer>``: the one a local identity is linked to;
* ``GET /api/patients/{regional_id}``: its local identities (Patient ID, issuer, INS,
  link method, traits) with their studies; an inactive (merged) one names its
  survivor in ``merged_into``;
* ``POST /api/patients/{regional_id}/link`` ``{patient_id, issuer_of_patient_id,
  actor}``: manual link of a local identity;
* ``POST /api/patients/merge`` ``{source, target, actor}``: merge source into target;
* ``POST /api/patients/unmerge/{event_id}`` ``{actor}``: revert a merge, link or
  accepted candidate exactly;
* ``GET /api/patients/candidates?status=pending|accepted|rejected|all``;
  ``POST /api/patients/candidates/{id}/accept|reject`` ``{actor}``;
* ``GET /api/patients/events``: the latest changes, newest first.

Refusals are ``application/problem+json``: 404 (unknown id), 409 (two different INS
under one regional patient, a candidate already decided, an event already reverted).

Access (issue 4): regional administrators only (the access policy's action admin,
purpose admin; :func:`pacs_hub.dicomweb.access.regional_admin`), every call audited;
401 without credentials, 403 for anyone else.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.dicomweb.access import regional_admin
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.regional import identity_changes as changes
from pacs_hub.regional import identity_views as views
from pacs_hub.web.params import RowId

router = APIRouter(dependencies=[Depends(regional_admin)])
Hub = Annotated[HubState, Depends(hub_state)]
Actor = Annotated[str, Field(min_length=1, max_length=64, description="Who decides (audited)")]
CANDIDATE_STATUSES = ("pending", "accepted", "rejected", "all")


class LinkIn(BaseModel):
    """A local identity to link to the regional patient of the path."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=64)
    issuer_of_patient_id: str = Field(default="", max_length=64)
    actor: Actor = "api"


class MergeIn(BaseModel):
    """Merge regional patient ``source`` into ``target``."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=64)
    target: str = Field(min_length=1, max_length=64)
    actor: Actor = "api"


class DecisionIn(BaseModel):
    """Who accepts, rejects or reverts."""

    model_config = ConfigDict(extra="forbid")

    actor: Actor = "api"


def _change(change: changes.Change) -> dict[str, Any]:
    return {"event_id": change.event_id, "regional_id": change.regional_id}


@router.get("/patients")
def find_patients(
    hub: Hub,
    ins: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    patient_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    issuer: Annotated[str, Query(max_length=64)] = "",
) -> Any:
    """Regional patients holding the INS ``ins``, or the one a local identity
    (``patient_id`` within ``issuer``) is linked to."""
    if (ins is None) == (patient_id is None):
        raise Problem(400, "Invalid query", "give either ins or patient_id (with issuer)")
    if ins is not None:
        return [asdict(v) for v in views.find_by_ins(hub.database, ins)]
    regional_id = views.regional_of(hub.database, str(patient_id), issuer)
    if regional_id is None:
        return []
    return [asdict(views.regional_patient(hub.database, regional_id))]


@router.get("/patients/candidates")
def list_candidates(hub: Hub, status: str = "pending") -> Any:
    """Link candidates by strict traits, for human review."""
    if status not in CANDIDATE_STATUSES:
        raise Problem(
            400,
            "Invalid status",
            f"status {status[:20]!r}: expected pending, accepted, rejected or all",
        )
    found = views.list_candidates(hub.database, None if status == "all" else status)
    return [asdict(c) for c in found]


@router.post("/patients/candidates/{candidate_id}/accept")
def accept_candidate(hub: Hub, candidate_id: RowId, body: DecisionIn | None = None) -> Any:
    """Accept a candidate: the identity joins the proposed regional patient."""
    actor = body.actor if body else "api"
    return _change(changes.accept_candidate(hub.database, candidate_id, actor))


@router.post("/patients/candidates/{candidate_id}/reject")
def reject_candidate(hub: Hub, candidate_id: RowId, body: DecisionIn | None = None) -> Any:
    """Reject a candidate: the identities stay apart."""
    actor = body.actor if body else "api"
    return {"event_id": changes.reject_candidate(hub.database, candidate_id, actor)}


@router.get("/patients/events")
def list_events(hub: Hub, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    """The latest changes of the cross-reference, newest first."""
    return [asdict(e) for e in views.list_events(hub.database, limit)]


@router.post("/patients/merge")
def merge(hub: Hub, body: MergeIn) -> Any:
    """Merge one regional patient into another (reversible: see unmerge)."""
    return _change(changes.merge(hub.database, body.source, body.target, body.actor))


@router.post("/patients/unmerge/{event_id}")
def unmerge(hub: Hub, event_id: RowId, body: DecisionIn | None = None) -> Any:
    """Revert a merge, manual link or accepted candidate, restoring the links before it."""
    actor = body.actor if body else "api"
    return {"event_id": changes.revert(hub.database, event_id, actor)}


@router.get("/patients/{regional_id}")
def regional_patient(hub: Hub, regional_id: str) -> Any:
    """A regional patient with its local identities and their studies."""
    return asdict(views.regional_patient(hub.database, regional_id))


@router.post("/patients/{regional_id}/link")
def link(hub: Hub, regional_id: str, body: LinkIn) -> Any:
    """Link a local identity (Patient ID within its issuer) to this regional patient."""
    change = changes.link(
        hub.database, body.patient_id, body.issuer_of_patient_id, regional_id, body.actor
    )
    return _change(change)
