"""Stand-in (PCA): the hub answers as an establishment's PACS while that PACS is down.

An association whose Called AE Title is the AE title of an enrolled establishment's
PACS node reaches the hub (on the hub's DICOM port: the modalities and workstations
change only the address they call) and, while the stand-in is *active*, is served as
that PACS:

* C-FIND answers only the establishment's studies (those recorded as its own at
  ingest, by backfill or by the stand-in), intersected, when the access policy is on,
  with what the calling node may see (:func:`pacs_hub.gateway.access.find_access`:
  decided and audited as the hub's own C-FIND);
* C-STORE goes through the one ingest path; each instance stored is recorded for
  return to the PACS (``<code>.outage``, see :mod:`pacs_hub.backup.state`) and its
  study, when no establishment owns it yet, is recorded as the establishment's;
* C-MOVE and C-GET serve the hub's copies, refused (0xC000 with an Error Comment,
  nothing sent) when the Identifier names an instance of another establishment.

An establishment may also have a DICOM port of its stand-in's own (``pacs-hub backup
standin CODE MODE --port N``, for sites whose modalities can only be pointed at another
IP:port): each gateway process listens there too, within seconds of the setting
(:func:`pacs_hub.gateway.server.sync_standin_ports`), and serves every association on it
as that establishment's PACS, whatever AE title is called; while the stand-in is not
active, associations there are rejected (A-ASSOCIATE-RJ, transient: the PACS is the one
to call).

The stand-in is active when its mode (``pacs-hub backup standin``, ``/api/backup``) is
``on``, or ``auto`` (the default) and the PACS node's health check says ``down``.
Every other association is served as before. Which AE titles stand in is read from the
state files and the index at most every :data:`TTL` seconds per gateway process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import and_, func, or_, select, update

from pacs_hub.backup import state
from pacs_hub.config import Settings
from pacs_hub.errors import HubError
from pacs_hub.gateway import access, callers, federated_find, find, retrieve, store
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import CANCEL, PENDING, error_status, status
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Instance, Node, Patient, Series, Study
from pacs_hub.storage.query import Access
from pacs_hub.storage.query import find as find_rows

LOGGER = logging.getLogger(__name__)
TTL = 2.0
PAGE = 500


@dataclass(frozen=True, slots=True)
class StandIn:
    """An establishment whose PACS the hub stands in for."""

    code: str
    establishment_pk: int
    ae_title: str


_cache: dict[str, tuple[float, dict[str, StandIn]]] = {}
_lock = threading.Lock()


def _is_active(mode: str, health: str) -> bool:
    return mode == "on" or (mode == "auto" and health == "down")


def load_standins(settings: Settings, database: Database) -> dict[str, StandIn]:
    """AE title -> :class:`StandIn`, for every active stand-in (read now)."""
    wanted: dict[str, tuple[str, str]] = {}
    for code in state.enrolled(settings):
        try:
            current = state.load(settings, code)
        except (HubError, ValueError):
            continue
        if current.get("node"):
            wanted[str(current["node"])] = (code, str(current.get("standin", "auto")))
    if not wanted:
        return {}
    with database.reader() as session:
        rows = session.execute(
            select(Node.ae_title, Node.health_status, Node.establishment_pk).where(
                Node.ae_title.in_(list(wanted))
            )
        ).all()
    return {
        ae: StandIn(wanted[ae][0], int(pk), ae)
        for ae, health, pk in rows
        if pk is not None and _is_active(wanted[ae][1], health)
    }


def active(settings: Settings, database: Database) -> dict[str, StandIn]:
    """:func:`load_standins`, cached for :data:`TTL` seconds in this process."""
    key = str(settings.data_dir)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < TTL:
            return hit[1]
    found = load_standins(settings, database)
    with _lock:
        _cache[key] = (time.monotonic(), found)
    return found


_port_cache: dict[str, tuple[tuple[int, int, int], int]] = {}
"""State file -> (its stat signature, the stand-in port it held): the gateways ask every
few seconds, and a region's state files (every study found on a PACS) are large."""


