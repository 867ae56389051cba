"""Prefetch of priors: when a new study arrives, pull the patient's other studies (issue 5).

The ``prefetch`` background task (:mod:`pacs_hub.regional.worker`) notices studies
created since its last scan (:mod:`~.arrivals`; studies the hub pulled itself, which
have a retrieve job, are not arrivals). For each, it works out where the patient's
other studies may live, under which local Patient IDs:

* the patient's own identity (Patient ID + Issuer of Patient ID, PS3.3 C.7.1.1), and
  every local identity linked to the same regional patient (``regional_patient_pk``);
* for each identity, the ``pacs`` nodes of the establishment owning its issuer
  (``establishment_issuers`` or an establishment's default issuer), except those the
  health check (:mod:`~.health`) found down. For the arriving
  identity itself, when its issuer is owned by nobody, the establishments of the
  nodes that sent the study; when none is known either (a hub without
  establishments), every ``pacs`` node.

Each PACS is asked a Study Root C-FIND at STUDY level (PS3.4 C.6.2) with the Patient
ID and a Study Date range of ``prefetch_max_age_days`` (0 = no limit). An answer is
kept when its Modalities in Study meet ``prefetch_modalities`` ('' = any), its Issuer
of Patient ID (when returned) is the identity's, the hub does not have the study and
no prefetch of it was ever made. Each kept study is pulled with
:func:`pacs_hub.regional.pull.pull_study` (``kind="prefetch"``), one after the other.
A PACS that does not answer is logged and skipped: prefetch is best effort.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import sop_class as sc
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from pacs_hub.config import Settings
from pacs_hub.errors import HubError, StudyDestroyed
from pacs_hub.regional.arrivals import ArrivalWatch
from pacs_hub.regional.pull import get_job, pull_study
from pacs_hub.regional.scu import PENDING, PacsNode, associate, requestor_ae
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import (
    Establishment,
    EstablishmentIssuer,
    Instance,
    Node,
    Patient,
    RetrieveJob,
    Series,
    Study,
)

LOGGER = logging.getLogger(__name__)
INTERVAL = 2.0
STUDY_ROOT_FIND = sc.StudyRootQueryRetrieveInformationModelFind


@dataclass(frozen=True, slots=True)
class Identity:
    """A local Patient ID within its issuer."""

    patient_id: str
    issuer: str


@dataclass(frozen=True, slots=True)
class Lookup:
    """One C-FIND to make: which identity, at which PACS."""

    identity: Identity
    node: PacsNode


@dataclass(frozen=True, slots=True)
class RemoteStudy:
    """A study a PACS holds for an identity, as its C-FIND answer describes it."""

    study_instance_uid: str
    study_date: str
    modalities: frozenset[str]
    issuer: str


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- where to look -------------------------------------------------------------------


def _pacs_of(session: Session, establishment_pks: Iterable[int]) -> list[PacsNode]:
    pks = sorted(set(establishment_pks))
    if not pks:
        return []
    stmt = select(Node).where(Node.role == "pacs", Node.establishment_pk.in_(pks))
    return _reachable(session.scalars(stmt.order_by(Node.ae_title)))


def _reachable(nodes: Iterable[Node]) -> list[PacsNode]:
    """The nodes not known to be down (the health check's last C-ECHO failed)."""
    found = []
    for node in nodes:
        if node.health_status == "down":
            LOGGER.info("prefetch: %s is down, not asked", node.ae_title)
            continue
        found.append(PacsNode(node.id, node.ae_title, node.host, node.port))
    return found


def _issuer_owner(session: Session, issuer: str) -> int | None:
    """The establishment owning ``issuer`` (listed, or as its default issuer)."""
    if not issuer:
        return None
    owner = session.scalar(
        select(EstablishmentIssuer.establishment_pk).where(EstablishmentIssuer.issuer == issuer)
    )
    if owner is None:
        owner = session.scalar(
            select(Establishment.id).where(Establishment.default_issuer == issuer)
        )
    return int(owner) if owner is not None else None


def _senders(session: Session, study_pk: int) -> list[int]:
    """Establishments of the nodes that sent instances of the study."""
    sent_by = (
        select(Instance.received_from_ae)
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == study_pk)
        .distinct()
    )
    stmt = select(Node.establishment_pk).where(
        Node.ae_title.in_(sent_by), Node.establishment_pk.is_not(None)
    )
    return [pk for pk in session.scalars(stmt) if pk is not None]


