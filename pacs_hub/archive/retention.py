"""Each study's legal retention, computed from the index; legal holds; dates of death.

A study belongs to the record of its patient at the establishment that sent it
(``studies.establishment_pk``). The *last contact* is the latest study of that patient
(every local identity linked to the same regional patient) at that establishment:
its Study Date, else the day the hub received it. The end of retention follows
:func:`pacs_hub.archive.retention_rules.retention_end`, with the establishment's period
(``retention_years``, else ``PACS_HUB_RETENTION_YEARS``), the patient's birth date and
recorded date of death, and the legal holds on the study or the patient. A study is
*due* when its end has come and no hold is placed on it: it may then be proposed for
destruction (:mod:`pacs_hub.archive.destruction`), never destroyed by this module.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select, update
from sqlalchemy.engine import Connection

from pacs_hub.archive.models import Destruction, DestructionStudy, LegalHold
from pacs_hub.archive.retention_rules import (
    AFTER_DEATH_YEARS,
    Hold,
    add_years,
    parse_da,
    retention_end,
)
from pacs_hub.config import Settings
from pacs_hub.errors import HubError, InvalidQuery
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, Patient, RegionalPatient, Study
from pacs_hub.trust import audit

OPEN_STATES = ("proposed", "approved", "executing")
"""States of a destruction whose listed studies no other destruction may list."""


class UnknownEstablishment(HubError):
    title = "Unknown establishment"
    http_status = 404


class UnknownPatient(HubError):
    title = "Unknown patient"
    http_status = 404


class UnknownStudy(HubError):
    title = "Unknown study"
    http_status = 404


class UnknownHold(HubError):
    title = "Unknown legal hold"
    http_status = 404


def now() -> datetime:
    """UTC now, naive, as the index stores times."""
    return datetime.now(UTC).replace(tzinfo=None)


def da(day: date) -> str:
    """A date as a DICOM DA value."""
    return day.strftime("%Y%m%d")


def parse_day(text: str) -> date:
    """A date given by a user (``YYYYMMDD`` or ``YYYY-MM-DD``); InvalidQuery otherwise."""
    day = parse_da(text.replace("-", "") if len(text) == 10 else text)
    if day is None:
        raise InvalidQuery(f"not a date: {text[:20]!r} (YYYYMMDD or YYYY-MM-DD)")
    return day


@dataclass(frozen=True, slots=True)
class StudyRetention:
    """One study's retention, and what a destruction record keeps of it."""

    study_instance_uid: str
    establishment: str
    regional_id: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: str
    accession_number: str
    study_description: str
    num_instances: int
    size_bytes: int
    last_contact: str
    retention_end: str
    held: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def establishment_pk(conn: Connection, code: str) -> int:
    pk = conn.execute(select(Establishment.id).where(Establishment.code == code)).scalar()
    if pk is None:
        raise UnknownEstablishment(f"no establishment {code[:40]!r}")
    return int(pk)


def _holds(conn: Connection) -> tuple[dict[str, list[Hold]], dict[int, list[Hold]]]:
    by_study: dict[str, list[Hold]] = defaultdict(list)
    by_patient: dict[int, list[Hold]] = defaultdict(list)
    query = select(
        LegalHold.regional_pk,
        LegalHold.study_instance_uid,
        LegalHold.placed_at,
        LegalHold.released_at,
    )
    for row in conn.execute(query):
        hold = Hold(row.placed_at, row.released_at)
        if row.regional_pk is not None:
            by_patient[row.regional_pk].append(hold)
        else:
            by_study[row.study_instance_uid].append(hold)
    return by_study, by_patient


def _contact_day(conn: Connection) -> ColumnElement[str]:
    """A study's day of contact (DA): its Study Date, else the day it was received."""
    if conn.dialect.name == "postgresql":
        received = func.to_char(Study.created_at, "YYYYMMDD")
    else:
        received = func.strftime("%Y%m%d", Study.created_at)
    return case((func.length(Study.study_date) == 8, Study.study_date), else_=received)


def _person() -> ColumnElement[int]:
    """Whose record a study is in: its regional patient, else its local identity."""
    return func.coalesce(Patient.regional_patient_pk, -Patient.id)


