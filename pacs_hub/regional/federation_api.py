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

The pull runs on a thread of the HTTP process (:func:`~pacs_hub.regional.pull.run_job`):
a C-MOVE from the PACS to the hub's AE title, received by the DICOM gateway.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.regional.federation import remote_source
from pacs_hub.regional.pull import check_study_uid, claim_job, get_job, list_jobs, run_job
from pacs_hub.regional.scu import pacs_node

router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]


class RetrieveIn(BaseModel):
    """A study to pull into the hub, optionally from a given PACS node."""

    model_config = ConfigDict(extra="forbid")

    study: str = Field(min_length=1, max_length=64, description="Study Instance UID")
    node: str | None = Field(
        default=None, max_length=16, description="AE title of the PACS node to pull from"
    )


def _source(hub: HubState, study: str, node: str | None) -> str:
    if node:
        return node
    found = remote_source(hub.settings, hub.database, study)
    if found is None:
        raise Problem(404, "Study not found", f"no PACS node answered holding study {study}")
    return found


@router.post("/retrieve", status_code=202)
def start_retrieve(body: RetrieveIn, hub: Hub, response: Response) -> dict[str, Any]:
    """Start pulling a study into the hub (or join the job already pulling it)."""
    study = check_study_uid(body.study)
    node = pacs_node(hub.database, _source(hub, study, body.node))
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
def read_retrieve(job_id: int, hub: Hub) -> dict[str, Any]:
    """One retrieve job: state, progress (received / expected instances), error."""
    return _job(hub, job_id)


@router.get("/retrieve")
def list_retrieves(
    hub: Hub,
    study: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The latest retrieve jobs, newest first (optionally of one study)."""
    return [job.as_json() for job in list_jobs(hub.database, study, limit)]
