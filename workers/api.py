"""Processing jobs over HTTP: ``/api/processing/jobs``.

* ``POST /api/processing/jobs`` ``{series_uid, pipeline: ["mpr", "mip"], parameters: {}}``
  submits a job: 202 when sent now, 200 with the existing job when the same one is
  queued, running or done (idempotent); 404 for an unknown series, 422 (problem+json)
  for an unknown step or parameter or a series that is no image series;
* ``GET /api/processing/jobs?series=`` (or ``?study=``) lists jobs, newest first (the
  viewer's header polls it for the study on screen: :mod:`pacs_hub.web.viewer`);
* ``GET /api/processing/jobs/{id}`` gives the state (queued, running, retrying,
  succeeded, failed, cancelled), ``percent``, ``stage``, ``error`` and, when done, the
  result series;
* ``POST /api/processing/jobs/{id}/cancel`` cancels a job not yet storing its results;
* ``GET /api/processing/jobs/{id}/surface.stl`` (or ``.obj``) downloads the isosurface
  of a finished ``surface`` job: the STL document of its stored Encapsulated STL
  instance (PS3.3 A.85), so the download and the DICOM object are the same mesh.

Access (issue 4): the caller must be allowed to view the input study (purpose ``care``
or break-glass): the policy's ``view`` decision on the study, audited; jobs of studies
the caller may not view are not listed. A download is a ``retrieve`` of the study.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydicom import dcmread
from sqlalchemy import select

from pacs_hub.dicomweb.access import Caller, CallerDep
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.storage.models import Series, Study
from pacs_hub.storage.query import Level
from pacs_hub.storage.retrieval import RetrieveRequest, select_instances
from pacs_hub.trust.principal import Action
from workers import jobs
from workers.celery_app import HubCelery
from workers.rules import hub_app

router = APIRouter(prefix="/processing")
ENCAPSULATED_STL = "1.2.840.10008.5.1.4.1.1.104.3"


class JobIn(BaseModel):
    """A job to run."""

    model_config = ConfigDict(extra="forbid")

    series_uid: str = Field(min_length=1, max_length=64)
    pipeline: list[str] = Field(default=["mpr", "mip"], min_length=1, max_length=5)
    parameters: dict[str, Any] = Field(default_factory=dict)


class JobOut(BaseModel):
    """A job and where it stands."""

    id: str
    state: str
    percent: float
    stage: str
    error: str
    study_uid: str
    series_uid: str
    pipeline: list[str]
    parameters: dict[str, Any]
    submitted_by: str
    submissions: int
    runs: int = Field(description="Times the job was sent to a worker")
    attempt: int
    result_series: list[str]
    instances: int


def _out(job: jobs.Job) -> JobOut:
    state = job.state
    return JobOut(
        id=job.key,
        state=state.state,
        percent=state.percent,
        stage=state.stage,
        error=state.error,
        study_uid=job.spec.study_uid,
        series_uid=job.spec.series_uid,
        pipeline=list(job.spec.steps),
        parameters=dict(job.spec.parameters),
        submitted_by=job.submitted_by,
        submissions=job.submissions,
        runs=job.sends,
        attempt=state.attempt,
        result_series=[str(s) for s in state.result.get("series", [])],
        instances=int(state.result.get("instances", 0)) if state.state == "succeeded" else 0,
    )


def _app(request: Request, caller: CallerDep) -> HubCelery:
    return hub_app(caller.hub.settings)


def _job(request: Request, caller: CallerDep, job_id: str) -> tuple[HubCelery, jobs.Job]:
    app = _app(request, caller)
    job = jobs.get(app, job_id)
    if job is None:
        raise Problem(404, "Not found", f"no processing job {job_id[:40]!r}")
    caller.check_study(Action.VIEW, job.spec.study_uid, job=job.key)
    return app, job


@router.post("/jobs", status_code=202)
def submit_job(body: JobIn, request: Request, response: Response, caller: CallerDep) -> JobOut:
    """Submit a job (idempotent: the same job again is answered 200 with its state)."""
    with caller.hub.database.reader() as session:
        study = session.scalars(
            select(Study.study_instance_uid)
            .join(Series, Series.study_pk == Study.id)
            .where(Series.series_instance_uid == body.series_uid)
        ).first()
    if study is None:
        raise Problem(404, "Not found", "no series with this Series Instance UID is stored")
    caller.check_study(Action.VIEW, str(study), processing=",".join(body.pipeline))
    app = _app(request, caller)
    spec = jobs.describe(caller.hub.database, app, body.series_uid, body.pipeline, body.parameters)
    job, sent = jobs.submit(app, spec, caller.principal.audit_id)
    if not sent:
        response.status_code = 200
    return _out(job)


@router.get("/jobs")
def list_jobs(
    request: Request,
    caller: CallerDep,
    series: Annotated[str, Query(max_length=64)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    study: Annotated[str, Query(max_length=64)] = "",
) -> list[JobOut]:
    """Jobs, newest first (of one series with ``series=``, of one study with ``study=``),
    those the caller may view."""
    found = jobs.jobs(_app(request, caller), series, limit, study)
    return [
        _out(job)
        for job in found
        if caller.decide(Action.VIEW, study_uid=job.spec.study_uid).allowed
    ]


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request, caller: CallerDep) -> JobOut:
    """One job's state and progress."""
    return _out(_job(request, caller, job_id)[1])


def _stl(caller: Caller, series: list[str]) -> bytes | None:
    with caller.hub.database.reader() as session:
        for uid in series:
            request = RetrieveRequest(Level.SERIES, {Level.SERIES: (uid,)})
            for item in select_instances(session, caller.hub.blobs, request):
                if item.sop_class_uid == ENCAPSULATED_STL:
                    with item.blob.open() as fp:
                        dataset = dcmread(fp)
                    document = bytes(dataset.EncapsulatedDocument)
                    length = dataset.get("EncapsulatedDocumentLength")  # before even padding
                    return document[: int(length)] if length else document
    return None


@router.get("/jobs/{job_id}/surface.{fmt}", response_class=Response)
def surface_download(job_id: str, fmt: str, request: Request, caller: CallerDep) -> Response:
    """The isosurface of a finished ``surface`` job as an STL or OBJ file."""
    if fmt not in ("stl", "obj"):
        raise Problem(404, "Not found", f"surface.{fmt[:8]}: expected surface.stl or surface.obj")
    _app, job = _job(request, caller, job_id)
    caller.check_study(Action.RETRIEVE, job.spec.study_uid, download=f"surface.{fmt}")
    document = _stl(caller, [str(s) for s in job.state.result.get("series", [])])
    if job.state.state != "succeeded" or document is None:
        raise Problem(404, "Not found", "this job has no finished surface (step 'surface')")
    if fmt == "obj":
        from workers.processing.surface import obj_bytes, read_stl

        document = obj_bytes(read_stl(document))
    return Response(
        document,
        media_type="model/stl" if fmt == "stl" else "model/obj",
        headers={"Content-Disposition": f'attachment; filename="{job.key}.{fmt}"'},
    )


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request, caller: CallerDep) -> JobOut:
    """Cancel the job (honoured until it starts storing results)."""
    app, job = _job(request, caller, job_id)
    cancelled = jobs.cancel(app, job.key)
    assert cancelled is not None
    return _out(cancelled)