def studies(
    conn: Connection,
    settings: Settings,
    *,
    establishment: str | None = None,
    study_uids: Iterable[str] | None = None,
    ended_by: date | None = None,
) -> list[StudyRetention]:
    """The retention of every study (of one establishment, or the listed ones; with
    ``ended_by``, only those whose retention may have ended by that day).

    The last contact of each patient at each establishment is one grouped query, and
    the studies are read as a stream, so memory holds the answer, not the archive; with
    ``ended_by`` the database leaves out every study whose patient's last contact is
    too recent for any period (the shortest of the periods and the 10 years after a
    death) to have ended.
    """
    est_pk = establishment_pk(conn, establishment) if establishment else None
    codes: dict[int | None, tuple[str, int]] = {None: ("", settings.retention_years)}
    for est in conn.execute(
        select(Establishment.id, Establishment.code, Establishment.retention_years)
    ):
        codes[est.id] = (est.code, est.retention_years or settings.retention_years)
    place, person = func.coalesce(Study.establishment_pk, 0), _person()
    contact = (
        select(
            place.label("place"), person.label("person"), func.max(_contact_day(conn)).label("last")
        )
        .select_from(Study)
        .join(Patient, Study.patient_pk == Patient.id)
        .group_by(place, person)
    )
    wanted = sorted(set(study_uids)) if study_uids is not None else None
    if est_pk is not None:  # the last contact is per establishment: its studies suffice
        contact = contact.where(Study.establishment_pk == est_pk)
    if wanted is not None:  # the listed studies' patients' studies suffice
        theirs = select(person).join(Study, Study.patient_pk == Patient.id)
        contact = contact.where(person.in_(theirs.where(Study.study_instance_uid.in_(wanted))))
    last = contact.subquery()
    query = (
        select(
            Study.study_instance_uid,
            Study.establishment_pk,
            Study.study_date,
            Study.created_at,
            Study.accession_number,
            Study.study_description,
            Study.num_instances,
            Study.size_bytes,
            Patient.patient_id,
            Patient.issuer_of_patient_id,
            Patient.patient_birth_date,
            Patient.regional_patient_pk,
            RegionalPatient.regional_id,
            RegionalPatient.death_date,
            last.c.last,
        )
        .join(Patient, Study.patient_pk == Patient.id)
        .outerjoin(RegionalPatient, Patient.regional_patient_pk == RegionalPatient.id)
        .join(last, and_(last.c.place == place, last.c.person == person))
    )
    if est_pk is not None:
        query = query.where(Study.establishment_pk == est_pk)
    if wanted is not None:
        query = query.where(Study.study_instance_uid.in_(wanted))
    if ended_by is not None:
        shortest = min([AFTER_DEATH_YEARS, *(years for _code, years in codes.values())])
        cutoff = add_years(ended_by, -shortest) + timedelta(days=1)  # 29 February: a day more
        query = query.where(last.c.last <= da(cutoff))
    held_studies, held_patients = _holds(conn)
    found = []
    for row in conn.execute(query.execution_options(yield_per=2000)):
        holds = held_studies.get(row.study_instance_uid, []) + (
            held_patients.get(row.regional_patient_pk, []) if row.regional_patient_pk else []
        )
        code, years = codes.get(row.establishment_pk, codes[None])
        contacted = parse_da(row.last) or row.created_at.date()
        end = retention_end(
            contacted, years, parse_da(row.patient_birth_date), parse_da(row.death_date), holds
        )
        found.append(
            StudyRetention(
                row.study_instance_uid,
                code,
                row.regional_id or "",
                row.patient_id,
                row.issuer_of_patient_id,
                row.study_date,
                row.accession_number,
                row.study_description,
                int(row.num_instances),
                int(row.size_bytes),
                da(contacted),
                da(end),
                any(h.active for h in holds),
            )
        )
    return sorted(found, key=lambda s: (s.retention_end, s.study_instance_uid))


def listed_elsewhere(conn: Connection) -> set[str]:
    """Studies an open destruction lists (not yet destroyed or kept)."""
    query = (
        select(DestructionStudy.study_instance_uid)
        .join(Destruction, DestructionStudy.destruction_pk == Destruction.id)
        .where(
            Destruction.state.in_(OPEN_STATES), DestructionStudy.state.in_(("listed", "erasing"))
        )
    )
    return set(conn.execute(query).scalars())


def due(
    conn: Connection, settings: Settings, as_of: date, *, establishment: str | None = None
) -> list[StudyRetention]:
    """Studies whose retention ended by ``as_of``, not held, in no open destruction."""
    taken = listed_elsewhere(conn)
    return [
        s
        for s in studies(conn, settings, establishment=establishment, ended_by=as_of)
        if not s.held and s.retention_end <= da(as_of) and s.study_instance_uid not in taken
    ]