def dedicated_ports(settings: Settings) -> dict[str, int]:
    """Establishment code -> the DICOM port of its stand-in's own (those that have one).

    A state file is read again only when it was replaced (``standin_port`` is changed by
    :func:`state.update`, which writes the file anew; the journal never holds it).
    """
    ports: dict[str, int] = {}
    for code in state.enrolled(settings):
        path = state.folder(settings) / f"{code}.json"
        try:
            info = path.stat()
            signature = (info.st_ino, info.st_mtime_ns, info.st_size)
            cached = _port_cache.get(str(path))
            if cached is not None and cached[0] == signature:
                port = cached[1]
            else:
                port = int(state.load(settings, code).get("standin_port") or 0)
                _port_cache[str(path)] = (signature, port)
        except (HubError, ValueError, OSError):
            continue
        if port:
            ports[code] = port
    return ports


def _of(ctx: GatewayContext, code: str) -> StandIn | None:
    """The stand-in of establishment ``code`` if active."""
    found = [s for s in active(ctx.settings, ctx.database).values() if s.code == code]
    return found[0] if found else None


def on_dedicated_request(event: Event, ctx: GatewayContext, code: str) -> None:
    """EVT_REQUESTED on ``code``'s own port: rejected while its stand-in is not active."""
    assoc = event.assoc
    decided = assoc.is_rejected or assoc.is_aborted or getattr(assoc, "_kill", False)
    if assoc.is_acceptor and not decided and _of(ctx, code) is None:
        LOGGER.info("stand-in port of %s: not active, association rejected", code)
        callers._reject(assoc, callers.REJECTED_TRANSIENT, callers.NO_REASON_GIVEN)


def called(event: Event, ctx: GatewayContext, dedicated: str = "") -> StandIn | None:
    """The stand-in the association was called for, or None (``dedicated``: the code
    whose own port the association came in on)."""
    if dedicated:
        return _of(ctx, dedicated)
    primitive = event.assoc.requestor.primitive
    title = str(getattr(primitive, "called_ae_title", "") or "").strip() if primitive else ""
    if not title or title == ctx.settings.ae_title.strip():
        return None
    return active(ctx.settings, ctx.database).get(title)


def establishment_access(establishment_pk: int) -> Access:
    """Only the studies (and patients with a study) of one establishment."""
    return Access(
        Study.establishment_pk == establishment_pk,
        Patient.id.in_(select(Study.patient_pk).where(Study.establishment_pk == establishment_pk)),
    )


def _restriction(standin: StandIn, policy: Access | None) -> Access:
    """The establishment's studies, and (policy on) only those the caller may see."""
    own = establishment_access(standin.establishment_pk)
    if policy is None:
        return own
    return Access(and_(own.studies, policy.studies), and_(own.patients, policy.patients))


def _answers(
    event: Event, ctx: GatewayContext, request: find.FindRequest, standin: StandIn
) -> Iterator[tuple[int, Any]]:
    offset = 0
    while True:
        with ctx.database.reader() as session:
            rows = find_rows(session, request.level, request.query, limit=PAGE, offset=offset)
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, find.build_answer(request, row, standin.ae_title)
        if len(rows) < PAGE:
            return
        offset += PAGE


def handle_find(
    event: Event, ctx: GatewayContext, dedicated: str = ""
) -> Iterator[tuple[int | Dataset, Any]]:
    """EVT_C_FIND: as the establishment's PACS when standing in, else as before."""
    standin = called(event, ctx, dedicated)
    if standin is None:
        yield from federated_find.handle_find(event, ctx)
        return
    calling = event.assoc.requestor.ae_title
    try:
        request = find.read_request(event, ctx.settings.regional_issuer)
        refusal, policy = access.find_access(event, ctx, "C-FIND")  # as the hub's C-FIND
        if refusal is not None:
            yield refusal, None
            return
        request = replace(request, query=request.query.restricted(_restriction(standin, policy)))
        yield from _answers(event, ctx, request, standin)
    except HubError as exc:
        LOGGER.info("stand-in C-FIND from %s refused: %s", calling, exc.title)
        yield error_status(exc), None
    except Exception:  # the adapter: anything else is a DICOM failure, never a crash
        LOGGER.exception("stand-in C-FIND from %s: unexpected error", calling)
        yield status(0xC000, "cannot read the request or search"), None


