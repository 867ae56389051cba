"""WADO-RS metadata routes (PS3.18 10.4.1.1.2): study, series and instance metadata.

The answer is a JSON array of DICOM JSON objects (PS3.18 F.2), one per instance,
assembled from the metadata stored at ingest (:mod:`pacs_hub.storage.metadata`):
no blob is read, so a 1000-instance series answers in milliseconds. Pixel Data and
other large binary values are ``BulkDataURI`` references to
``.../instances/{sop}/bulkdata/{path}`` (PS3.18 F.2.6).

Access (issue 4): the access policy decides for the study before anything is read
(action retrieve; 403 with no data when refused, 404 for a study the hub does not
hold), audited (:mod:`pacs_hub.dicomweb.access`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from pacs_hub.dicom import dicomjson
from pacs_hub.dicomweb.access import Caller, CallerDep
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.qido import DICOM_JSON, check_json_accept, check_uid
from pacs_hub.dicomweb.state import HubState, dicomweb_base, hub_state
from pacs_hub.storage.metadata import instances_metadata
from pacs_hub.trust.principal import Action

router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]


def _answer(
    request: Request,
    hub: HubState,
    caller: Caller,
    study: str,
    series: str | None,
    sop: str | None,
) -> Response:
    check_json_accept(request, "metadata is")
    caller.check_study(Action.RETRIEVE, study, resource="metadata")
    base = dicomweb_base(request)
    with hub.database.reader() as session:
        found = instances_metadata(session, hub.blobs, study, series, sop)
    if not found:
        what = "instance" if sop else "series" if series else "study"
        raise Problem(404, "Not found", f"no {what} with these UIDs is stored")
    body = dicomjson.join(dicomjson.expand(m.metadata, base + m.path()) for m in found)
    return Response(body, media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata")
def study_metadata(request: Request, hub: Hub, caller: CallerDep, study: str) -> Response:
    """Metadata of every instance of a study."""
    return _answer(request, hub, caller, check_uid("study", study), None, None)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(
    request: Request, hub: Hub, caller: CallerDep, study: str, series: str
) -> Response:
    """Metadata of every instance of a series."""
    uids = check_uid("study", study), check_uid("series", series)
    return _answer(request, hub, caller, *uids, None)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata(
    request: Request, hub: Hub, caller: CallerDep, study: str, series: str, sop: str
) -> Response:
    """Metadata of one instance."""
    return _answer(
        request,
        hub,
        caller,
        check_uid("study", study),
        check_uid("series", series),
        check_uid("instance", sop),
    )
