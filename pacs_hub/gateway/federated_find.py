"""Federated C-FIND SCP: the hub's second AE title answers for the whole region.

An association whose Called AE Title is ``settings.federated_ae_title`` (the same port
as the hub's own AE title) gets its C-FIND requests (PS3.4 C.4.1, Patient Root or
Study Root, STUDY, SERIES or IMAGE level) answered by
:func:`~pacs_hub.regional.federation.federated_find`: the hub's index plus every
establishment PACS, merged by the level's unique key. Every other association gets
the hub's own C-FIND (:mod:`pacs_hub.gateway.find`).

Each Pending answer holds the requested keys and:

* Retrieve AE Title (0008,0054): every AE title holding the entity, the hub's own
  first when it has a copy (PS3.4 C.4.1.1.3.2 allows several values);
* Instance Availability (0008,0056): ONLINE when the hub has a copy, else NEARLINE
  (PS3.3 C.4.23.1.1: the hub retrieves it on demand from the PACS when asked).

Unavailable sources: PS3.4 C.4.1 (Table C.4-1) defines no Warning status for C-FIND,
only Success, Cancel, Pending and Failures; the answer *did* complete with every
source that answered, so the final status is Success (0x0000), without an Error
Comment (PS3.7 C.4 keeps it for failures and warnings). The sources that did not
answer in time, refused or failed are logged by the hub (WARNING, with the reason)
and are absent from every Retrieve AE Title; QIDO-RS with ``includeremote=true``
names them in a ``Warning: 299`` header, the CLI and API in their output.

A PATIENT-level federated query is refused (0xA900: patients are not de-duplicated
across establishments, whose Patient IDs differ); a malformed Identifier gets the
same failure statuses as the hub's own C-FIND, with an Error Comment.

Access policy (:mod:`pacs_hub.gateway.access`): a caller without the query
permission gets 0x0124; the hub's own results are restricted in SQL like its
C-FIND's; an answer only a PACS holds is shown by the rules QIDO-RS
``includeremote`` applies (:func:`pacs_hub.trust.access.remote_visible`: the PACS
belongs to the caller's establishment, or the hub knows the study or links its
Patient ID to a regional patient the caller may see).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.events import Event

from pacs_hub.dicom.charset import answer_charset
from pacs_hub.errors import HubError, InvalidQuery
from pacs_hub.gateway import access, find
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import CANCEL, PENDING, error_status, status
from pacs_hub.regional.federation import FederatedMatch, federated_find
from pacs_hub.storage.query import Level

LOGGER = logging.getLogger(__name__)
UNABLE_TO_PROCESS = 0xC000


def is_federated(event: Event, ctx: GatewayContext) -> bool:
    """True when the association was called to the federated AE title."""
    federated = ctx.settings.federated_ae_title.strip()
    if not federated or federated == ctx.settings.ae_title.strip():
        return False
    primitive = event.assoc.requestor.primitive
    called = getattr(primitive, "called_ae_title", "") if primitive is not None else ""
    return str(called or "").strip() == federated


def handle_find(event: Event, ctx: GatewayContext) -> Iterator[tuple[int | Dataset, Any]]:
    """EVT_C_FIND handler: federated when called to the federated AE title, else local."""
    if is_federated(event, ctx):
        yield from handle_federated_find(event, ctx)
    else:
        yield from find.handle_find(event, ctx)


def _remote_value(answer: Dataset, keyword: str) -> Any:
    elem = answer.get(keyword)
    if elem is None:
        return None
    value = elem.value if isinstance(elem, DataElement) else elem
    return None if value in ("", None) else value


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value]
    return [str(value)]


def build_answer(request: find.FindRequest, match: FederatedMatch) -> Dataset:
    """The Identifier of one Pending answer of a federated C-FIND."""
    if match.local is not None:
        answer = find.build_answer(request, match.local, match.locations[0])
    else:
        answer = Dataset()
        texts: list[str] = []
        for key in find._answer_keys(request):
            value = _remote_value(match.remote, key.keyword) if match.remote else None
            if key.vr == "SQ":
                answer.add(DataElement(key.tag, "SQ", []))
                continue
            texts += _texts(value)
            answer.add(DataElement(key.tag, key.vr, value))
        answer.QueryRetrieveLevel = request.level.value
        charset = answer_charset(request.charset, texts)
        if charset:
            answer.SpecificCharacterSet = charset[0] if len(charset) == 1 else charset
    answer.RetrieveAETitle = list(match.locations)
    answer.InstanceAvailability = match.availability
    return answer


def _read(event: Event, regional_issuer: str) -> find.FindRequest:
    request = find.read_request(event, regional_issuer)
    if request.level is Level.PATIENT:
        raise InvalidQuery("federated C-FIND: PATIENT level not offered; use STUDY")
    return request


def handle_federated_find(event: Event, ctx: GatewayContext) -> Iterator[tuple[int | Dataset, Any]]:
    """Federated C-FIND (PS3.4 C.4.1.3): Pending answers, then Success or a failure."""
    calling = event.assoc.requestor.ae_title
    try:
        request = _read(event, ctx.settings.regional_issuer)
        refusal, restriction = access.find_access(event, ctx, "federated C-FIND")
        if refusal is not None:
            yield refusal, None
            return
        query = request.query if restriction is None else request.query.restricted(restriction)
        result = federated_find(
            ctx.settings,
            ctx.database,
            request.level,
            query,
            event.identifier,
            local_limit=ctx.settings.qido_max_limit,
        )
    except HubError as exc:
        LOGGER.info(
            "federated C-FIND from %s refused: %s (0x%04X)", calling, exc.title, exc.dicom_status
        )
        yield error_status(exc), None
        return
    except Exception:  # pydicom decodes the Identifier lazily and may raise anything
        LOGGER.exception("federated C-FIND from %s: unexpected error", calling)
        yield status(UNABLE_TO_PROCESS, "cannot read the request or search"), None
        return
    if result.unavailable:
        LOGGER.warning(
            "federated C-FIND from %s answered without %s (unavailable)",
            calling,
            ", ".join(result.unavailable_titles),
        )
    for match in result.matches:
        if (
            match.local is None
            and restriction is not None
            and not access.remote_shown(event, ctx, match.remote, match.locations)
        ):
            continue  # a remote-only answer the caller may not see
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, build_answer(request, match)
