"""Federated query: the hub's own index and every establishment PACS, as one answer.

A federated C-FIND (PS3.4 C.4.1) sends a Study Root C-FIND as SCU (PS3.4 C.6.2) to
every registered node whose role is ``pacs``, all from the querying thread
(:mod:`pacs_hub.regional.remote_find`: non-blocking associations polled together,
answers handed over as they arrive, associations reused by long-lived processes), and
meanwhile runs the hub's own matching
(:mod:`pacs_hub.storage.query`, the SQL of C-FIND and QIDO-RS). Each remote source
has ``settings.federated_timeout`` seconds, all of them together: at that deadline
the sources that have not finished are aborted and reported as unavailable, as are
those that refused the association, dropped it or answered a failure status. A slow
or dead PACS therefore never blocks the answer.

The answers are merged and de-duplicated by the unique key of the level (PS3.4
C.6.2.1: Study Instance UID at STUDY level, Series Instance UID at SERIES,
SOP Instance UID at IMAGE). Each merged match lists the AE titles that hold it (the
hub's own first when it has a copy) and whether the hub has a copy. The whole answer
(:func:`federated_find`) has the hub's own matches first, in its index order, then the
remote-only ones in source order; the streamed one (:class:`FederatedSearch`, the
federated C-FIND SCP) yields each remote-only match as soon as a PACS gives it and
the hub's own matches last.

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
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs_hub.config import Settings
from pacs_hub.regional.remote_find import Answered, LinkPool, MultiFind
from pacs_hub.regional.scu import PACS_ROLE, PacsNode
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


def unique_key(answer: Dataset, tag: BaseTag) -> str:
    """The UID at ``tag`` of a PACS answer ('' when absent or empty).

    Read from the element's raw bytes when it is still undecoded (a UI value is
    ASCII, padded with NUL, PS3.5 6.2): converting it through pydicom cost more than
    decoding the whole answer, for each of a large result's answers.
    """
    elem = answer.get_item(tag)
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement):
        return bytes(elem.value or b"").decode("ascii", "replace").strip(" \x00")
    return str(elem.value or "").strip()


class Merger:
    """Answers merged by the level's unique key as they come (PS3.4 C.6.2.1)."""

    def __init__(self, level: Level, hub_ae: str) -> None:
        self.keyword = UNIQUE_KEYS[level]
        self.tag = Tag(self.keyword)
        self.hub_ae = hub_ae
        self.rows: dict[str, Row | None] = {}
        self.answers: dict[str, Dataset] = {}
        self.where: dict[str, list[str]] = {}

    def add_local(self, local: Sequence[Row]) -> None:
        """The hub's own matches: the hub first among each one's locations."""
        for row in local:
            key = str(attribute_value(row, self.keyword) or "")
            if self.rows.get(key) is None:
                self.rows[key] = row
                self.where[key] = [self.hub_ae, *self.where.get(key, ())]

    def add_remote(self, ae_title: str, answer: Dataset) -> str:
        """One PACS answer; its key ('' when it has none: ignored)."""
        key = unique_key(answer, self.tag)
        if key:
            if key not in self.rows:
                self.rows[key], self.where[key] = None, []
            self.answers.setdefault(key, answer)
            if ae_title not in self.where[key]:
                self.where[key].append(ae_title)
        return key

    def forget(self, ae_title: str) -> None:
        """A source that failed: off every location list; its only matches dropped."""
        for key, where in list(self.where.items()):
            if ae_title in where:
                where.remove(ae_title)
                if not where:
                    del self.rows[key], self.where[key]
                    self.answers.pop(key, None)

    def match(self, key: str) -> FederatedMatch:
        return FederatedMatch(key, self.rows[key], self.answers.get(key), tuple(self.where[key]))

    def matches(self, skip: set[str] | frozenset[str] = frozenset()) -> list[FederatedMatch]:
        """Every match not in ``skip``: the hub's first (index order), then the others."""
        return [self.match(key) for key in self.rows if key not in skip]


