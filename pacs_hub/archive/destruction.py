"""Destroying studies at the end of their legal retention, with sign-off and a record.

The workflow of ../shared/reference/france.md section 5 ("End of retention"):

1. :func:`propose` lists the studies due (:func:`pacs_hub.archive.retention.due`), as
   they are then (patient, dates, counts, sizes), in a destruction ``proposed``.
2. :func:`sign`: the establishment's director and its medical information doctor
   (``dim``) sign, and for a public establishment (its records are public archives)
   the departmental archives' visa is recorded with its reference (``archives``):
   each capacity once, by a different user, a regional administrator or an
   administrator of the establishment. The last signature due makes it ``approved``.
3. :func:`execute` destroys each study still due (one on which a hold was placed, or
   whose patient came back since, is *kept*, with the reason). Per study: its
   instances (SOP Instance UID, SHA-256, blob) are appended to the destruction's record
   file ``DATA_DIR/archive/destructions/<id>.jsonl`` and synced; its index rows are
   deleted and the deletion audited (``delete``: DICOM "Study Deleted", 110105) in one
   transaction; then its blobs are erased (:meth:`BlobStore.erase`). Interrupted, it
   resumes where it stopped; the record file keeps an index rebuild from bringing back
   what was destroyed (:func:`destroyed_digests`).
4. At the end the record (:func:`record`: the list with its signatures) is written to
   ``DATA_DIR/archive/destructions/<id>.json``: the kept proof that the studies existed.

Every step is audited. A destroyed study is not pulled again from an establishment's
PACS by the backfill, retrieve on demand or the prefetch of priors
(:func:`~pacs_hub.archive.models.destroyed_in`); the copies outside the hub are the
establishment's to destroy.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from pacs_hub.archive import retention
from pacs_hub.archive.models import (
    Destruction,
    DestructionSignature,
    DestructionStudy,
)
from pacs_hub.config import Settings
from pacs_hub.errors import HubError, InvalidQuery
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.durable import append_line, held_alone, read_lines, write_json
from pacs_hub.storage.models import Establishment, Instance, Patient, Series, Study
from pacs_hub.trust.models import User, UserEstablishment
from pacs_hub.trust.principal import Role

CAPACITIES = ("director", "dim", "archives")


class DestructionRefused(HubError):
    title = "Destruction refused"
    http_status = 409


class SignerNotAllowed(HubError):
    title = "Signature refused"
    http_status = 403


class UnknownDestruction(HubError):
    title = "Unknown destruction"
    http_status = 404


def required(public: bool) -> tuple[str, ...]:
    """The capacities that must sign a destruction."""
    return CAPACITIES if public else CAPACITIES[:2]


def folder(data_dir: Path) -> Path:
    return data_dir / "archive" / "destructions"


def propose(
    database: Database,
    settings: Settings,
    actor: str,
    as_of: date,
    *,
    establishment: str | None = None,
    limit: int | None = None,
    public: bool = True,
    note: str = "",
) -> int:
    """List the studies due by ``as_of`` (today at the latest) in a new destruction; its
    id. Audited."""
    if as_of > retention.now().date():
        raise InvalidQuery(
            f"as of {retention.da(as_of)}: a destruction lists studies due by today at the"
            " latest ('retention due --as-of' shows what a later day will bring)"
        )
    with database.session() as session:
        conn = session.connection()
        est_pk = retention.establishment_pk(conn, establishment) if establishment else None
        listed = retention.due(conn, settings, as_of, establishment=establishment)[:limit]
        if not listed:
            raise DestructionRefused(
                f"no study's retention has ended by {retention.da(as_of)} (or each is held,"
                " or listed by an open destruction)"
            )
        row = Destruction(
            establishment_pk=est_pk,
            state="proposed",
            public=public,
            as_of=retention.da(as_of),
            note=note[:256],
            proposed_by=actor,
            proposed_at=retention.now(),
        )
        session.add(row)
        session.flush()
        for study in listed:  # as it is now: what the record keeps of it
            snapshot = asdict(study)
            del snapshot["establishment"], snapshot["held"]
            session.add(DestructionStudy(destruction_pk=row.id, state="listed", **snapshot))
        _audit(conn, actor, "destruction-propose", row.id, studies=len(listed))
        return int(row.id)


def _audit(conn: Connection, actor: str, action: str, destruction_id: int, **detail: Any) -> None:
    retention.audit_change(conn, actor, action, detail={"destruction": destruction_id, **detail})


def _get(session: Any, destruction_id: int) -> Destruction:
    row = session.get(Destruction, destruction_id)
    if row is None:
        raise UnknownDestruction(f"no destruction {destruction_id}")
    return row  # type: ignore[no-any-return]


def signer_allowed(conn: Connection, username: str, establishment_pk: int | None) -> bool:
    """True when ``username`` is an active regional administrator, or an administrator
    of the destruction's establishment."""
    user = conn.execute(select(User).where(User.username == username)).first()
    if user is None or not user.active:
        return False
    roles = set(str(user.roles).split(","))
    if Role.REGIONAL_ADMIN in roles:
        return True
    if Role.ESTABLISHMENT_ADMIN not in roles or establishment_pk is None:
        return False
    works = select(UserEstablishment.id).where(
        UserEstablishment.user_pk == user.id, UserEstablishment.establishment_pk == establishment_pk
    )
    return conn.execute(works).first() is not None


