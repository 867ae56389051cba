"""Pulling a study from an establishment PACS into the hub (retrieve on demand, prefetch).

The hub asks the PACS for a C-MOVE (PS3.4 C.4.2, Study Root, STUDY level) whose Move
Destination is the hub's own AE title: the PACS opens its own association to the hub
and sends every instance by C-STORE, which the gateway takes through the one ingest
path (validate -> blob -> index), so what arrives is stored byte for byte as sent.
The PACS must therefore know the hub as a modality (Orthanc: ``DicomModalities``).
A C-MOVE response comes only after its sub-operation was acknowledged, and the hub
acknowledges a C-STORE only once the instance is durable, so when the final response
arrives the study is in the index. A study of many instances that someone waits for
(kind ``on-demand``) is listed first and moved in parts over several associations at
once (:mod:`pacs_hub.regional.pull_parts`): one association pulls at the pace of one
instance's round trip, and the hub stores what arrives on several in parallel. Prefetch
and backfill pull each study over one association (a backfill pulls several studies at
once; more associations on top of those slowed it down, measured 2026-11-30). When
the C-MOVE fails with nothing received (a PACS that does not know the hub answers
0xA801, Orthanc 0xC000), the study is asked for again by C-GET
(:mod:`pacs_hub.regional.cget`), which needs no move destination.

Each pull is a :class:`~pacs_hub.storage.models.RetrieveJob` row: ``queued`` when
claimed, ``running`` while the C-MOVE runs, then ``done`` or ``failed`` (with the
reason). ``expected`` and ``received`` follow the Number of Remaining / Completed /
Warning / Failed Sub-operations of the Pending responses (C.4.2.1.5); the row is
written at most every :data:`WRITE_EVERY` seconds while running.

Single flight: a study has at most one active (queued or running) job. The claim is
one write transaction (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's transaction-scoped
advisory lock on the UID), so concurrent callers, threads or processes, find the
first caller's job and wait for it instead of pulling again. A job whose row has not
changed for longer than an alive owner can stay silent (ACSE + DIMSE + network
timeouts: pynetdicom gives up after those) is declared abandoned (``failed``) by the
waiter that notices.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import sop_class as sc
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from pacs_hub.archive.models import destroyed_in
from pacs_hub.config import Settings
from pacs_hub.dicom.header import is_valid_uid
from pacs_hub.errors import HubError, InvalidQuery, StudyDestroyed
from pacs_hub.regional.cget import get_study
from pacs_hub.regional.move_scu import MODEL as MOVE_MODEL
from pacs_hub.regional.move_scu import MoveResult, send_move
from pacs_hub.regional.pull_parts import move_in_parts
from pacs_hub.regional.scu import (
    PENDING,
    PacsNode,
    associate,
    pacs_node,
    requestor_ae,
)
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Node, RetrieveJob

LOGGER = logging.getLogger(__name__)
Progress = Callable[[int, int | None], None]
ACTIVE = ("queued", "running")
ON_DEMAND = "on-demand"
WRITE_EVERY = 0.5
POLL_EVERY = 0.2
STALE_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A retrieve job as the API and the CLI show it."""

    id: int
    study_instance_uid: str
    node: str
    kind: str
    state: str
    expected: int | None
    received: int
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """True once the job is done or failed."""
        return self.state not in ACTIVE

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields (ISO 8601 times, UTC)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() + "Z" if value is not None else None

        return {
            "id": self.id,
            "study": self.study_instance_uid,
            "node": self.node,
            "kind": self.kind,
            "state": self.state,
            "expected": self.expected,
            "received": self.received,
            "error": self.error,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def check_study_uid(value: str) -> str:
    """A Study Instance UID (PS3.5 9.1); :class:`InvalidQuery` otherwise."""
    uid = value.strip()
    if not is_valid_uid(uid):
        raise InvalidQuery(f"Study Instance UID {uid[:64]!r} is not a valid UID")
    return uid


def _status(job: RetrieveJob, node: str) -> JobStatus:
    return JobStatus(
        job.id,
        job.study_instance_uid,
        node,
        job.kind,
        job.state,
        job.expected,
        job.received,
        job.error,
        job.created_at,
        job.started_at,
        job.finished_at,
    )


def get_job(database: Database, job_id: int) -> JobStatus | None:
    """The job ``job_id``, or None."""
    with database.reader() as session:
        row = session.execute(
            select(RetrieveJob, Node.ae_title)
            .join(Node, Node.id == RetrieveJob.source_node_pk)
            .where(RetrieveJob.id == job_id)
        ).one_or_none()
        return _status(row[0], row[1]) if row is not None else None


def list_jobs(database: Database, study: str | None = None, limit: int = 100) -> list[JobStatus]:
    """The latest jobs (newest first), optionally of one study."""
    stmt = select(RetrieveJob, Node.ae_title).join(Node, Node.id == RetrieveJob.source_node_pk)
    if study:
        stmt = stmt.where(RetrieveJob.study_instance_uid == study)
    stmt = stmt.order_by(RetrieveJob.id.desc()).limit(limit)
    with database.reader() as session:
        return [_status(job, ae) for job, ae in session.execute(stmt).all()]


def _lock_study(session: Session, database: Database, study: str) -> None:
    """Serialise claims of one study across processes (SQLite: BEGIN IMMEDIATE already)."""
    if database.is_sqlite:
        return
    key = int.from_bytes(hashlib.sha256(study.encode()).digest()[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def claim_job(database: Database, study: str, node: PacsNode, kind: str) -> tuple[int, bool]:
    """The active job of ``study``, or a new queued one: ``(job id, created by us)``."""
    with database.session() as session:
        _lock_study(session, database, study)
        active = session.scalars(
            select(RetrieveJob)
            .where(RetrieveJob.study_instance_uid == study, RetrieveJob.state.in_(ACTIVE))
            .order_by(RetrieveJob.id)
        ).first()
        if active is not None:
            return active.id, False
        job = RetrieveJob(
            study_instance_uid=study,
            source_node_pk=node.pk,
            kind=kind,
            state="queued",
            received=0,
            error="",
            created_at=_now(),
        )
        session.add(job)
        session.flush()
        return job.id, True


def _write(database: Database, job_id: int, **values: Any) -> None:
    with database.session() as session:
        session.execute(update(RetrieveJob).where(RetrieveJob.id == job_id).values(**values))


class _JobWriter:
    """Writes a running job's progress to its row, at most every WRITE_EVERY seconds."""

    def __init__(self, database: Database, job_id: int, progress: Progress | None) -> None:
        self.database = database
        self.job_id = job_id
        self.progress = progress
        self.received = 0
        self.expected: int | None = None
        self.written = 0.0

    def __call__(self, received: int, expected: int | None) -> None:
        if (received, expected) == (self.received, self.expected):
            return
        self.received, self.expected = received, expected
        if self.progress is not None:
            self.progress(received, expected)
        if time.monotonic() - self.written >= WRITE_EVERY:
            _write(self.database, self.job_id, received=received, expected=expected)
            self.written = time.monotonic()


def move_study(settings: Settings, node: PacsNode, study: str, report: Progress) -> MoveResult:
    """C-MOVE ``study`` from ``node`` to the hub's AE title (PS3.4 C.4.2.2); block until done."""
    assoc = associate(requestor_ae(settings, [MOVE_MODEL]), node)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        return send_move(assoc, node, identifier, settings.ae_title, report)
    finally:
        if assoc.is_established:
            assoc.release()


@dataclass(frozen=True, slots=True)
class RemoteStudy:
    """What a PACS says of a study before it is pulled (PS3.4 C.6.2.1.2, STUDY level)."""

    instances: int | None
    """Number of Study Related Instances (0020,1208); None when not answered."""
    sop_classes: tuple[str, ...]
    """SOP Classes in Study (0008,0062); empty when not answered."""


def _answer_values(answer: Dataset, keyword: str) -> list[str]:
    value: Any = answer.get(keyword)
    if value in (None, ""):
        return []
    values = list(value) if isinstance(value, MultiValue | list) else [value]
    return [str(v).strip() for v in values if str(v).strip()]


def remote_study(settings: Settings, database: Database, node_ae: str, study: str) -> RemoteStudy:
    """The instance count and SOP classes of ``study`` on ``node_ae``, by one STUDY-level
    C-FIND (PS3.4 C.4.1); ``RemoteStudy(None, ())`` when the PACS answers neither."""
    node = pacs_node(database, node_ae)
    model = sc.StudyRootQueryRetrieveInformationModelFind
    assoc = associate(requestor_ae(settings, [model]), node)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    query.NumberOfStudyRelatedInstances = ""
    query.SOPClassesInStudy = ""
    counts: list[str] = []
    classes: list[str] = []
    try:
        for status, answer in assoc.send_c_find(query, model):
            if not status or int(status.Status) not in PENDING:
                break
            if answer is not None and str(answer.get("StudyInstanceUID", "")) == study:
                counts += _answer_values(answer, "NumberOfStudyRelatedInstances")
                classes += _answer_values(answer, "SOPClassesInStudy")
    finally:
        if assoc.is_established:
            assoc.release()
    number = int(counts[0]) if counts and counts[0].isascii() and counts[0].isdigit() else None
    return RemoteStudy(number, tuple(dict.fromkeys(classes)))


def _move_or_get(
    settings: Settings,
    database: Database,
    node: PacsNode,
    study: str,
    writer: Progress,
    in_parts: bool,
) -> tuple[str, MoveResult]:
    """C-MOVE (in parts when ``in_parts`` and the study is large,
    :mod:`pacs_hub.regional.pull_parts`), else (failed with nothing received) C-GET:
    ``(error or '', final result)``."""
    parted = move_in_parts(settings, node, study, writer) if in_parts else None
    result = parted or move_study(settings, node, study, writer)
    error = result.error()
    if not error or result.received or result.status in (0x0000, 0xFE00):
        return error, result
    LOGGER.info("C-MOVE of %s from %s failed (%s): C-GET", study, node.ae_title, error)
    got = MoveResult(*get_study(settings, database, node, study, writer))
    return (f"C-MOVE: {error}; C-GET: {got.error()}" if got.error() else ""), got


def run_job(
    settings: Settings, database: Database, job_id: int, progress: Progress | None = None
) -> None:
    """Run a claimed job to its end (done or failed); never raises for a remote failure."""
    with database.reader() as session:
        job = session.get(RetrieveJob, job_id)
        node_row = session.get(Node, job.source_node_pk) if job is not None else None
        if job is None or node_row is None:
            raise InvalidQuery(f"retrieve job {job_id} or its node does not exist")
        study = job.study_instance_uid
        node = PacsNode(node_row.id, node_row.ae_title, node_row.host, node_row.port)
        in_parts = job.kind == ON_DEMAND  # someone waits; prefetch and backfill do not
    _write(database, job_id, state="running", started_at=_now())
    LOGGER.info("retrieve job %d: study %s from %s", job_id, study, node.ae_title)
    writer = _JobWriter(database, job_id, progress)
    expected: int | None
    try:
        error, result = _move_or_get(settings, database, node, study, writer, in_parts)
        received, expected = result.received, result.received + result.failed
    except HubError as exc:
        error, received, expected = exc.message, writer.received, writer.expected
    except Exception as exc:  # the job's adapter: any failure is recorded, never lost
        LOGGER.exception("retrieve job %d: unexpected error", job_id)
        error, received, expected = f"internal error: {type(exc).__name__}", writer.received, None
    state = "failed" if error else "done"
    if progress is not None and (received, expected) != (writer.received, writer.expected):
        progress(received, expected)
    _write(
        database,
        job_id,
        state=state,
        received=received,
        expected=expected,
        error=error[:256],
        finished_at=_now(),
    )
    LOGGER.info("retrieve job %d: %s, %d instance(s) %s", job_id, state, received, error)


def stale_after(settings: Settings) -> float:
    """Seconds without any change after which an active job is deemed abandoned."""
    return settings.acse_timeout + settings.dimse_timeout + settings.network_timeout + STALE_MARGIN


def _abandon(database: Database, job: JobStatus, silent_for: float) -> None:
    """Mark an active job failed if it is still exactly as last seen."""
    with database.session() as session:
        session.execute(
            update(RetrieveJob)
            .where(
                RetrieveJob.id == job.id,
                RetrieveJob.state == job.state,
                RetrieveJob.received == job.received,
            )
            .values(
                state="failed",
                error=f"abandoned: no progress for {silent_for:.0f}s",
                finished_at=_now(),
            )
        )
    LOGGER.warning("retrieve job %d abandoned after %.0fs without progress", job.id, silent_for)


def wait_for_job(
    settings: Settings, database: Database, job_id: int, progress: Progress | None = None
) -> JobStatus:
    """Block until job ``job_id`` is done or failed, reporting its progress."""
    seen: tuple[str, int, int | None] | None = None
    changed = time.monotonic()
    while True:
        job = get_job(database, job_id)
        if job is None:
            raise InvalidQuery(f"retrieve job {job_id} does not exist")
        now = (job.state, job.received, job.expected)
        if now != seen:
            seen, changed = now, time.monotonic()
            if progress is not None and job.state == "running":
                progress(job.received, job.expected)
        if job.finished:
            if progress is not None:
                progress(job.received, job.expected)
            return job
        if time.monotonic() - changed > stale_after(settings):
            _abandon(database, job, time.monotonic() - changed)
        time.sleep(POLL_EVERY)


def pull_study(
    settings: Settings,
    database: Database,
    node_ae: str,
    study_instance_uid: str,
    *,
    kind: str = ON_DEMAND,
    progress: Progress | None = None,
) -> int:
    """Pull a study from the PACS ``node_ae`` into the hub; block until done; the job id.

    Concurrent calls for one study pull it once: the later callers wait for the
    active job and get its id. The job's final state (:func:`get_job`) says whether
    the pull succeeded; a remote failure is recorded there, not raised. Raises
    :class:`~pacs_hub.errors.InvalidQuery` for a bad UID and
    :class:`~pacs_hub.errors.UnknownNode` for a node that is not a registered PACS,
    :class:`~pacs_hub.errors.StudyDestroyed` for a study destroyed at the end of its
    retention (:mod:`pacs_hub.archive.destruction`).
    """
    study = check_study_uid(study_instance_uid)
    node = pacs_node(database, node_ae)
    with database.read_connection() as conn:
        destroyed = destroyed_in(conn, study)
    if destroyed is not None:
        raise StudyDestroyed(
            f"study {study} was destroyed at the end of its retention (destruction"
            f" {destroyed}): it is not pulled again"
        )
    job_id, owner = claim_job(database, study, node, kind)
    if owner:
        run_job(settings, database, job_id, progress)
    else:
        LOGGER.info("retrieve of study %s already running as job %d: waiting", study, job_id)
        wait_for_job(settings, database, job_id, progress)
    return job_id
