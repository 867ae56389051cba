"""QIDO-RS search routes (PS3.18 10.6): studies, series and instances.

Answers are ``application/dicom+json`` (PS3.18 F.2) built by
:mod:`pacs_hub.dicomweb.search`; the matching is the C-FIND code. Paging: ``limit``
and ``offset`` (PS3.18 8.3.4.4); ``X-Total-Count`` gives the number of matches and
a ``Warning: 299`` header says when more results remain (8.3.4.4.1) or a matching
key was ignored.

Access (issue 4): the search matches only the studies the caller may see (the access
policy inside the SQL, :mod:`pacs_hub.dicomweb.access`), so ``X-Total-Count`` and the
pages never reveal a study the caller may not see; each search is one audit entry.
"""

from __future__ import annotations

import json
import zlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from pacs_hub.dicom.header import is_valid_uid
from pacs_hub.dicomweb import federated
from pacs_hub.dicomweb.access import Caller, CallerDep, with_query
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.search import Search, parse_search, row_json
from pacs_hub.dicomweb.state import HubState, dicomweb_base, hub_state
from pacs_hub.errors import InvalidQuery
from pacs_hub.storage.metadata import representative
from pacs_hub.storage.query import Level, Row, attribute_value, count_matches, find

router = APIRouter()
DICOM_JSON = "application/dicom+json"
ACCEPTED = ("application/dicom+json", "application/json", "*/*", "application/*")
Hub = Annotated[HubState, Depends(hub_state)]
LEVEL_KEYS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}


def check_uid(keyword: str, value: str) -> str:
    """A UID from a path segment; 400 when it is not a UID (traversal, garbage)."""
    if not is_valid_uid(value):
        raise InvalidQuery(f"{keyword} {value[:64]!r} in the path is not a valid UID")
    return value


def check_json_accept(request: Request, what: str = "QIDO-RS answers") -> None:
    """406 problem+json unless the Accept header allows DICOM JSON (PS3.18 8.7.1)."""
    accept = request.headers.get("accept", "")
    if not accept or any(i.split(";")[0].strip().lower() in ACCEPTED for i in accept.split(",")):
        return
    raise Problem(406, "Not acceptable", f"{what} {DICOM_JSON}; Accept was {accept[:120]!r}")


def _extra(hub: HubState, session: Any, search: Search, row: Row) -> dict[str, Any]:
    """Included fields outside the index, from one instance's stored metadata."""
    keyword = {Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID"}.get(
        search.level, "SOPInstanceUID"
    )
    level = {Level.STUDY: "study", Level.SERIES: "series"}.get(search.level, "instance")
    stored = representative(session, hub.blobs, [str(attribute_value(row, keyword))], level)
    if stored is None:
        return {}
    metadata = json.loads(zlib.decompress(stored))
    out = {}
    for tag in search.extra_tags:
        key = f"{tag:08X}"
        if key in metadata and "BulkDataURI" not in metadata[key]:
            out[key] = metadata[key]
    return out


def _answer(
    request: Request, hub: HubState, caller: Caller, level: Level, fixed: dict[str, str]
) -> Response:
    check_json_accept(request)
    if federated.wants_remote(request):  # includeremote=true: every PACS too
        return federated.answer(request, hub, caller, level, fixed)
    search = parse_search(
        level,
        list(request.query_params.multi_items()),
        fixed,
        hub.settings.qido_max_limit,
        hub.settings.regional_issuer,
    )
    base = dicomweb_base(request)
    with hub.database.reader() as session:
        search = with_query(search, caller.restrict(session.connection(), search.query))
        rows = find(session, level, search.query, limit=search.limit, offset=search.offset)
        if len(rows) == search.limit or (search.offset and not rows):
            total = count_matches(session, level, search.query)
        else:
            total = search.offset + len(rows)
        answers = []
        for row in rows:
            answer = row_json(search, row, base)
            if search.extra_tags:
                answer = dict(sorted({**answer, **_extra(hub, session, search, row)}.items()))
            answers.append(answer)
    caller.audit_query(level=level.value, returned=len(rows), total=total, **fixed)
    headers = {"X-Total-Count": str(total)}
    warnings = []
    if search.offset + len(rows) < total:
        warnings.append("There are additional results that can be requested")
    if search.ignored:
        warnings.append("Matching keys not supported and ignored: " + ", ".join(search.ignored))
    if warnings:
        headers["Warning"] = ", ".join(f'299 pacs-hub "{w}"' for w in warnings)
    body = json.dumps(answers, separators=(",", ":"), ensure_ascii=False)
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get("/studies")
def search_studies(request: Request, hub: Hub, caller: CallerDep) -> Response:
    """Search for studies (PS3.18 10.6.1, resource /studies)."""
    return _answer(request, hub, caller, Level.STUDY, {})


@router.get("/studies/{study}/series")
def search_study_series(request: Request, hub: Hub, caller: CallerDep, study: str) -> Response:
    """Search for the series of one study."""
    fixed = {"StudyInstanceUID": check_uid("study", study)}
    return _answer(request, hub, caller, Level.SERIES, fixed)


@router.get("/series")
def search_series(request: Request, hub: Hub, caller: CallerDep) -> Response:
    """Search for series in every study."""
    return _answer(request, hub, caller, Level.SERIES, {})


@router.get("/studies/{study}/series/{series}/instances")
def search_series_instances(
    request: Request, hub: Hub, caller: CallerDep, study: str, series: str
) -> Response:
    """Search for the instances of one series."""
    fixed = {
        "StudyInstanceUID": check_uid("study", study),
        "SeriesInstanceUID": check_uid("series", series),
    }
    return _answer(request, hub, caller, Level.IMAGE, fixed)


@router.get("/studies/{study}/instances")
def search_study_instances(request: Request, hub: Hub, caller: CallerDep, study: str) -> Response:
    """Search for the instances of one study."""
    fixed = {"StudyInstanceUID": check_uid("study", study)}
    return _answer(request, hub, caller, Level.IMAGE, fixed)


@router.get("/instances")
def search_instances(request: Request, hub: Hub, caller: CallerDep) -> Response:
    """Search for instances in every study."""
    return _answer(request, hub, caller, Level.IMAGE, {})
