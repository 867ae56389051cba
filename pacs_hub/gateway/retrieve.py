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
``Dataset`` holding just the two UIDs) and :func:`enable_stored_file_sends` makes
``Association.send_c_store`` send that file's dataset bytes from disk (pynetdicom's
own chunked-file path) instead of encoding a dataset. The one change ever made on
the way out: an odd-length (deflated) dataset gets the trailing NUL of PS3.5 A.5.

* C-MOVE (C.4.2.2): the Move Destination must be a registered node, looked up at
  request time; otherwise Failure 0xA801 (Move Destination unknown). The
  sub-association proposes one presentation context per distinct (SOP class,
  transfer syntax) of the matches, at most 128 (PS3.8 9.3.2.2: context IDs 1-255,
  odd); a match beyond that fails as a sub-operation.
* C-GET (C.4.3.2): the sub-operations go back on the same association, in the
  presentation contexts the requestor proposed with the SCP role (PS3.7 D.3.3.4);
  a match with no accepted context fails as a sub-operation.
* Retrieve on demand (:mod:`pacs_hub.gateway.on_demand`): studies the Identifier
  names but the hub does not hold are first pulled from the establishment PACS that
  has them (Pending responses meanwhile), then served like any other.
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

import functools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import _config, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from pacs_hub.dicom.part10 import dataset_offset
from pacs_hub.errors import HubError, InvalidQuery
from pacs_hub.gateway import access, on_demand
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import CANCEL, PENDING, error_status, status
from pacs_hub.regional.nodes import RemoteNode, get_node
from pacs_hub.storage.query import UNIQUE_KEYS, Level
from pacs_hub.storage.retrieval import RetrieveItem, parse_retrieve, select_instances

LOGGER = logging.getLogger(__name__)
MAX_CONTEXTS = 128
UNABLE_TO_PROCESS = 0xC000
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_AND_STUDY = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
MODEL_LEVELS: dict[str, tuple[Level, ...]] = {
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_AND_STUDY,  # Patient Root MOVE (C.6.1)
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_AND_STUDY,  # Patient Root GET
    "1.2.840.10008.5.1.4.1.2.2.2": PATIENT_AND_STUDY[1:],  # Study Root MOVE (C.6.2)
    "1.2.840.10008.5.1.4.1.2.2.3": PATIENT_AND_STUDY[1:],  # Study Root GET
}
_INSTALL_LOCK = threading.Lock()


class StoredFile(Dataset):
    """A match handed to pynetdicom as a sub-operation: its UIDs, and its file.

    Only SOP Class UID and SOP Instance UID are set (pynetdicom reads the latter for
    the Failed SOP Instance UID List, C.4.2.1.4.2); the bytes sent are the stored
    file's dataset, read from ``stored_path`` by the patched ``send_c_store``.
    """

    def __init__(self, item: RetrieveItem) -> None:
        super().__init__()
        self.SOPClassUID = item.sop_class_uid
        self.SOPInstanceUID = item.sop_instance_uid
        self.stored_path: Path = item.path


@contextmanager
def even_length(path: Path) -> Iterator[Path]:
    """``path``, or a copy with one trailing NUL byte when its dataset has an odd length.

    Only a deflated dataset can have an odd length, and PS3.5 A.5 pads the deflated
    stream with a single trailing NUL to even length (some senders do not); a peer may
    refuse an odd PDV fragment (dcmtk: "Odd Fragment Length"). The stored blob is
    never changed.
    """
    with path.open("rb") as fp:
        offset = dataset_offset(fp)
        size = fp.seek(0, os.SEEK_END)
    if (size - offset) % 2 == 0:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pacs-hub-pad-") as folder:
        padded = Path(folder) / path.name
        shutil.copyfile(path, padded)
        with padded.open("ab") as fp:
            fp.write(b"\x00")
        yield padded


