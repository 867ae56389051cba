"""Federated query: the hub's own index and every establishment PACS, as one answer.

A federated C-FIND (PS3.4 C.4.1) runs the hub's own matching
(:mod:`pacs_hub.storage.query`, the SQL of C-FIND and QIDO-RS) and, in parallel
threads, a Study Root C-FIND as SCU (PS3.4 C.6.2) against every registered node whose
role is ``pacs``. Each remote source has ``settings.federated_timeout`` seconds, all
of them together: at that deadline the sources that have not finished are aborted
and reported as unavailable, as are those that refused the association, dropped it
or answered a failure status. A slow or dead PACS therefore never blocks the answer.

The answers are merged and de-duplicated by the unique key of the level (PS3.4
C.6.2.1: Study Instance UID at STUDY level, Series Instance UID at SERIES,
SOP Instance UID at IMAGE): the hub's own matches first, in its index order, then
the remote-only ones in source order. Each merged match lists the AE titles that hold
it (the hub's own first when it has a copy) and whether the hub has a copy.

A query by regional patient or INS (PatientID with IssuerOfPatientID = the regional
issuer or an INS issuer, :class:`~pacs_hub.storage.query.LinkedPatients`) is translated
per PACS: each establishment's PACS is asked for the local Patient IDs, linked to that
regional patient, whose issuer the establishment owns (:func:`plan_requests`).

The hub's matches are read up to ``local_limit`` rows (the caller's cap); remote
sources are not paged (a C-FIND SCU receives what the SCP sends).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import sop_class as sc
from pynetdicom.association import Association
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs_hub.config import Settings
from pacs_hub.errors import HubError
from pacs_hub.regional.scu import (
    PACS_ROLE,
    PacsNode,
    SourceUnavailable,
    associate,
    pacs_nodes,
    requestor_ae,
)
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, EstablishmentIssuer, Node
from pacs_hub.storage.query import (
    UNIQUE_KEYS,
    Level,
    Query,
    Row,
    attribute_value,
    find,
    find_patients,
    parse_query,
)

LOGGER = logging.getLogger(__name__)
PENDING = (0xFF00, 0xFF01)
ONLINE = "ONLINE"
NEARLINE = "NEARLINE"


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A remote source that gave no usable answer, and why."""

    ae_title: str
    reason: str


@dataclass(frozen=True, slots=True)
class FederatedMatch:
    """One entity of the merged answer and where it lives."""

    key: str
    """Its unique key (Study / Series / SOP Instance UID)."""
    local: Row | None
    """The hub's own index row, when the hub holds it."""
    remote: Dataset | None
    """The first remote answer (its Identifier), when a PACS holds it."""
    locations: tuple[str, ...]
    """AE titles holding it: the hub's first when it has a copy, then the PACS."""

    @property
    def hub_has_copy(self) -> bool:
        """True when the hub's archive holds it."""
        return self.local is not None

    @property
    def availability(self) -> str:
        """Instance Availability (0008,0056), PS3.3 C.4.23.1.1: ONLINE or NEARLINE."""
        return ONLINE if self.hub_has_copy else NEARLINE


@dataclass(frozen=True, slots=True)
class FederatedResult:
    """The merged answer of a federated query."""

    level: Level
    matches: list[FederatedMatch]
    sources: tuple[str, ...]
    """The remote PACS queried (AE titles)."""
    unavailable: tuple[Unavailable, ...] = field(default=())
    elapsed: float = 0.0

    @property
    def unavailable_titles(self) -> list[str]:
        """AE titles of the sources that gave no usable answer."""
        return [u.ae_title for u in self.unavailable]


class RemoteFind:
    """One C-FIND SCU query to one PACS (Study Root, PS3.4 C.6.2), abortable."""

    model = sc.StudyRootQueryRetrieveInformationModelFind

    def __init__(
        self,
        settings: Settings,
        node: PacsNode,
        identifiers: Sequence[Dataset],
        timeout: float,
    ) -> None:
        self.settings = settings
        self.node = node
        self.identifiers = identifiers
        self.timeout = timeout
        self.assoc: Association | None = None

    def run(self) -> list[Dataset]:
        """Every Pending answer's Identifier (each request in turn, one association);
        :class:`SourceUnavailable` on any failure."""
        ae = requestor_ae(self.settings, [self.model], timeout=self.timeout)
        self.assoc = assoc = associate(ae, self.node)
        answers: list[Dataset] = []
        try:
            for identifier in self.identifiers:
                answers += self._find(assoc, identifier)
            return answers
        finally:
            if assoc.is_established:
                assoc.release()

    def _find(self, assoc: Association, request: Dataset) -> list[Dataset]:
        answers: list[Dataset] = []
        for status, identifier in assoc.send_c_find(request, self.model):
            if not status:
                raise SourceUnavailable(f"{self.node.ae_title}: no C-FIND response in time")
            code = int(status.Status)
            if code in PENDING:
                if identifier is not None:
                    answers.append(identifier)
                continue
            if code == 0x0000:
                return answers
            comment = str(status.get("ErrorComment", "") or "")
            raise SourceUnavailable(
                f"{self.node.ae_title}: C-FIND status 0x{code:04X} {comment}".strip()
            )
        raise SourceUnavailable(f"{self.node.ae_title}: C-FIND ended without a final status")

    def abort(self) -> None:
        """Abort the association if it is still up (deadline passed)."""
        assoc = self.assoc
        if assoc is not None and assoc.is_established:
            assoc.abort()