def sign(
    database: Database, destruction_id: int, capacity: str, username: str, reference: str = ""
) -> str:
    """Record ``username``'s signature in ``capacity``; the destruction's state after it.

    The caller has authenticated ``username`` (the API's signed-in user, the CLI's
    password check). Audited as that user, a refused signature too.
    """
    try:
        return _sign(database, destruction_id, capacity, username, reference)
    except HubError as exc:
        with database.session() as session:
            retention.audit_change(
                session.connection(),
                f"user:{username}",
                "destruction-sign",
                outcome="deny",
                reason=exc.message,
                detail={"destruction": destruction_id, "capacity": capacity},
            )
        raise


def _sign(
    database: Database, destruction_id: int, capacity: str, username: str, reference: str
) -> str:
    with database.session() as session:
        conn = session.connection()
        row = _get(session, destruction_id)
        if not signer_allowed(conn, username, row.establishment_pk):
            raise SignerNotAllowed(
                f"{username[:64]!r} may not sign: a regional administrator or an administrator"
                " of the establishment signs"
            )
        if row.state != "proposed":
            raise DestructionRefused(
                f"destruction {destruction_id} is {row.state}: no more signatures"
            )
        due = required(row.public)
        if capacity not in due:
            raise InvalidQuery(f"capacity {capacity[:20]!r}: one of {', '.join(due)}")
        if capacity == "archives" and not reference.strip():
            raise InvalidQuery("the archives' visa needs its reference")
        signed = {
            s.capacity: s.signer
            for s in session.scalars(
                select(DestructionSignature).where(DestructionSignature.destruction_pk == row.id)
            )
        }
        if capacity in signed:
            raise DestructionRefused(
                f"destruction {destruction_id} is signed as {capacity} already"
            )
        if username in signed.values():
            raise DestructionRefused(
                f"{username[:64]!r} signed this destruction already:"
                " each capacity is another person"
            )
        session.add(
            DestructionSignature(
                destruction_pk=row.id,
                capacity=capacity,
                signer=username,
                reference=reference.strip()[:128],
                signed_at=retention.now(),
            )
        )
        if set(due) <= {*signed, capacity}:
            row.state = "approved"
        _audit(conn, f"user:{username}", "destruction-sign", row.id, capacity=capacity)
        return row.state


def cancel(database: Database, destruction_id: int, actor: str, reason: str) -> None:
    """Cancel a destruction not yet executing. Audited."""
    with database.session() as session:
        row = _get(session, destruction_id)
        if row.state not in ("proposed", "approved"):
            raise DestructionRefused(
                f"destruction {destruction_id} is {row.state}: it cannot be cancelled"
            )
        row.state, row.cancelled_by, row.cancel_reason = "cancelled", actor, reason[:256]
        _audit(session.connection(), actor, "destruction-cancel", row.id)


def destroyed_digests(data_dir: Path) -> frozenset[str]:
    """The SHA-256 of every instance a destruction's record file names."""
    return frozenset(
        inst["sha256"]
        for path in folder(data_dir).glob("*.jsonl")
        for line in read_lines(path)
        for inst in line.get("instances", [])
    )


def _still_due(conn: Connection, settings: Settings, uid: str) -> str:
    """Why ``uid`` must be kept now ('' when it is still due)."""
    found = retention.studies(conn, settings, study_uids=[uid])
    if not found:
        return "no longer in the archive"
    if found[0].held:
        return "a legal hold is placed"
    if found[0].retention_end > retention.da(retention.now().date()):
        return f"its retention runs again, to {found[0].retention_end}"
    return ""


def _instances(conn: Connection, uid: str) -> list[dict[str, Any]]:
    """What the record keeps of each instance of study ``uid``."""
    query = (
        select(Instance.sop_instance_uid, Instance.sha256, Instance.blob_key, Instance.size_bytes)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == uid)
        .order_by(Instance.id)
    )
    return [
        {"sop_instance_uid": i[0], "sha256": i[1], "blob": i[2], "size": int(i[3])}
        for i in conn.execute(query)
    ]