def enable_stored_file_sends() -> None:
    """Make ``Association.send_c_store`` send a :class:`StoredFile` from its file.

    pynetdicom sends a file's dataset bytes unchanged when ``send_c_store`` gets a
    path and ``STORE_SEND_CHUNKED_DATASET`` is on (the presentation context must then
    match the file's transfer syntax exactly). The switch only governs sends *from a
    path*, which the hub makes for stored blobs only. Idempotent, once per process.
    """
    with _INSTALL_LOCK:
        original = Association.send_c_store
        if getattr(original, "_pacs_hub_files", False):
            return
        _config.STORE_SEND_CHUNKED_DATASET = True

        @functools.wraps(original)
        def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
            if not isinstance(dataset, StoredFile):
                return original(self, dataset, *args, **kwargs)
            with even_length(dataset.stored_path) as path:
                return original(self, path, *args, **kwargs)

        send_c_store._pacs_hub_files = True  # type: ignore[attr-defined]
        Association.send_c_store = send_c_store  # type: ignore[method-assign]


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


def read_matches(event: Event, ctx: GatewayContext) -> list[RetrieveItem]:
    """The stored instances a C-MOVE / C-GET Identifier names (C.4.2.2.1, C.4.3.2.1)."""
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
        return select_instances(session, ctx.blobs, retrieve)


def _matches_or_failure(event: Event, ctx: GatewayContext) -> list[RetrieveItem] | Dataset:
    """The matches, or the failure status to answer (an exception never escapes)."""
    calling = event.assoc.requestor.ae_title
    try:
        return read_matches(event, ctx)
    except HubError as exc:
        LOGGER.info("retrieve from %s refused: %s (0x%04X)", calling, exc.title, exc.dicom_status)
        return error_status(exc)
    except Exception:
        LOGGER.exception("retrieve from %s: unexpected error while selecting", calling)
        return status(UNABLE_TO_PROCESS, "internal error while selecting instances")


def storage_contexts(items: list[RetrieveItem]) -> list[PresentationContext]:
    """One context per distinct (SOP class, transfer syntax) of ``items``, at most 128."""
    pairs = list(dict.fromkeys((item.sop_class_uid, item.transfer_syntax_uid) for item in items))
    if len(pairs) > MAX_CONTEXTS:
        LOGGER.warning(
            "C-MOVE needs %d presentation contexts; proposing %d, the rest will fail",
            len(pairs),
            MAX_CONTEXTS,
        )
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs[:MAX_CONTEXTS]]


def _sub_operations(event: Event, items: list[RetrieveItem]) -> Iterator[tuple[int, Any]]:
    """One Pending per match (pynetdicom sends it); Cancel when the peer asks."""
    for item in items:
        if event.is_cancelled:
            LOGGER.info("retrieve cancelled by the peer")
            yield CANCEL, None  # pynetdicom adds the Failed SOP Instance UID List
            return
        yield PENDING, StoredFile(item)


def _destination(event: Event, ctx: GatewayContext) -> RemoteNode | None:
    """The registered node named by Move Destination (C.4.2.1.4), or None."""
    title = (event.move_destination or "").strip()
    return get_node(ctx.database, title) if title else None


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
    matches = _matches_or_failure(event, ctx)
    if access.may_retrieve(event, ctx):  # no pull on behalf of a node that may not retrieve
        matches = on_demand.complete(event, ctx, matches, lambda: _matches_or_failure(event, ctx))
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
    LOGGER.info("C-MOVE from %s to %s: %d instance(s)", calling, node.ae_title, len(matches))
    yield node.host, node.port, {"contexts": storage_contexts(matches)}
    yield len(matches) + denied
    yield from _sub_operations(event, matches)
    if denied:
        yield access.withheld(denied, "C-MOVE"), access.no_failed_uids()


def handle_get(event: Event, ctx: GatewayContext) -> Iterator[Any]:
    """EVT_C_GET handler: number of matches, then (status, dataset) pairs (C.4.3.2)."""
    enable_stored_file_sends()
    matches = _matches_or_failure(event, ctx)
    if access.may_retrieve(event, ctx):  # no pull on behalf of a node that may not retrieve
        matches = on_demand.complete(event, ctx, matches, lambda: _matches_or_failure(event, ctx))
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