def remote_identifier(identifier: Dataset, level: Level) -> Dataset:
    """The Identifier sent to each PACS: the request's keys, Study Root, unique keys present.

    Patient-level keys are dropped below STUDY level (Study Root has them at STUDY
    level only, PS3.4 C.6.2.1); the unique keys from STUDY down to ``level`` are
    added empty when missing, so every answer can be de-duplicated.
    """
    out = Dataset()
    patient_keywords = {"PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate"}
    patient_keywords |= {"PatientSex", "OtherPatientIDsSequence"}
    for elem in identifier:
        if elem.tag.group in (0x0000, 0x0002) or elem.keyword == "RetrieveAETitle":
            continue
        if level is not Level.STUDY and elem.keyword in patient_keywords:
            continue
        out.add(elem)
    out.QueryRetrieveLevel = level.value
    for each in (Level.STUDY, Level.SERIES, Level.IMAGE):
        if each.depth <= level.depth and UNIQUE_KEYS[each] not in out:
            setattr(out, UNIQUE_KEYS[each], "")
    return out


def _remote_key(answer: Dataset, level: Level) -> str:
    value = answer.get(UNIQUE_KEYS[level])
    return str(value or "").strip()


def merge(
    level: Level,
    hub_ae: str,
    local: Sequence[Row],
    remote: Sequence[tuple[str, list[Dataset]]],
) -> list[FederatedMatch]:
    """De-duplicate by the level's unique key; the hub's matches first (PS3.4 C.6.2.1)."""
    keyword = UNIQUE_KEYS[level]
    rows: dict[str, Row | None] = {}
    answers: dict[str, Dataset] = {}
    where: dict[str, list[str]] = {}
    for row in local:
        key = str(attribute_value(row, keyword) or "")
        if key not in rows:
            rows[key], where[key] = row, [hub_ae]
    for ae_title, datasets in remote:
        for answer in datasets:
            key = _remote_key(answer, level)
            if not key:
                continue
            if key not in rows:
                rows[key], where[key] = None, []
            answers.setdefault(key, answer)
            if ae_title not in where[key]:
                where[key].append(ae_title)
    return [FederatedMatch(key, rows[key], answers.get(key), tuple(where[key])) for key in rows]


def _owners(session: Session) -> dict[str, int]:
    """Issuer of Patient ID -> the establishment owning it (listed or default issuer)."""
    owners = {e.default_issuer: e.id for e in session.scalars(select(Establishment))}
    owners.pop("", None)
    for issuer, owner in session.execute(
        select(EstablishmentIssuer.issuer, EstablishmentIssuer.establishment_pk)
    ):
        owners[issuer] = owner
    return owners


def plan_requests(
    session: Session, query: Query, wire: Dataset, nodes: Sequence[PacsNode]
) -> list[tuple[PacsNode, list[Dataset]]]:
    """The C-FIND requests for each PACS node.

    Usually ``wire`` to every node. For a query by regional patient or INS
    (``query.linked``: PatientID with IssuerOfPatientID = the regional issuer or an INS
    issuer), each establishment's PACS is asked for the local Patient IDs of the linked
    identities whose issuer that establishment owns (one request per ID, IssuerOfPatientID
    left universal): the PACS knows its own IDs, not the region's. A PACS whose
    establishment has no linked identity (or that has no establishment) is not asked.
    """
    if query.linked is None:
        return [(node, [wire]) for node in nodes]
    owners = _owners(session)
    ids: dict[int, set[str]] = {}
    for patient in find_patients(session, query):
        owner = owners.get(patient.issuer_of_patient_id)
        if owner is not None and patient.patient_id:
            ids.setdefault(owner, set()).add(patient.patient_id)
    establishment_of = dict(
        session.execute(select(Node.id, Node.establishment_pk).where(Node.role == PACS_ROLE)).all()
    )
    plans = []
    for node in nodes:
        local_ids = sorted(ids.get(establishment_of.get(node.pk) or -1, ()))
        if local_ids:
            plans.append((node, [_with_patient_id(wire, pid) for pid in local_ids]))
    return plans