def _delete_study(conn: Connection, uid: str) -> int | None:
    """Delete study ``uid``'s rows and lower its patient's counters; the regional
    patient's key (for the audit)."""
    study = conn.execute(
        select(Study.id, Study.patient_pk, Study.num_series, Study.num_instances).where(
            Study.study_instance_uid == uid
        )
    ).one()
    series = select(Series.id).where(Series.study_pk == study.id)
    conn.execute(delete(Instance).where(Instance.series_pk.in_(series)))
    conn.execute(delete(Series).where(Series.study_pk == study.id))
    conn.execute(delete(Study).where(Study.id == study.id))
    conn.execute(
        update(Patient)
        .where(Patient.id == study.patient_pk)
        .values(
            num_studies=Patient.num_studies - 1,
            num_series=Patient.num_series - study.num_series,
            num_instances=Patient.num_instances - study.num_instances,
        )
    )
    regional = conn.execute(
        select(Patient.regional_patient_pk).where(Patient.id == study.patient_pk)
    ).scalar()
    return int(regional) if regional is not None else None


def _delete_recorded(
    database: Database, journal: Path, uid: str, item_id: int, destruction_id: int, actor: str
) -> list[dict[str, Any]]:
    """Delete study ``uid``'s rows once every instance they name is in the record file
    (appended and synced first, so a rebuild never brings one back); an instance that
    arrived in between is recorded too, then the deletion tried again. Audited. The
    instances recorded."""
    recorded: dict[str, dict[str, Any]] = {}
    while True:
        with database.reader() as session:
            instances = _instances(session.connection(), uid)
        append_line(journal, {"study_instance_uid": uid, "instances": instances})
        recorded.update((i["sop_instance_uid"], i) for i in instances)
        with database.session() as session:
            conn = session.connection()
            now = _instances(conn, uid)
            if not {i["sop_instance_uid"] for i in now} <= recorded.keys():
                continue  # one arrived since: record it first (the transaction rolls back)
            regional = _delete_study(conn, uid)
            item = session.get(DestructionStudy, item_id)
            assert item is not None
            item.state = "erasing"
            retention.audit_change(
                conn,
                actor,
                "delete",
                regional_pk=regional,
                study_uid=uid,
                detail={"destruction": destruction_id, "instances": len(now)},
            )
            return list(recorded.values())


def _erase(database: Database, blobs: BlobStore, instances: list[dict[str, Any]]) -> None:
    """Erase the blobs of ``instances`` that no indexed instance names any more."""
    digests = sorted({inst["sha256"] for inst in instances})
    with database.read_connection() as conn:  # by the indexed SHA-256
        named = set(
            conn.execute(select(Instance.blob_key).where(Instance.sha256.in_(digests))).scalars()
        )
    for inst in instances:
        if inst["blob"] not in named:
            blobs.erase(inst["blob"])


def _executing_alone(data_dir: Path, destruction_id: int) -> AbstractContextManager[None]:
    """Hold the destruction's lock file (``<id>.lock``) while it is executed: a second
    ``execute`` of it, in any process, is refused rather than run beside the first."""
    refused = DestructionRefused(
        f"destruction {destruction_id} is being executed by another process"
    )
    return held_alone(folder(data_dir) / f"{destruction_id}.lock", refused)