def merge(
    level: Level,
    hub_ae: str,
    local: Sequence[Row],
    remote: Sequence[tuple[str, list[Dataset]]],
) -> list[FederatedMatch]:
    """De-duplicate by the level's unique key; the hub's matches first (PS3.4 C.6.2.1)."""
    merger = Merger(level, hub_ae)
    merger.add_local(local)
    for ae_title, datasets in remote:
        for answer in datasets:
            merger.add_remote(ae_title, answer)
    return merger.matches()


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


_ASKABLE = (
    select(Node.id, Node.ae_title, Node.host, Node.port, Node.health_status, Node.down_since)
    .where(Node.role == PACS_ROLE)
    .order_by(Node.ae_title)
)


def _askable(settings: Settings, database: Database) -> tuple[list[PacsNode], list[Unavailable]]:
    """The PACS nodes to query, and those reported unavailable without asking.

    A node the health check found down (:mod:`pacs_hub.regional.health`) is not asked:
    a hung PACS would cost every query the whole timeout. A node registered under the
    hub's own federated AE title would make a query ask itself: never asked. Read
    with one Core statement, no ORM session: it runs before every federated query.
    """
    nodes, skipped = [], []
    with database.read_connection() as conn:
        rows = conn.execute(_ASKABLE).all()
    for row in rows:
        node = PacsNode(row.id, row.ae_title, row.host, row.port)
        if node.ae_title == settings.federated_ae_title:
            LOGGER.warning("node %s is the hub's federated AE title: not asked", node.ae_title)
        elif row.health_status == "down":
            since = row.down_since
            when = f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since else ""
            skipped.append(Unavailable(node.ae_title, f"down{when} (health check)"))
        else:
            nodes.append(node)
    return nodes, skipped