def _regional_pk(conn: Connection, regional_id: str) -> int:
    pk = conn.execute(
        select(RegionalPatient.id).where(RegionalPatient.regional_id == regional_id)
    ).scalar()
    if pk is None:
        raise UnknownPatient(f"no regional patient {regional_id[:64]!r}")
    return int(pk)


def audit_change(
    conn: Connection, actor: str, action: str, *, outcome: str = "ok", **fields: Any
) -> None:
    audit.record(
        conn,
        audit.AuditEntry(
            actor_kind=actor.split(":", 1)[0],
            actor_id=actor,
            action=action,
            outcome=outcome,
            purpose="admin",
            rule="retention",
            **fields,
        ),
    )


def place_hold(
    database: Database, actor: str, reason: str, *, study_uid: str = "", regional_id: str = ""
) -> int:
    """Place a legal hold on one study or on one patient; its id. Audited."""
    if bool(study_uid) == bool(regional_id):
        raise InvalidQuery("a legal hold is on one study or on one patient (not both)")
    if not reason.strip():
        raise InvalidQuery("a legal hold needs its reason (the claim)")
    with database.session() as session:
        conn = session.connection()
        regional_pk = _regional_pk(conn, regional_id) if regional_id else None
        if (
            study_uid
            and conn.execute(select(Study.id).where(Study.study_instance_uid == study_uid)).scalar()
            is None
        ):
            raise UnknownStudy(f"no study {study_uid[:64]!r} in the archive")
        hold = LegalHold(
            regional_pk=regional_pk,
            study_instance_uid=study_uid,
            reason=reason.strip()[:256],
            placed_by=actor,
            placed_at=now(),
            released_by="",
        )
        session.add(hold)
        session.flush()
        audit_change(
            conn,
            actor,
            "legal-hold",
            regional_pk=regional_pk,
            study_uid=study_uid,
            detail={"hold": hold.id, "placed": True},
        )
        return int(hold.id)


def release_hold(database: Database, actor: str, hold_id: int) -> None:
    """Release a legal hold: the retention runs again, lengthened by its days. Audited."""
    with database.session() as session:
        conn = session.connection()
        hold = session.get(LegalHold, hold_id)
        if hold is None or hold.released_at is not None:
            raise UnknownHold(f"no legal hold {hold_id} in place")
        hold.released_at, hold.released_by = now(), actor
        audit_change(
            conn,
            actor,
            "legal-hold",
            regional_pk=hold.regional_pk,
            study_uid=hold.study_instance_uid,
            detail={"hold": hold_id, "placed": False},
        )


def holds(database: Database, *, active_only: bool = True) -> list[dict[str, Any]]:
    """The legal holds (those in place, or all)."""
    with database.reader() as session:
        query = select(LegalHold, RegionalPatient.regional_id).outerjoin(
            RegionalPatient, LegalHold.regional_pk == RegionalPatient.id
        )
        if active_only:
            query = query.where(LegalHold.released_at.is_(None))
        return [
            {
                "id": hold.id,
                "study_instance_uid": hold.study_instance_uid,
                "regional_id": regional_id or "",
                "reason": hold.reason,
                "placed_by": hold.placed_by,
                "placed_at": hold.placed_at.isoformat(),
                "released_by": hold.released_by,
                "released_at": hold.released_at.isoformat() if hold.released_at else None,
            }
            for hold, regional_id in session.execute(query.order_by(LegalHold.id))
        ]


def record_death(database: Database, actor: str, regional_id: str, day: date | None) -> None:
    """Record (or clear, ``None``) a patient's date of death. Audited."""
    with database.session() as session:
        conn = session.connection()
        pk = _regional_pk(conn, regional_id)
        conn.execute(
            update(RegionalPatient)
            .where(RegionalPatient.id == pk)
            .values(death_date=da(day) if day else "")
        )
        audit_change(
            conn, actor, "patient-death", regional_pk=pk, detail={"recorded": day is not None}
        )


def set_period(database: Database, actor: str, code: str, years: int | None) -> None:
    """An establishment's retention period in years (``None``: the hub's). Audited."""
    if years is not None and not 1 <= years <= 200:
        raise InvalidQuery("a retention period is 1 to 200 years")
    with database.session() as session:
        conn = session.connection()
        pk = establishment_pk(conn, code)
        conn.execute(
            update(Establishment).where(Establishment.id == pk).values(retention_years=years)
        )
        audit_change(
            conn, actor, "retention-period", detail={"establishment": code, "years": years}
        )
