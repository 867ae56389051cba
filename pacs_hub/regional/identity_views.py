"""Reading the identity cross-reference: regional patients, candidates, history.

Views are plain dataclasses (``dataclasses.asdict`` gives the API's JSON): a regional
patient with every linked local identity (Patient ID, issuer, INS, link method,
traits as received) and the studies of each (PS3.3 C.7.2.1 attributes the index
keeps), the pending link candidates, and the identity events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, or_, select
from sqlalchemy.orm import aliased

from pacs_hub.regional.identity import UnknownIdentity
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import IdentityEvent, LinkCandidate, Patient, RegionalPatient, Study


@dataclass(frozen=True, slots=True)
class StudyView:
    """One study of a local identity."""

    study_instance_uid: str
    study_date: str
    study_description: str
    modalities_in_study: str
    num_instances: int


@dataclass(frozen=True, slots=True)
class IdentityView:
    """A local identity (one ``patients`` row) and how it is linked."""

    patient_id: str
    issuer_of_patient_id: str
    ins: str
    ins_oid: str
    link_method: str
    patient_name: str
    birth_name: str
    given_names: str
    patient_sex: str
    patient_birth_date: str
    studies: list[StudyView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RegionalView:
    """A regional patient and its local identities."""

    regional_id: str
    ins: str
    ins_oid: str
    active: bool
    merged_into: str | None
    identities: list[IdentityView]


@dataclass(frozen=True, slots=True)
class CandidateView:
    """A proposed link, for human review."""

    id: int
    status: str
    reason: str
    regional_id: str
    patient_id: str
    issuer_of_patient_id: str
    current_regional_id: str | None


@dataclass(frozen=True, slots=True)
class EventView:
    """One recorded change of the cross-reference."""

    id: int
    kind: str
    actor: str
    at: str
    reverted_by: int | None
    detail: dict[str, Any]


def _identities(conn: Connection, regional_pk: int) -> list[IdentityView]:
    patients = conn.execute(
        select(Patient).where(Patient.regional_patient_pk == regional_pk).order_by(Patient.id)
    ).all()
    out = []
    for p in patients:
        studies = conn.execute(
            select(
                Study.study_instance_uid,
                Study.study_date,
                Study.study_description,
                Study.modalities_in_study,
                Study.num_instances,
            )
            .where(Study.patient_pk == p.id)
            .order_by(Study.study_date, Study.id)
        ).all()
        out.append(
            IdentityView(
                patient_id=p.patient_id,
                issuer_of_patient_id=p.issuer_of_patient_id,
                ins=p.ins,
                ins_oid=p.ins_oid,
                link_method=p.link_method,
                patient_name=p.patient_name,
                birth_name=p.birth_name,
                given_names=p.given_names,
                patient_sex=p.patient_sex,
                patient_birth_date=p.patient_birth_date,
                studies=[StudyView(*s) for s in studies],
            )
        )
    return out


def _view(conn: Connection, row: Any) -> RegionalView:
    merged_into = None
    if row.merged_into_pk is not None:
        merged_into = conn.execute(
            select(RegionalPatient.regional_id).where(RegionalPatient.id == row.merged_into_pk)
        ).scalar_one()
    return RegionalView(
        regional_id=row.regional_id,
        ins=row.ins,
        ins_oid=row.ins_oid,
        active=row.active,
        merged_into=merged_into,
        identities=_identities(conn, row.id),
    )


def regional_patient(database: Database, regional_id: str) -> RegionalView:
    """The regional patient with this id and its identities; raise UnknownIdentity."""
    with database.read_connection() as conn:
        row = conn.execute(
            select(RegionalPatient).where(RegionalPatient.regional_id == regional_id)
        ).first()
        if row is None:
            raise UnknownIdentity("no regional patient has this regional id")
        return _view(conn, row)


def find_by_ins(database: Database, ins: str) -> list[RegionalView]:
    """Active regional patients holding the INS matricule ``ins`` (any INS OID)."""
    ins = ins.strip().upper()
    with database.read_connection() as conn:
        linked = select(Patient.regional_patient_pk).where(Patient.ins == ins)
        rows = conn.execute(
            select(RegionalPatient)
            .where(
                RegionalPatient.active.is_(True),
                or_(RegionalPatient.ins == ins, RegionalPatient.id.in_(linked)),
            )
            .order_by(RegionalPatient.id)
        ).all()
        return [_view(conn, row) for row in rows]


def regional_of(database: Database, patient_id: str, issuer: str) -> str | None:
    """The regional id a local identity is linked to (None: unknown or unlinked)."""
    with database.read_connection() as conn:
        return conn.execute(
            select(RegionalPatient.regional_id)
            .join(Patient, Patient.regional_patient_pk == RegionalPatient.id)
            .where(Patient.patient_id == patient_id, Patient.issuer_of_patient_id == issuer)
        ).scalar()


def list_candidates(database: Database, status: str | None = "pending") -> list[CandidateView]:
    """Link candidates (all when ``status`` is None), oldest first."""
    proposed = aliased(RegionalPatient)
    current = aliased(RegionalPatient)
    stmt = (
        select(
            LinkCandidate.id,
            LinkCandidate.status,
            LinkCandidate.reason,
            proposed.regional_id,
            Patient.patient_id,
            Patient.issuer_of_patient_id,
            current.regional_id,
        )
        .join(proposed, proposed.id == LinkCandidate.regional_pk)
        .join(Patient, Patient.id == LinkCandidate.patient_pk)
        .outerjoin(current, current.id == Patient.regional_patient_pk)
        .order_by(LinkCandidate.id)
    )
    if status is not None:
        stmt = stmt.where(LinkCandidate.status == status)
    with database.read_connection() as conn:
        return [CandidateView(*row) for row in conn.execute(stmt).all()]


def list_events(database: Database, limit: int = 100) -> list[EventView]:
    """The latest identity events, newest first."""
    with database.read_connection() as conn:
        rows = conn.execute(
            select(
                IdentityEvent.id,
                IdentityEvent.kind,
                IdentityEvent.actor,
                IdentityEvent.at,
                IdentityEvent.reverted_by_pk,
                IdentityEvent.detail,
            )
            .order_by(IdentityEvent.id.desc())
            .limit(limit)
        ).all()
    return [
        EventView(r.id, r.kind, r.actor, r.at.isoformat(), r.reverted_by_pk, json.loads(r.detail))
        for r in rows
    ]