def _with_patient_id(wire: Dataset, patient_id: str) -> Dataset:
    request = copy.deepcopy(wire)
    request.PatientID = patient_id
    if "IssuerOfPatientID" in request:
        request.IssuerOfPatientID = None
    return request


def _collect(
    futures: dict[Future[list[Dataset]], RemoteFind], deadline: float
) -> tuple[list[tuple[str, list[Dataset]]], list[Unavailable]]:
    _done, late = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    answered: list[tuple[str, list[Dataset]]] = []
    unavailable: list[Unavailable] = []
    for future, query in futures.items():
        title = query.node.ae_title
        if future in late:
            query.abort()
            unavailable.append(Unavailable(title, f"no answer within {query.timeout:g}s"))
            continue
        try:
            answered.append((title, future.result()))
        except HubError as exc:
            unavailable.append(Unavailable(title, exc.message))
        except Exception as exc:  # a peer's malformed answer must not sink the others
            unavailable.append(Unavailable(title, f"{type(exc).__name__}: {exc}"[:120]))
    return answered, unavailable


def _askable(settings: Settings, database: Database) -> tuple[list[PacsNode], list[Unavailable]]:
    """The PACS nodes to query, and those reported unavailable without asking.

    A node the health check found down (:mod:`pacs_hub.regional.health`) is not asked:
    a hung PACS would cost every query the whole timeout. A node registered under the
    hub's own federated AE title would make a query ask itself: never asked.
    """
    with database.reader() as session:
        rows = session.execute(
            select(Node.ae_title, Node.health_status, Node.down_since).where(Node.role == PACS_ROLE)
        ).all()
    down = {title: since for title, health, since in rows if health == "down"}
    nodes, skipped = [], []
    for node in pacs_nodes(database):
        if node.ae_title == settings.federated_ae_title:
            LOGGER.warning("node %s is the hub's federated AE title: not asked", node.ae_title)
        elif node.ae_title in down:
            since = down[node.ae_title]
            when = f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since else ""
            skipped.append(Unavailable(node.ae_title, f"down{when} (health check)"))
        else:
            nodes.append(node)
    return nodes, skipped


def federated_find(
    settings: Settings,
    database: Database,
    level: Level,
    query: Query,
    identifier: Dataset,
    *,
    local_limit: int | None = None,
) -> FederatedResult:
    """Query the hub's index (``query``) and every PACS node (``identifier``); merge.

    ``identifier`` is the C-FIND Identifier for the remote sources (see
    :func:`remote_identifier`); it is not changed.
    """
    start = time.monotonic()
    timeout = settings.federated_timeout
    wire = remote_identifier(identifier, level)
    nodes, skipped = _askable(settings, database)
    with database.reader() as session:
        plans = plan_requests(session, query, wire, nodes)
    queries = [RemoteFind(settings, node, requests, timeout) for node, requests in plans]
    pool = ThreadPoolExecutor(max_workers=max(1, len(queries)), thread_name_prefix="fed-find")
    try:
        futures = {pool.submit(q.run): q for q in queries}
        with database.reader() as session:
            local = find(session, level, query, limit=local_limit)
        answered, unavailable = _collect(futures, start + timeout)
        unavailable = sorted([*skipped, *unavailable], key=lambda u: u.ae_title)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for source in unavailable:
        LOGGER.warning(
            "federated query: source %s unavailable (%s)", source.ae_title, source.reason
        )
    matches = merge(level, settings.ae_title, local, answered)
    elapsed = time.monotonic() - start
    LOGGER.info(
        "federated %s query: %d match(es) from the hub and %d PACS (%d unavailable) in %.2fs",
        level,
        len(matches),
        len(answered),
        len(unavailable),
        elapsed,
    )
    sources = tuple(sorted([q.node.ae_title for q in queries] + [u.ae_title for u in skipped]))
    return FederatedResult(level, matches, sources, tuple(unavailable), elapsed)


def locate_study(settings: Settings, database: Database, study: str) -> FederatedMatch | None:
    """Where a study lives (hub and PACS nodes), by a federated STUDY-level query."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    result = federated_find(
        settings, database, Level.STUDY, parse_query({"StudyInstanceUID": study}), identifier
    )
    return next((m for m in result.matches if m.key == study), None)


def remote_source(settings: Settings, database: Database, study: str) -> str | None:
    """The AE title of a PACS node holding ``study`` (the first by AE title), or None."""
    match = locate_study(settings, database, study)
    if match is None:
        return None
    remote = match.locations[1:] if match.hub_has_copy else match.locations
    return remote[0] if remote else None
