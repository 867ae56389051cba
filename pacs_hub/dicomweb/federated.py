"""QIDO-RS across the region: ``includeremote=true`` adds every establishment PACS.

PS3.18 8.3.4 lets an origin server define query parameters of its own; the hub's is
``includeremote`` (``true`` or ``false``, default ``false``), accepted on every QIDO-RS
search resource (PS3.18 10.6). With ``true``, the search is a federated query
(:func:`~pacs_hub.regional.federation.federated_find`): the hub's index with the same
matching as plain QIDO-RS, plus a C-FIND to every PACS node (role pacs) with the
query's matching keys, merged and de-duplicated by the level's unique key.

Every result carries:

* Retrieve AE Title (0008,0054): every AE title holding it, the hub's own first when
  it has a copy;
* Instance Availability (0008,0056): ONLINE when the hub has a copy, else NEARLINE;
* Retrieve URL (0008,1190) only when the hub has a copy (the others must be pulled
  first: ``POST /api/retrieve``, or any C-MOVE / C-GET to the hub).

Sources that do not answer within ``PACS_HUB_FEDERATED_TIMEOUT`` seconds, refuse or
fail are named in a ``Warning: 299`` header (PS3.18 8.6.2), next to the paging
warning. ``limit`` / ``offset`` page the merged list; ``X-Total-Count`` is its size.
Access (issue 4): the hub's own matches are restricted in SQL like plain QIDO-RS;
a result only a PACS holds is shown when the access policy allows it once its patient
is known (:func:`pacs_hub.trust.access.remote_visible`: the PACS belongs to one of the
caller's establishments, or the hub links its Patient ID to a regional patient the
caller may see); a remote result whose patient the hub does not know is shown only to
callers who see everything (regional administrators, break-glass). Totals count what
is shown. Limits: ``fuzzymatching`` applies to the hub's matches only (the PACS get the values
as C-FIND matching keys), and ``includefield`` of attributes outside the index is not
answered for federated results.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request, Response
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacs_hub.dicomweb.access import Caller, with_query
from pacs_hub.dicomweb.search import (
    CONTROL_PARAMETERS,
    UTF8,
    Search,
    _keyword,
    element_json,
    parse_search,
    row_json,
)
from pacs_hub.dicomweb.state import HubState, dicomweb_base
from pacs_hub.errors import InvalidQuery
from pacs_hub.regional.federation import FederatedMatch, FederatedResult, federated_find
from pacs_hub.regional.remote_find import pool_of
from pacs_hub.storage.query import Level
from pacs_hub.trust.access import RemoteAnswer, remote_visible

PARAMETER = "includeremote"
DICOM_JSON = "application/dicom+json"


def wants_remote(request: Request) -> bool:
    """True when the query says ``includeremote=true``; 400 for a value not true/false."""
    values = request.query_params.getlist(PARAMETER)
    if not values:
        return False
    value = values[-1].strip().lower()
    if value not in {"true", "false"}:
        raise InvalidQuery(f"{PARAMETER}={values[-1][:10]!r}: expected true or false")
    return value == "true"


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def identifier(
    level: Level, search: Search, params: Sequence[tuple[str, str]], fixed: Mapping[str, str]
) -> Dataset:
    """The C-FIND Identifier for the PACS: return keys empty, matching keys valued."""
    values: dict[str, str] = {}
    for name, value in params:
        if name in CONTROL_PARAMETERS or "." in name:
            continue
        values[_keyword(name)] = value.replace(",", "\\") if _is_uid(name) else value
    values.update(fixed)
    out = Dataset()
    out.QueryRetrieveLevel = level.value
    for keyword in dict.fromkeys([*search.keys, *values]):
        vr = dictionary_VR(keyword)
        if vr == "SQ":
            continue
        out.add_new(tag_for_keyword(keyword) or 0, vr, values.get(keyword) or None)
    return out


def _is_uid(name: str) -> bool:
    return dictionary_VR(_keyword(name)) == "UI"


def _remote_text(answer: Dataset, keyword: str) -> str | None:
    value: Any = answer.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)


def match_json(search: Search, match: FederatedMatch, base: str) -> dict[str, Any]:
    """One merged result in the DICOM JSON Model (PS3.18 F.2), tags in ascending order."""
    if match.local is not None:
        out = row_json(search, match.local, base)
    else:
        out = {_tag("SpecificCharacterSet"): {"vr": "CS", "Value": [UTF8]}}
        for keyword in search.keys:
            remote = match.remote
            value = _remote_text(remote, keyword) if remote is not None else None
            out[_tag(keyword)] = element_json(keyword, value)
    out[_tag("RetrieveAETitle")] = {"vr": "AE", "Value": list(match.locations)}
    out[_tag("InstanceAvailability")] = {"vr": "CS", "Value": [match.availability]}
    return dict(sorted(out.items()))


def _warnings(search: Search, result: FederatedResult, shown: int, total: int) -> list[str]:
    warnings = []
    if search.offset + shown < total:
        warnings.append("There are additional results that can be requested")
    if search.ignored:
        warnings.append("Matching keys not supported and ignored: " + ", ".join(search.ignored))
    if result.unavailable:
        names = ", ".join(
            f"{u.ae_title} ({u.reason.replace(chr(34), chr(39))})" for u in result.unavailable
        )
        warnings.append("Sources unavailable: " + names)
    return warnings


def _visible(hub: HubState, caller: Caller, matches: list[FederatedMatch]) -> list[FederatedMatch]:
    """The matches the caller may see: remote-only ones by :func:`remote_visible`."""
    if not caller.enforced:
        return matches
    shown = []
    with hub.database.read_connection() as conn:
        for match in matches:
            if match.local is None:
                remote = match.remote
                seen = RemoteAnswer(
                    match.locations,
                    _remote_text(remote, "StudyInstanceUID") or "" if remote is not None else "",
                    _remote_text(remote, "PatientID") or "" if remote is not None else "",
                    _remote_text(remote, "IssuerOfPatientID") or "" if remote is not None else "",
                )
                args = (caller.policy, conn, caller.principal, caller.purpose, seen)
                if not remote_visible(*args, reason=caller.reason):
                    continue
            shown.append(match)
    return shown


def answer(
    request: Request, hub: HubState, caller: Caller, level: Level, fixed: dict[str, str]
) -> Response:
    """A QIDO-RS search answered by a federated query (see the module docstring)."""
    params = [(n, v) for n, v in request.query_params.multi_items() if n != PARAMETER]
    settings = hub.settings
    search = parse_search(level, params, fixed, settings.qido_max_limit, settings.regional_issuer)
    with hub.database.read_connection() as conn:
        search = with_query(search, caller.restrict(conn, search.query))
    result = federated_find(
        hub.settings,
        hub.database,
        level,
        search.query,
        identifier(level, search, params, fixed),
        local_limit=hub.settings.qido_max_limit,
        pool=pool_of(hub.database),
    )
    base = dicomweb_base(request)
    matches = _visible(hub, caller, result.matches)
    page = matches[search.offset : search.offset + search.limit]
    answers = [match_json(search, match, base) for match in page]
    total = len(matches)
    caller.audit_query(level=level.value, returned=len(page), total=total, remote=True, **fixed)
    headers = {"X-Total-Count": str(total)}
    warnings = _warnings(search, result, len(page), total)
    if warnings:
        text = ", ".join(f'299 pacs-hub "{w}"' for w in warnings)
        headers["Warning"] = text.encode("latin-1", "replace").decode("latin-1")
    body = json.dumps(answers, separators=(",", ":"), ensure_ascii=False)
    return Response(body, media_type=DICOM_JSON, headers=headers)