def _identities(session: Session, patient: Patient) -> list[Patient]:
    """The patient row, then every other row linked to the same regional patient."""
    if patient.regional_patient_pk is None:
        return [patient]
    linked = session.scalars(
        select(Patient)
        .where(Patient.regional_patient_pk == patient.regional_patient_pk, Patient.id != patient.id)
        .order_by(Patient.id)
    )
    return [patient, *linked]


def plan_lookups(session: Session, study: Study) -> list[Lookup]:
    """Every (identity, PACS) pair to query for the priors of ``study``'s patient."""
    own = study.patient
    lookups: list[Lookup] = []
    for row in _identities(session, own):
        if not row.patient_id:
            continue
        owner = _issuer_owner(session, row.issuer_of_patient_id)
        if owner is not None:
            nodes = _pacs_of(session, [owner])
        elif row.id != own.id:
            continue  # a linked identity nobody owns: no PACS to ask
        else:
            senders = _senders(session, study.id)
            nodes = _pacs_of(session, senders) if senders else _all_pacs(session)
        identity = Identity(row.patient_id, row.issuer_of_patient_id)
        lookups.extend(Lookup(identity, node) for node in nodes)
    return lookups


def _all_pacs(session: Session) -> list[PacsNode]:
    return _reachable(
        session.scalars(select(Node).where(Node.role == "pacs").order_by(Node.ae_title))
    )


# -- what they hold ------------------------------------------------------------------


def _query(identity: Identity, settings: Settings, today: date) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = identity.patient_id
    ds.IssuerOfPatientID = ""
    ds.StudyInstanceUID = ""
    ds.ModalitiesInStudy = ""
    days = settings.prefetch_max_age_days
    ds.StudyDate = f"{today - timedelta(days=days):%Y%m%d}-" if days else ""
    return ds


def _text(identifier: Dataset, keyword: str) -> str:
    value: Any = identifier.get(keyword)
    return "" if value is None else str(value).strip()


def _modalities(identifier: Dataset) -> frozenset[str]:
    value: Any = identifier.get("ModalitiesInStudy")
    if value is None:
        return frozenset()
    items = [value] if isinstance(value, str) else list(value)
    return frozenset(str(v).strip().upper() for v in items if str(v).strip())


def _answers(responses: Iterable[tuple[Dataset, Dataset | None]]) -> Iterator[RemoteStudy]:
    for status, identifier in responses:
        if not status:
            raise HubError("no C-FIND answer (timeout or association aborted)")
        code = int(status.get("Status", -1))
        if code in PENDING and identifier is not None:
            uid = _text(identifier, "StudyInstanceUID")
            if uid:
                yield RemoteStudy(
                    uid,
                    _text(identifier, "StudyDate"),
                    _modalities(identifier),
                    _text(identifier, "IssuerOfPatientID"),
                )
        elif code not in PENDING and code != 0x0000:
            raise HubError(f"C-FIND answered status 0x{code:04X}")