def execute(
    settings: Settings,
    database: Database,
    blobs: BlobStore,
    destruction_id: int,
    actor: str,
    on_study: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Destroy the studies of an approved destruction (or finish an interrupted one);
    its record. ``on_study(uid, state)`` is called as each study is done. One process
    at a time executes a destruction."""
    with _executing_alone(settings.data_dir, destruction_id):
        return _execute(settings, database, blobs, destruction_id, actor, on_study)


@dataclass(frozen=True, slots=True)
class Step:
    """Destroying one study of a destruction being executed."""

    settings: Settings
    database: Database
    blobs: BlobStore
    journal: Path
    destruction_id: int
    actor: str

    def run(self, item_id: int, uid: str, recorded: list[dict[str, Any]] | None) -> str:
        """Destroy study ``uid`` (``recorded``: its instances, when an interrupted run
        deleted its rows already); its state now, ``destroyed`` or ``kept``."""
        if recorded is None:
            with self.database.session() as session:
                why = _still_due(session.connection(), self.settings, uid)
                item = session.get(DestructionStudy, item_id)
                if why and item is not None:
                    item.state, item.kept_reason = "kept", why
            if why:
                return "kept"
            recorded = _delete_recorded(
                self.database, self.journal, uid, item_id, self.destruction_id, self.actor
            )
        _erase(self.database, self.blobs, recorded)
        with self.database.session() as session:
            item = session.get(DestructionStudy, item_id)
            assert item is not None
            item.state, item.destroyed_at = "destroyed", retention.now()
        return "destroyed"


def _execute(
    settings: Settings,
    database: Database,
    blobs: BlobStore,
    destruction_id: int,
    actor: str,
    on_study: Callable[[str, str], None] | None,
) -> dict[str, Any]:
    with database.session() as session:
        row = _get(session, destruction_id)
        if row.state not in ("approved", "executing"):
            raise DestructionRefused(
                f"destruction {destruction_id} is {row.state}: only an approved one is executed"
            )
        if row.state == "approved":
            row.state, row.executed_by = "executing", actor
            _audit(session.connection(), actor, "destruction-execute", row.id)
        items = [
            (item.id, item.study_instance_uid, item.state)
            for item in session.scalars(
                select(DestructionStudy)
                .where(DestructionStudy.destruction_pk == row.id)
                .order_by(DestructionStudy.id)
            )
        ]
    journal = folder(settings.data_dir) / f"{destruction_id}.jsonl"
    resumed: dict[str, list[dict[str, Any]]] = {}  # studies an interrupted run recorded
    if any(state == "erasing" for _id, _uid, state in items):
        for line in read_lines(journal):
            resumed.setdefault(line["study_instance_uid"], []).extend(line["instances"])
    step = Step(settings, database, blobs, journal, destruction_id, actor)
    for item_id, uid, state in items:
        if state in ("destroyed", "kept"):
            continue
        done = step.run(item_id, uid, resumed.get(uid, []) if state == "erasing" else None)
        if on_study is not None:
            on_study(uid, done)
    with database.session() as session:
        row = _get(session, destruction_id)
        row.state, row.executed_at = "done", retention.now()
        _audit(session.connection(), actor, "destruction-done", row.id)
    kept = record(database, destruction_id)
    _write_record(settings.data_dir, destruction_id, kept)
    return kept


def _write_record(data_dir: Path, destruction_id: int, kept: dict[str, Any]) -> None:
    write_json(folder(data_dir) / f"{destruction_id}.json", kept, indent=1)


def record(database: Database, destruction_id: int) -> dict[str, Any]:
    """A destruction as a record: its state, signatures and studies."""
    with database.reader() as session:
        row = _get(session, destruction_id)
        est = session.get(Establishment, row.establishment_pk) if row.establishment_pk else None
        signatures = session.scalars(
            select(DestructionSignature)
            .where(DestructionSignature.destruction_pk == row.id)
            .order_by(DestructionSignature.id)
        )
        studies = session.scalars(
            select(DestructionStudy)
            .where(DestructionStudy.destruction_pk == row.id)
            .order_by(DestructionStudy.id)
        )
        return {
            "id": row.id,
            "establishment": est.code if est is not None else "",
            "state": row.state,
            "public": row.public,
            "as_of": row.as_of,
            "note": row.note,
            "proposed_by": row.proposed_by,
            "proposed_at": row.proposed_at.isoformat(),
            "signatures_required": list(required(row.public)),
            "signatures": [
                {
                    "capacity": s.capacity,
                    "signer": s.signer,
                    "reference": s.reference,
                    "signed_at": s.signed_at.isoformat(),
                }
                for s in signatures
            ],
            "executed_by": row.executed_by,
            "executed_at": row.executed_at.isoformat() if row.executed_at else None,
            "cancelled_by": row.cancelled_by,
            "cancel_reason": row.cancel_reason,
            "studies": [
                {
                    "study_instance_uid": s.study_instance_uid,
                    "regional_id": s.regional_id,
                    "patient_id": s.patient_id,
                    "issuer_of_patient_id": s.issuer_of_patient_id,
                    "study_date": s.study_date,
                    "accession_number": s.accession_number,
                    "study_description": s.study_description,
                    "last_contact": s.last_contact,
                    "retention_end": s.retention_end,
                    "num_instances": s.num_instances,
                    "size_bytes": s.size_bytes,
                    "state": s.state,
                    "kept_reason": s.kept_reason,
                    "destroyed_at": s.destroyed_at.isoformat() if s.destroyed_at else None,
                }
                for s in studies
            ],
        }


def listing(database: Database) -> list[dict[str, Any]]:
    """Every destruction: id, state, establishment, counts."""
    with database.reader() as session:
        rows = session.execute(
            select(
                Destruction.id,
                Destruction.state,
                Destruction.as_of,
                Destruction.proposed_at,
                func.count(DestructionStudy.id),
                func.coalesce(func.sum(DestructionStudy.size_bytes), 0),
            )
            .outerjoin(DestructionStudy, DestructionStudy.destruction_pk == Destruction.id)
            .group_by(Destruction.id)
            .order_by(Destruction.id)
        ).all()
    return [
        {
            "id": r[0],
            "state": r[1],
            "as_of": r[2],
            "proposed_at": r[3].isoformat(),
            "studies": int(r[4]),
            "size_bytes": int(r[5]),
        }
        for r in rows
    ]
