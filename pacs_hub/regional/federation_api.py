"""Admin API for retrieve on demand (``/api/retrieve``): pull a study into the hub.

``POST /api/retrieve`` ``{"study": UID, "node": AE (optional)}`` starts pulling the
study from the PACS node ``node`` or, without it, from the first PACS node that holds
it (a federated STUDY-level C-FIND, :func:`~pacs_hub.regional.federation.remote_source`;
404 when none does). It answers ``202 Accepted`` with the new job, or ``200`` with the
job already pulling that study (single flight: concurrent requests get one job), and
a ``Location`` to poll. ``GET /api/retrieve/{id}`` is the job: ``state`` (queued,
running, done, failed), ``received`` / ``expected`` (the progress, in instances) and
``error``. ``GET /api/retrieve?study=UID`` lists the latest jobs. Errors are
``application/problem+json``: 400 for a malformed UID, 404 for an unknown node, job
or study.

Access (issue 4): starting a pull is a retrieve the access policy decides for the
study (audited; 403 with nothing started when refused): by the per-study decision
when the hub already holds it, else by the rules for remote results
(:func:`pacs_hub.trust.access.remote_visible`: the PACS belongs to one of the caller's
establishments, or the study's patient is one the caller may see). Jobs hold no
patient data (UIDs, AE titles, counts) and are listed to staff (radiologists,
establishment administrators, service accounts) and regional administrators.

The pull runs on a thread of the HTTP process (:func:`~pacs_hub.regional.pull.run_job`):
a C-MOVE from the PACS to the hub's AE title, received by the DICOM gateway.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.dicomweb.access import Caller, CallerDep
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.regional.federation import FederatedMatch, locate_study
from pacs_hub.regional.pull import check_study_uid, claim_job, get_job, list_jobs, run_job
from pacs_hub.regional.scu import pacs_node
from pacs_hub.trust.access import RemoteAnswer, record_decision, remote_visible
from pacs_hub.trust.policy import AccessDenied, Decision
from pacs_hub.trust.principal import Action, Role
from pacs_hub.web.params import RowId

router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]


class RetrieveIn(BaseModel):
    """A study to pull into the hub, optionally from a given PACS node."""

    model_config = ConfigDict(extra="forbid")

    study: str = Field(min_length=1, max_length=64, description="Study Instance UID")
    node: str | None = Field(
        default=None, max_length=16, description="AE title of the PACS node to pull from"
    )


STAFF = (Role.RADIOLOGIST, Role.ESTABLISHMENT_ADMIN, Role.SERVICE)


def _remote_text(match: FederatedMatch, keyword: str) -> str:
    value = match.remote.get(keyword) if match.remote is not None else None
    return str(value or "")


def _held(caller: Caller, study: str) -> bool:
    with caller.hub.database.read_connection() as conn:
        return caller.policy.study_facts(conn, study) is not None


def _check_remote(caller: Caller, study: str, match: FederatedMatch | None) -> None:
    """The access policy for a study only PACS nodes hold (see the module docstring)."""
    allowed = False
    if match is not None:
        answer = RemoteAnswer(
            match.locations,
            study,
            _remote_text(match, "PatientID"),
            _remote_text(match, "IssuerOfPatientID"),
        )
        with caller.hub.database.read_connection() as conn:
            allowed = remote_visible(
                caller.policy, conn, caller.principal, caller.purpose, answer, caller.reason
            )
    rule = "remote-visible" if allowed else "remote-not-visible"
    decision = Decision(allowed, rule, study_uid=study)
    args = (caller.principal, Action.RETRIEVE, caller.purpose, decision, caller.reason)
    record_decision(caller.hub.database, *args, {"resource": "pull"})
    if not allowed:
        raise AccessDenied("not authorised to pull this study")


def _source(hub: HubState, caller: Caller, study: str, node: str | None) -> str:
    held = caller.enforced and _held(caller, study)
    if held:
        caller.check_study(Action.RETRIEVE, study, resource="pull")
    if node and not (caller.enforced and not held):
        return node
    match = locate_study(hub.settings, hub.database, study)
    if caller.enforced and not held:
        _check_remote(caller, study, match)
    if node:
        return node
    remote = () if match is None else match.locations[1:] if match.hub_has_copy else match.locations
    if not remote:
        raise Problem(404, "Study not found", f"no PACS node answered holding study {study}")
    return remote[0]


@router.post("/retrieve", status_code=202)
def start_retrieve(
    body: RetrieveIn, hub: Hub, caller: CallerDep, response: Response
) -> dict[str, Any]:
    """Start pulling a study into the hub (or join the job already pulling it)."""
    study = check_study_uid(body.study)
    node = pacs_node(hub.database, _source(hub, caller, study, body.node))
    job_id, created = claim_job(hub.database, study, node, "on-demand")
    if created:
        threading.Thread(
            target=run_job,
            args=(hub.settings, hub.database, job_id),
            name=f"retrieve-{job_id}",
            daemon=True,
        ).start()
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/api/retrieve/{job_id}"
    return _job(hub, job_id)


def _job(hub: HubState, job_id: int) -> dict[str, Any]:
    job = get_job(hub.database, job_id)
    if job is None:
        raise Problem(404, "Retrieve job not found", f"no retrieve job {job_id}")
    return job.as_json()


@router.get("/retrieve/{job_id}")
def read_retrieve(job_id: RowId, hub: Hub, caller: CallerDep) -> dict[str, Any]:
    """One retrieve job: state, progress (received / expected instances), error."""
    caller.require("retrieve jobs", *STAFF)
    return _job(hub, job_id)


@router.get("/retrieve")
def list_retrieves(
    hub: Hub,
    caller: CallerDep,
    study: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The latest retrieve jobs, newest first (optionally of one study)."""
    caller.require("retrieve jobs", *STAFF)
    return [job.as_json() for job in list_jobs(hub.database, study, limit)]