class FederatedSearch:
    """One federated query, iterated as its merged matches become known.

    The PACS are asked first (their requests sent), then the hub's index is read while
    they answer. With ``stream`` (a C-FIND SCP's Pending responses), a match only
    PACS hold is yielded as soon as the first of them answers it and ``shown``
    accepts it: the hub's own matches are known by then, so it is never one the hub
    holds, and its key is never yielded again (de-duplicated); its Retrieve AE Title
    lists the PACS that had answered it at that moment (PS3.4 C.4.1.1.3.2 asks for
    AE titles the entity can be retrieved from, not all of them). A match ``shown``
    refused is offered again with each later location and once more at the end.
    The hub's own matches come last, once every source has finished or timed out,
    each with every PACS that also holds it. Without ``stream`` (QIDO-RS totals and
    paging, CLI, retrieve), everything comes at the end, in :func:`merge` order, and
    a source that failed counts for nothing.

    After the iteration, ``unavailable``, ``sources`` and ``elapsed`` describe it.
    Closing the iterator early (a C-CANCEL) aborts the PACS still answering.
    """

    def __init__(
        self,
        settings: Settings,
        database: Database,
        level: Level,
        query: Query,
        identifier: Dataset,
        *,
        local_limit: int | None = None,
        pool: LinkPool | None = None,
        stream: bool = False,
        shown: Callable[[FederatedMatch], bool] | None = None,
    ) -> None:
        self.settings, self.database = settings, database
        self.level, self.query, self.identifier = level, query, identifier
        self.local_limit, self.pool, self.stream = local_limit, pool, stream
        self.shown = shown or (lambda _match: True)
        self.unavailable: tuple[Unavailable, ...] = ()
        self.sources: tuple[str, ...] = ()
        self.elapsed = 0.0
        self._merger = Merger(level, settings.ae_title)
        self._sent: set[str] = set()
        self._answers: dict[str, list[Dataset]] = {}
        self._failed: list[Unavailable] = []

    def __iter__(self) -> Generator[FederatedMatch, None, None]:
        start = time.monotonic()
        timeout = self.settings.federated_timeout
        finds = self._ask_remotes(timeout)
        pending = set(finds.titles)
        try:
            with self.database.reader() as session:
                local = find(session, self.level, self.query, limit=self.local_limit)
            self._merger.add_local(local)
            yield from self._drain(finds, pending, start + timeout)
        finally:
            finds.close()  # the finished PACS' associations pooled, the others aborted
        for title in sorted(pending):
            self._failed.append(Unavailable(title, f"no answer within {timeout:g}s"))
            self._merger.forget(title)
        self.unavailable = tuple(sorted(self._failed, key=lambda u: u.ae_title))
        for title in finds.titles:
            for answer in self._answers.get(title, ()) if title not in pending else ():
                self._merger.add_remote(title, answer)
        for match in self._merger.matches(skip=self._sent):
            if self.shown(match):
                yield match
        self.elapsed = time.monotonic() - start
        self._log()

    def _ask_remotes(self, timeout: float) -> MultiFind:
        """Send the C-FIND requests to every PACS to ask; the others are unavailable."""
        wire = remote_identifier(self.identifier, self.level)
        nodes, self._failed = _askable(self.settings, self.database)
        if self.query.linked is None:
            plans = [(node, [wire]) for node in nodes]  # as plan_requests, without a session
        else:
            with self.database.reader() as session:
                plans = plan_requests(session, self.query, wire, nodes)
        finds = MultiFind(self.settings, plans, timeout, self.pool)
        self.sources = tuple(sorted([*finds.titles, *(u.ae_title for u in self._failed)]))
        return finds

    def _drain(
        self, finds: MultiFind, pending: set[str], deadline: float
    ) -> Iterator[FederatedMatch]:
        """Take the PACS' events until each has finished or the deadline passed."""
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for event in finds.poll(left):
                if event.ae_title not in pending:
                    continue
                if isinstance(event, Answered):
                    yield from self._answered(event)
                    continue
                pending.discard(event.ae_title)
                if event.reason:
                    self._failed.append(Unavailable(event.ae_title, event.reason))
                    self._answers.pop(event.ae_title, None)
                    self._merger.forget(event.ae_title)

    def _answered(self, event: Answered) -> Iterator[FederatedMatch]:
        if not self.stream:
            self._answers.setdefault(event.ae_title, []).append(event.identifier)
            return
        key = self._merger.add_remote(event.ae_title, event.identifier)
        if not key or key in self._sent or self._merger.rows[key] is not None:
            return
        match = self._merger.match(key)
        if self.shown(match):
            self._sent.add(key)
            yield match

    def _log(self) -> None:
        for source in self.unavailable:
            LOGGER.warning(
                "federated query: source %s unavailable (%s)", source.ae_title, source.reason
            )
        LOGGER.debug(  # one line per query is noise at INFO; failures are WARNINGs above
            "federated %s query: %d match(es) from the hub and %d PACS (%d unavailable) in %.2fs",
            self.level,
            len(self._merger.rows),
            len(self.sources) - len(self.unavailable),
            len(self.unavailable),
            self.elapsed,
        )


def federated_find(
    settings: Settings,
    database: Database,
    level: Level,
    query: Query,
    identifier: Dataset,
    *,
    local_limit: int | None = None,
    pool: LinkPool | None = None,
) -> FederatedResult:
    """Query the hub's index (``query``) and every PACS node (``identifier``); merge.

    ``identifier`` is the C-FIND Identifier for the remote sources (see
    :func:`remote_identifier`); it is not changed. The whole answer at once (see
    :class:`FederatedSearch` for the streamed one).
    """
    search = FederatedSearch(
        settings, database, level, query, identifier, local_limit=local_limit, pool=pool
    )
    matches = list(search)
    return FederatedResult(level, matches, search.sources, search.unavailable, search.elapsed)


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