def _foreign(event: Event, ctx: GatewayContext, standin: StandIn) -> int:
    """Instances the retrieve names that are not the establishment's (0 if unreadable:
    the hub's own handler then answers the bad Identifier)."""
    try:
        items = retrieve.read_matches(event, ctx)
    except Exception:  # the retrieve handler reports it with its own status
        return 0
    uids = [item.sop_instance_uid for item in items]
    foreign = 0
    with ctx.database.reader() as session:
        for start in range(0, len(uids), PAGE):
            stmt = (
                select(func.count(Instance.id))
                .join(Series, Series.id == Instance.series_pk)
                .join(Study, Study.id == Series.study_pk)
                .where(
                    Instance.sop_instance_uid.in_(uids[start : start + PAGE]),
                    or_(
                        Study.establishment_pk.is_(None),
                        Study.establishment_pk != standin.establishment_pk,
                    ),
                )
            )
            foreign += int(session.scalar(stmt) or 0)
    return foreign


def _refusal(standin: StandIn, foreign: int) -> Dataset:
    LOGGER.info(
        "stand-in for %s: retrieve of %d foreign instance(s) refused", standin.code, foreign
    )
    return status(0xC000, f"not held for {standin.ae_title[:16]}: {foreign} instance(s)")


def handle_move(event: Event, ctx: GatewayContext, dedicated: str = "") -> Iterator[Any]:
    """EVT_C_MOVE: as the hub, refused when standing in for data of another establishment."""
    standin = called(event, ctx, dedicated)
    foreign = _foreign(event, ctx, standin) if standin is not None else 0
    if standin is None or not foreign:
        yield from retrieve.handle_move(event, ctx)
        return
    node = retrieve._destination(event, ctx)
    if node is None:
        yield None, None
        return
    yield node.host, node.port, {"contexts": [build_context(retrieve.VERIFICATION)]}
    yield 1
    yield _refusal(standin, foreign), None


def handle_get(event: Event, ctx: GatewayContext, dedicated: str = "") -> Iterator[Any]:
    """EVT_C_GET: as the hub, refused when standing in for data of another establishment."""
    standin = called(event, ctx, dedicated)
    foreign = _foreign(event, ctx, standin) if standin is not None else 0
    if standin is None or not foreign:
        yield from retrieve.handle_get(event, ctx)
        return
    yield 1
    yield _refusal(standin, foreign), None


def _claim_study(database: Database, sop: str, establishment_pk: int) -> None:
    """Record the study of ``sop`` as the establishment's when nobody owns it yet."""
    study_pk = (
        select(Series.study_pk)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Instance.sop_instance_uid == sop)
        .scalar_subquery()
    )
    with database.session() as session:
        session.execute(
            update(Study)
            .where(Study.id == study_pk, Study.establishment_pk.is_(None))
            .values(establishment_pk=establishment_pk)
        )


def handle_store(event: Event, ctx: GatewayContext, dedicated: str = "") -> Dataset | int:
    """EVT_C_STORE: the one ingest path; while standing in, also mark for return."""
    answer = store.handle_store(event, ctx)
    standin = called(event, ctx, dedicated)
    code = answer if isinstance(answer, int) else int(answer.Status)
    if standin is None or code != 0x0000:
        return answer
    sop = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
    try:
        _claim_study(ctx.database, sop, standin.establishment_pk)
        state.mark_outage(ctx.settings, standin.code, sop)
    except Exception:  # the adapter: the instance is stored; say so in the log
        LOGGER.exception("stand-in for %s: %s stored but not marked for return", standin.code, sop)
    return answer