def find_studies(settings: Settings, lookup: Lookup, today: date) -> list[RemoteStudy]:
    """The studies ``lookup.node`` holds for the identity (Study Root C-FIND, STUDY level)."""
    ae = requestor_ae(settings, [STUDY_ROOT_FIND])
    assoc = associate(ae, lookup.node)
    try:
        if not any(cx.abstract_syntax == STUDY_ROOT_FIND for cx in assoc.accepted_contexts):
            raise HubError(f"{lookup.node.ae_title} does not accept Study Root C-FIND")
        query = _query(lookup.identity, settings, today)
        try:
            return list(_answers(assoc.send_c_find(query, STUDY_ROOT_FIND)))
        except (OSError, RuntimeError, ValueError) as exc:
            raise HubError(f"C-FIND failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if assoc.is_established:
            assoc.release()


# -- what to pull --------------------------------------------------------------------


def wanted(settings: Settings, found: RemoteStudy, identity: Identity, today: date) -> bool:
    """True when ``found`` meets the modality list, the age window and the identity."""
    modalities = {m.strip().upper() for m in settings.prefetch_modalities.split(",") if m.strip()}
    if modalities and not modalities & found.modalities:
        return False
    days = settings.prefetch_max_age_days
    if days and not (found.study_date >= f"{today - timedelta(days=days):%Y%m%d}"):
        return False  # also when the PACS did not return a Study Date
    return not (found.issuer and identity.issuer and found.issuer != identity.issuer)


def already_handled(database: Database, study_instance_uid: str) -> bool:
    """True when the hub has the study, or a prefetch of it was made (in any state)."""
    with database.reader() as session:
        stored = session.scalar(
            select(Study.id).where(Study.study_instance_uid == study_instance_uid)
        )
        job = session.scalar(
            select(RetrieveJob.id).where(
                RetrieveJob.study_instance_uid == study_instance_uid,
                or_(RetrieveJob.kind == "prefetch", RetrieveJob.state.in_(("queued", "running"))),
            )
        )
    return stored is not None or job is not None


def _candidates(
    settings: Settings, lookups: list[Lookup], trigger: str, today: date
) -> dict[str, str]:
    """Study UID -> AE title of the PACS to pull it from (first PACS that has it)."""
    chosen: dict[str, str] = {}
    for lookup in lookups:
        try:
            found = find_studies(settings, lookup, today)
        except HubError as exc:
            LOGGER.warning("prefetch: %s skipped: %s", lookup.node.ae_title, exc.message)
            continue
        for remote in found:
            uid = remote.study_instance_uid
            if (
                uid != trigger
                and uid not in chosen
                and wanted(settings, remote, lookup.identity, today)
            ):
                chosen[uid] = lookup.node.ae_title
    return chosen


def prefetch_priors(settings: Settings, database: Database, study_instance_uid: str) -> list[int]:
    """Pull the priors of the patient of a new study; return the ids of the jobs run."""
    with database.reader() as session:
        study = session.scalars(
            select(Study).where(Study.study_instance_uid == study_instance_uid)
        ).one_or_none()
        lookups = plan_lookups(session, study) if study is not None else []
    today = _now().date()
    jobs: list[int] = []
    for uid, node_ae in _candidates(settings, lookups, study_instance_uid, today).items():
        if already_handled(database, uid):
            continue
        try:
            job_id = pull_study(settings, database, node_ae, uid, kind="prefetch")
        except StudyDestroyed:
            LOGGER.info("prefetch: prior %s was destroyed at the end of its retention", uid)
            continue
        job = get_job(database, job_id)
        LOGGER.info(
            "prefetch: prior %s of the patient of %s from %s: job %d %s",
            uid,
            study_instance_uid,
            node_ae,
            job_id,
            job.state if job else "?",
        )
        jobs.append(job_id)
    return jobs


# -- the task ------------------------------------------------------------------------


def new_studies(session: Session, since: datetime) -> dict[str, tuple[datetime, int]]:
    """Study UID -> (created_at, patient pk) of the studies created after ``since``.

    Studies the hub pulled itself (a retrieve job exists) are left out.
    """
    pulled = select(RetrieveJob.study_instance_uid)
    rows = session.execute(
        select(Study.study_instance_uid, Study.created_at, Study.patient_pk).where(
            Study.created_at > since, Study.study_instance_uid.not_in(pulled)
        )
    )
    return {uid: (created, patient) for uid, created, patient in rows}


class PrefetchTask:
    """The ``prefetch`` task: priors of every new study, once per study."""

    def __init__(self) -> None:
        self.watch = ArrivalWatch("prefetch")

    def run(self, ctx: WorkerContext) -> None:
        """One scan, then the pulls it calls for (see the module docstring)."""
        now = _now()
        since = self.watch.window_start(ctx.settings, now)
        with ctx.database.reader() as session:
            found = new_studies(session, since)
        versions = {uid: created for uid, (created, _) in found.items()}
        patients: set[int] = set()
        for uid in self.watch.unseen(versions):
            if ctx.stop.is_set():
                return
            if found[uid][1] in patients:
                continue  # same patient, same priors: asked once per scan
            patients.add(found[uid][1])
            try:
                prefetch_priors(ctx.settings, ctx.database, uid)
            except Exception:  # the task's adapter: one bad study never blocks the others
                LOGGER.exception("prefetch for the patient of study %s failed", uid)
        self.watch.handled(ctx.settings, now, since, versions)


register(
    PeriodicTask(
        "prefetch",
        interval=lambda s: INTERVAL if s.prefetch_enabled else 0.0,
        run=PrefetchTask().run,
    )
)
