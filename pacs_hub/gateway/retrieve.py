"""C-MOVE and C-GET SCP: Query/Retrieve MOVE and GET of PS3.4 C.4.2 and C.4.3.

The request Identifier is read once into a
:class:`~pacs_hub.storage.retrieval.RetrieveRequest` (unique keys only, PS3.4
C.4.2.1.4 / C.4.3.1.3) and the matching instances are selected from the index in one
short read transaction. Each match becomes one C-STORE sub-operation that sends the
stored bytes *as they are*: no decode, no re-encode, the transfer syntax they were
received in (so a retrieve is byte-identical to what was stored).

pynetdicom 3.0 drives the sub-operations and counts them (Remaining / Completed /
Failed / Warning, C.4.2.1.5 / C.4.3.1.4) from what the handler yields: for C-MOVE the
destination, then the number of matches, then one ``(Pending, dataset)`` per
instance; for C-GET the number then the pairs. Its Move/Get SCP only takes a
``Dataset`` per match, so each match is yielded as a :class:`StoredFile` (a
``Dataset`` holding just the two UIDs) and
:func:`~pacs_hub.gateway.egress.enable_stored_file_sends` makes
``Association.send_c_store`` send that file's dataset bytes (one read of the file)
instead of encoding a dataset. The one change ever made on the way out: an
odd-length (deflated) dataset gets the trailing NUL of PS3.5 A.5.

* C-MOVE (C.4.2.2): the Move Destination must be a registered node, looked up at
  request time; otherwise Failure 0xA801 (Move Destination unknown). The
  sub-association proposes one presentation context per distinct (SOP class,
  transfer syntax) of the matches, at most 128 (PS3.8 9.3.2.2: context IDs 1-255,
  odd); a match beyond that fails as a sub-operation.
* C-GET (C.4.3.2): the sub-operations go back on the same association, in the
  presentation contexts the requestor proposed with the SCP role (PS3.7 D.3.3.4);
  a match with no accepted context fails as a sub-operation.
* Retrieve on demand (:mod:`pacs_hub.gateway.on_demand`): studies the Identifier
  names but the hub does not hold are pulled from the establishment PACS that has
  them; a STUDY-level retrieve whose remote count is known sends each instance as
  soon as it is durable (the number of sub-operations: held + remote count; a pull
  failing midway ends with Warning 0xB000, what never came counted failed), any
  other waits for the pull (Pending responses meanwhile), then is served like any
  other. The sub-association of a streamed C-MOVE proposes, after the pairs already
  known, the SOP classes the PACS named in the syntaxes seen then the common ones.
* C-CANCEL is honoured between sub-operations (Cancel 0xFE00, C.4.2.3.2).
* Access policy (:mod:`pacs_hub.gateway.access`): each matched study is decided
  (RETRIEVE, purpose care) for the caller and, for C-MOVE, for the destination node
  too (a destination that may not see the study does not receive it). Studies
  refused are not sent: the final response is Warning 0xB000 with the withheld
  instances counted as failed sub-operations and an empty Failed SOP Instance UID
  List (C.4.2.1.5, C.4.3.1.4), or, when nothing may be sent, 0x0124 Refused: Not
  Authorized (PS3.7 C.5); no UID of a refused study is returned.
* A bad Identifier gets Failure 0xA900 (Identifier does not match SOP class) with
  an Error Comment; anything unexpected 0xC000 (Unable to process).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import build_context
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from pacs_hub.errors import HubError, InvalidQuery
from pacs_hub.gateway import access, deferred, on_demand
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.egress import StoredFile as StoredFile
from pacs_hub.gateway.egress import enable_stored_file_sends as enable_stored_file_sends
from pacs_hub.gateway.egress import linked
from pacs_hub.gateway.status import CANCEL, PENDING, error_status, status
from pacs_hub.regional.cget import TRANSFER_SYNTAXES
from pacs_hub.regional.nodes import RemoteNode, get_node
from pacs_hub.storage.query import UNIQUE_KEYS, Level
from pacs_hub.storage.retrieval import RetrieveItem, parse_retrieve, select_instances

LOGGER = logging.getLogger(__name__)
MAX_CONTEXTS = 128
UNABLE_TO_PROCESS = 0xC000
SUB_OPERATIONS_FAILED = 0xB000
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_AND_STUDY = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
MODEL_LEVELS: dict[str, tuple[Level, ...]] = {
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_AND_STUDY,  # Patient Root MOVE (C.6.1)
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_AND_STUDY,  # Patient Root GET
    "1.2.840.10008.5.1.4.1.2.2.2": PATIENT_AND_STUDY[1:],  # Study Root MOVE (C.6.2)
    "1.2.840.10008.5.1.4.1.2.2.3": PATIENT_AND_STUDY[1:],  # Study Root GET
}


def _values(identifier: Dataset) -> dict[str, list[str]]:
    """The unique keys of the Identifier as keyword -> values (a UID list is split)."""
    found: dict[str, list[str]] = {}
    for keyword in UNIQUE_KEYS.values():
        value: Any = identifier.get(keyword)
        if value is None:
            continue
        if isinstance(value, MultiValue | list):
            found[keyword] = [str(v) for v in value]
        else:
            found[keyword] = [str(value)]
    return found


def read_matches(event: Event, ctx: GatewayContext, after: int = 0) -> list[RetrieveItem]:
    """The stored instances a C-MOVE / C-GET Identifier names (C.4.2.2.1, C.4.3.2.1);
    ``after``: only those indexed after the row of that id."""
    request = cast(C_MOVE | C_GET, event.request)
    levels = MODEL_LEVELS.get(str(request.AffectedSOPClassUID))
    if levels is None:
        raise InvalidQuery(f"SOP class {request.AffectedSOPClassUID} is not a retrieve model")
    try:
        identifier = event.identifier
        level_text = str(identifier.get("QueryRetrieveLevel", "") or "")
        values = _values(identifier)
    except Exception as exc:  # pydicom decodes lazily and may raise anything
        raise InvalidQuery(f"cannot read the request Identifier ({type(exc).__name__})") from exc
    retrieve = parse_retrieve(level_text, levels, values)
    with ctx.database.reader() as session:
        return select_instances(session, ctx.blobs, retrieve, after)


def _matches_or_failure(
    event: Event, ctx: GatewayContext, after: int = 0
) -> list[RetrieveItem] | Dataset:
    """The matches, or the failure status to answer (an exception never escapes)."""
    calling = event.assoc.requestor.ae_title
    try:
        return read_matches(event, ctx, after)
    except HubError as exc:
        LOGGER.info("retrieve from %s refused: %s (0x%04X)", calling, exc.title, exc.dicom_status)
        return error_status(exc)
    except Exception:
        LOGGER.exception("retrieve from %s: unexpected error while selecting", calling)
        return status(UNABLE_TO_PROCESS, "internal error while selecting instances")


def storage_contexts(
    items: list[RetrieveItem], sop_classes: Sequence[str] = ()
) -> list[PresentationContext]:
    """One context per distinct (SOP class, transfer syntax) of ``items``, at most 128.

    ``sop_classes``: classes of instances still to come (a study being pulled), each
    proposed in the syntaxes of ``items`` then the common ones, after the pairs of
    ``items``, as long as there is room.
    """
    pairs = list(dict.fromkeys((item.sop_class_uid, item.transfer_syntax_uid) for item in items))
    if sop_classes:
        syntaxes = dict.fromkeys(
            [*(item.transfer_syntax_uid for item in items), *TRANSFER_SYNTAXES]
        )
        classes = dict.fromkeys([*(item.sop_class_uid for item in items), *sop_classes])
        more = [(sop_class, syntax) for syntax in syntaxes for sop_class in classes]
        pairs = list(dict.fromkeys([*pairs, *more]))[:MAX_CONTEXTS]
    if len(pairs) > MAX_CONTEXTS:
        LOGGER.warning(
            "C-MOVE needs %d presentation contexts; proposing %d, the rest will fail",
            len(pairs),
            MAX_CONTEXTS,
        )
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs[:MAX_CONTEXTS]]


def _sub_operations(
    event: Event, items: list[RetrieveItem], move: bool = False
) -> Iterator[tuple[int, Any]]:
    """One Pending per match (pynetdicom sends it); Cancel when the peer asks.

    Each match's bytes are read while the peer stores the one before
    (:func:`~pacs_hub.gateway.egress.linked`); for a C-MOVE
    the Pending responses are written while the destination stores
    (:mod:`~pacs_hub.gateway.deferred`)."""
    with deferred.pending_moves_deferred() if move else contextlib.nullcontext():
        for stored in linked(items):
            if event.is_cancelled:
                LOGGER.info("retrieve cancelled by the peer")
                yield CANCEL, None  # pynetdicom adds the Failed SOP Instance UID List
                return
            yield PENDING, stored


def _streamed(
    event: Event,
    ctx: GatewayContext,
    feed: on_demand.Feed,
    first: tuple[list[RetrieveItem], int],
    service: str,
    destination: str = "",
) -> Iterator[tuple[Any, Any]]:
    """Sub-operations of ``first`` (allowed, withheld) then of what the pull makes
    durable, each set through the access policy; then the final status when something
    was withheld or a pull failed."""
    batch: list[RetrieveItem] | None = first[0]
    denied = first[1]
    batches = feed.batches(lambda: bool(event.is_cancelled))
    while batch is not None:
        yield from _sub_operations(event, batch)
        if event.is_cancelled:
            return
        more = next(batches, None)
        batch, withheld = (
            (None, 0)
            if more is None
            else access.retrieve_filter(event, ctx, more, service, destination)
        )
        denied += withheld
    if event.is_cancelled:
        yield CANCEL, None
    elif denied:
        yield access.withheld(denied, service), access.no_failed_uids()
    elif feed.error:  # what never came is counted failed (the remaining sub-operations)
        LOGGER.info("%s: pull failed midway: %s", service, feed.error)
        yield status(SUB_OPERATIONS_FAILED, f"{service}: pull failed: {feed.error}"), None


def _prepared(
    event: Event, ctx: GatewayContext
) -> tuple[list[RetrieveItem] | Dataset, on_demand.Feed | None]:
    """The matches, and a :class:`~pacs_hub.gateway.on_demand.Feed` when the named
    studies the hub lacks are being pulled (none for a caller that may not retrieve)."""
    matches = _matches_or_failure(event, ctx)
    if isinstance(matches, Dataset) or not access.may_retrieve(event, ctx):
        return matches, None
    feed = on_demand.open_feed(
        event, ctx, matches, lambda after: _matches_or_failure(event, ctx, after)
    )
    return matches, feed


def _destination(event: Event, ctx: GatewayContext) -> RemoteNode | None:
    """The registered node named by Move Destination (C.4.2.1.4), or None."""
    title = (event.move_destination or "").strip()
    return get_node(ctx.database, title) if title else None


def _start_stream(
    event: Event, ctx: GatewayContext, feed: on_demand.Feed, service: str, destination: str = ""
) -> tuple[list[RetrieveItem], int, int] | None:
    """Once the first pulled instance is durable: what may be sent now, the number
    withheld, the number of sub-operations; None when the retrieve is not streamed
    (the feed cannot tell the number, or nothing may be sent yet)."""
    started = feed.first()
    if started is None:
        return None
    items, total = started
    allowed, denied = access.retrieve_filter(event, ctx, items, service, destination)
    if not allowed:
        return None
    calling = event.assoc.requestor.ae_title
    LOGGER.info("%s from %s: %d instance(s), streamed as pulled", service, calling, total)
    return allowed, denied, total


def handle_move(event: Event, ctx: GatewayContext) -> Iterator[Any]:
    """EVT_C_MOVE handler: destination, number of matches, then (status, dataset) pairs.

    An unknown destination is answered Failure 0xA801 by pynetdicom (which sends that
    response without an Error Comment; the reason is logged here). A bad Identifier
    sent to a known destination is answered 0xA900 with an Error Comment, which
    pynetdicom can only send after opening the sub-association.
    """
    enable_stored_file_sends()
    calling = event.assoc.requestor.ae_title
    node = _destination(event, ctx)
    if node is None:
        LOGGER.info("C-MOVE from %s refused: move destination not registered (0xA801)", calling)
        yield None, None
        return
    matches, feed = _prepared(event, ctx)
    if feed is not None:
        stream = _start_stream(event, ctx, feed, "C-MOVE", node.ae_title)
        if stream is not None:
            allowed, denied, total = stream
            yield node.host, node.port, {"contexts": storage_contexts(allowed, feed.sop_classes)}
            yield total
            yield from _streamed(event, ctx, feed, (allowed, denied), "C-MOVE", node.ae_title)
            return
        matches = feed.finish(cast(list[RetrieveItem], matches))
    yield from _serve_move(event, ctx, node, matches)


def _serve_move(
    event: Event, ctx: GatewayContext, node: RemoteNode, matches: list[RetrieveItem] | Dataset
) -> Iterator[Any]:
    """The C-MOVE of matches all held: destination, number, (status, dataset) pairs."""
    if isinstance(matches, Dataset):
        yield node.host, node.port, {"contexts": [build_context(VERIFICATION)]}
        yield 1
        yield matches, None
        return
    matches, denied = access.retrieve_filter(event, ctx, matches, "C-MOVE", node.ae_title)
    if denied and not matches:
        yield node.host, node.port, {"contexts": [build_context(VERIFICATION)]}
        yield 1
        yield access.refused("C-MOVE: not authorised"), access.no_failed_uids()
        return
    calling = event.assoc.requestor.ae_title
    LOGGER.info("C-MOVE from %s to %s: %d instance(s)", calling, node.ae_title, len(matches))
    yield node.host, node.port, {"contexts": storage_contexts(matches)}
    yield len(matches) + denied
    yield from _sub_operations(event, matches, move=True)
    if denied:
        yield access.withheld(denied, "C-MOVE"), access.no_failed_uids()


def handle_get(event: Event, ctx: GatewayContext) -> Iterator[Any]:
    """EVT_C_GET handler: number of matches, then (status, dataset) pairs (C.4.3.2)."""
    enable_stored_file_sends()
    matches, feed = _prepared(event, ctx)
    if feed is not None:
        stream = _start_stream(event, ctx, feed, "C-GET")
        if stream is not None:
            allowed, denied, total = stream
            yield total
            yield from _streamed(event, ctx, feed, (allowed, denied), "C-GET")
            return
        matches = feed.finish(cast(list[RetrieveItem], matches))
    yield from _serve_get(event, ctx, matches)


def _serve_get(
    event: Event, ctx: GatewayContext, matches: list[RetrieveItem] | Dataset
) -> Iterator[Any]:
    """The C-GET of matches all held: number, (status, dataset) pairs."""
    if isinstance(matches, Dataset):
        yield 1
        yield matches, None
        return
    matches, denied = access.retrieve_filter(event, ctx, matches, "C-GET")
    if denied and not matches:
        yield 1
        yield access.refused("C-GET: not authorised"), access.no_failed_uids()
        return
    LOGGER.info("C-GET from %s: %d instance(s)", event.assoc.requestor.ae_title, len(matches))
    yield len(matches) + denied
    yield from _sub_operations(event, matches)
    if denied:
        yield access.withheld(denied, "C-GET"), access.no_failed_uids()
