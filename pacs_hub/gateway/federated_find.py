"""Federated C-FIND SCP: the hub's second AE title answers for the whole region.

An association whose Called AE Title is ``settings.federated_ae_title`` (the same port
as the hub's own AE title) gets its C-FIND requests (PS3.4 C.4.1, Patient Root or
Study Root, STUDY, SERIES or IMAGE level) answered by
:func:`~pacs_hub.regional.federation.federated_find`: the hub's index plus every
establishment PACS, merged by the level's unique key. Every other association gets
the hub's own C-FIND (:mod:`pacs_hub.gateway.find`).

The Pending answers are sent as the sources give them
(:class:`~pacs_hub.regional.federation.FederatedSearch`): a study only PACS hold as
soon as the first of them answers it (never twice), the hub's own studies once every
PACS has answered or timed out. Each Pending answer holds the requested keys and:

* Retrieve AE Title (0008,0054): the AE titles holding the entity, the hub's own
  first when it has a copy (PS3.4 C.4.1.1.3.2 allows several values): every PACS
  for the hub's own studies, the PACS that had answered by then for the others;
* Instance Availability (0008,0056): ONLINE when the hub has a copy, else NEARLINE
  (PS3.3 C.4.23.1.1: the hub retrieves it on demand from the PACS when asked).

Unavailable sources: PS3.4 C.4.1 (Table C.4-1) defines no Warning status for C-FIND,
only Success, Cancel, Pending and Failures; the answer *did* complete with every
source that answered, so the final status is Success (0x0000), without an Error
Comment (PS3.7 C.4 keeps it for failures and warnings). The sources that did not
answer in time, refused or failed are logged by the hub (WARNING, with the reason)
and are absent from the Retrieve AE Title of every answer sent after they failed (a
match a PACS gave before it timed out may have been sent already); QIDO-RS with
``includeremote=true``
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
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.events import Event

from pacs_hub.dicom.charset import answer_charset
from pacs_hub.errors import HubError, InvalidQuery
from pacs_hub.gateway import access, find
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.relayed_answer import relayed_answer
from pacs_hub.gateway.status import CANCEL, PENDING, error_status, status
from pacs_hub.regional.federation import FederatedMatch, FederatedSearch
from pacs_hub.regional.remote_find import pool_of
from pacs_hub.storage.query import Level

LOGGER = logging.getLogger(__name__)
UNABLE_TO_PROCESS = 0xC000
# The caller's transfer syntaxes a PACS's answer is relayed in as it is (relayed_answer).
RELAYED_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})


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


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value]
    return [str(value)]


def build_answer(
    request: find.FindRequest,
    match: FederatedMatch,
    keys: Sequence[find.ReturnKey] | None = None,
) -> Dataset:
    """The Identifier of one Pending answer of a federated C-FIND (``keys``: the
    request's answer keys, when the caller has them already)."""
    if match.local is not None:
        answer = find.build_answer(request, match.local, match.locations[0])
    else:
        answer = Dataset()
        texts: list[str] = []
        remote = match.remote if match.remote is not None else Dataset()
        for key in keys if keys is not None else find._answer_keys(request):
            if key.vr == "SQ":
                answer.add(DataElement(key.tag, "SQ", []))
                continue
            elem = remote.get(key.tag)
            value = None if elem is None or elem.value in ("", None) else elem.value
            texts += _texts(value)
            same = elem is not None and value is not None and key.vr == elem.VR
            answer.add(elem if same else DataElement(key.tag, key.vr, value))
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


def _search(event: Event, ctx: GatewayContext, request: find.FindRequest) -> Any:
    """The streamed federated search, or the access refusal status (0x0124)."""
    refusal, restriction = access.find_access(event, ctx, "federated C-FIND")
    if refusal is not None:
        return refusal
    query = request.query if restriction is None else request.query.restricted(restriction)

    def shown(match: FederatedMatch) -> bool:  # a remote-only answer the caller may see?
        if match.local is not None or restriction is None:
            return True
        return access.remote_shown(event, ctx, match.remote, match.locations)

    return FederatedSearch(
        ctx.settings,
        ctx.database,
        request.level,
        query,
        event.identifier,
        local_limit=ctx.settings.qido_max_limit,
        pool=pool_of(ctx.database),
        stream=True,
        shown=shown,
    )


def handle_federated_find(event: Event, ctx: GatewayContext) -> Iterator[tuple[int | Dataset, Any]]:
    """Federated C-FIND (PS3.4 C.4.1.3): Pending answers as the sources give them,
    then Success or a failure."""
    calling = event.assoc.requestor.ae_title
    try:
        request = _read(event, ctx.settings.regional_issuer)
        search = _search(event, ctx, request)
        if not isinstance(search, FederatedSearch):
            yield search, None
            return
        matches = iter(search)
        first = next(matches, None)  # the sources are asked, the index read: errors now
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
    yield from _pending(event, request, search, first, matches)


def _pending(
    event: Event,
    request: find.FindRequest,
    search: FederatedSearch,
    match: FederatedMatch | None,
    rest: Generator[FederatedMatch, None, None],
) -> Iterator[tuple[int | Dataset, Any]]:
    """One Pending answer per match as it comes; Cancel as soon as the peer asks."""
    keys = find._answer_keys(request)
    syntax = str(event.context.transfer_syntax)
    relay = syntax in RELAYED_SYNTAXES
    while match is not None:
        if event.is_cancelled:
            rest.close()  # aborts the PACS still answering
            yield CANCEL, None
            return
        answer = None
        if relay and match.local is None and match.remote is not None:
            answer = relayed_answer(
                match.remote,
                keys,
                request.level.value,
                request.charset,
                match.locations,
                match.availability,
                implicit=syntax == ImplicitVRLittleEndian,
            )
        yield PENDING, answer if answer is not None else build_answer(request, match, keys)
        match = next(rest, None)
    if search.unavailable:
        LOGGER.warning(
            "federated C-FIND from %s answered without %s (unavailable)",
            event.assoc.requestor.ae_title,
            ", ".join(u.ae_title for u in search.unavailable),
        )
