"""One regional patient: the cross-reference of local identities (france.md 3-4).

A local identity is a ``patients`` row (one Patient ID within one issuer, PS3.3
C.7.1.1). Each one links to exactly one :class:`RegionalPatient`, whose regional id
is ``RP`` + its primary key on 8 digits (``RP00000042``): short enough for a
Patient ID (LO, 64 chars), readable over the phone, unique across hub replicas that
share the index, and never reused.

Links are made, in the transaction that creates the local identity
(:func:`link_new_identity`, called by the index at ingest):

* by INS (matricule and OID, see :mod:`pacs_hub.dicom.ins`): to the active regional
  patient holding that INS, created if none (``link_method`` ``ins``);
* otherwise to a regional patient of its own (``new``), and when its strict traits
  (:func:`~pacs_hub.dicom.ins.trait_key`: birth name, first given name, sex, birth
  date, normalised for matching only) equal those of an identity of another regional
  patient, a pending :class:`LinkCandidate` is recorded for a human to accept or reject.

Manual links, accepted candidates and merges move identities between regional
patients (:mod:`pacs_hub.regional.identity_changes`); each is an
:class:`IdentityEvent` whose JSON detail holds the state before, so that
:func:`~pacs_hub.regional.identity_changes.revert` (unmerge) restores it exactly.
Two different INS never end up under one regional patient.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, text, update

from pacs_hub.dicom.ins import trait_key
from pacs_hub.errors import HubError
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import IdentityEvent, LinkCandidate, Patient, RegionalPatient

LOGGER = logging.getLogger(__name__)
REGIONAL_PREFIX = "RP"
INGEST_ACTOR = "ingest"


class IdentityConflict(HubError):
    """A change that would put two different INS under one regional patient."""

    dicom_status = 0xC000
    http_status = 409
    title = "Identity conflict"


class UnknownIdentity(HubError):
    """A regional id, local identity, candidate or event that does not exist."""

    dicom_status = 0xC000
    http_status = 404
    title = "Unknown identity"


def now_utc() -> datetime:
    """The time stored on rows (naive UTC, as the rest of the index)."""
    return datetime.now(UTC).replace(tzinfo=None)


def regional_id_for(pk: int) -> str:
    """The regional id of the regional patient with primary key ``pk``."""
    return f"{REGIONAL_PREFIX}{pk:08d}"


def create_regional(conn: Connection, ins: str = "", ins_oid: str = "") -> int:
    """A new active regional patient; its id is derived from its primary key."""
    pk = int(
        conn.execute(
            insert(RegionalPatient)
            .values(
                regional_id=f"tmp-{uuid.uuid4().hex}",
                ins=ins,
                ins_oid=ins_oid,
                active=True,
                created_at=now_utc(),
            )
            .returning(RegionalPatient.id)
        ).scalar_one()
    )
    conn.execute(
        update(RegionalPatient)
        .where(RegionalPatient.id == pk)
        .values(regional_id=regional_id_for(pk))
    )
    return pk


def record_event(conn: Connection, kind: str, actor: str, detail: dict[str, Any]) -> int:
    """Append an :class:`IdentityEvent`; return its id."""
    return int(
        conn.execute(
            insert(IdentityEvent)
            .values(kind=kind, actor=actor[:64], detail=json.dumps(detail), at=now_utc())
            .returning(IdentityEvent.id)
        ).scalar_one()
    )


def _lock_ins(conn: Connection, ins: str) -> None:
    """Serialise the creation of a regional patient per INS (PostgreSQL; SQLite has
    one writer at a time already)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:ins))"), {"ins": ins})


def regional_by_ins(conn: Connection, ins: str, ins_oid: str) -> int | None:
    """The active regional patient holding this INS, if any."""
    pk = conn.execute(
        select(RegionalPatient.id)
        .where(
            RegionalPatient.ins == ins,
            RegionalPatient.ins_oid == ins_oid,
            RegionalPatient.active.is_(True),
        )
        .order_by(RegionalPatient.id)
        .limit(1)
    ).scalar()
    return int(pk) if pk is not None else None


def identity_key(row: Any) -> str:
    """Strict-traits key of a ``patients`` row (or anything with its trait attributes);
    older rows fall back to Patient's Name."""
    parts = str(row.patient_name).split("=")[0].split("^")
    birth_name = row.birth_name or parts[0]
    given = row.given_names or (parts[1] if len(parts) > 1 else "")
    return trait_key(birth_name, given, row.patient_sex, row.patient_birth_date)


_TRAIT_COLUMNS = (
    Patient.id,
    Patient.patient_name,
    Patient.birth_name,
    Patient.given_names,
    Patient.patient_sex,
    Patient.patient_birth_date,
    Patient.ins,
    Patient.regional_patient_pk,
)


def _trait_matches(conn: Connection, row: Any, regional_pk: int) -> list[Any]:
    """Linked identities of other active regional patients with the same strict traits."""
    key = identity_key(row)
    if not key:
        return []
    others = conn.execute(
        select(*_TRAIT_COLUMNS)
        .join(RegionalPatient, RegionalPatient.id == Patient.regional_patient_pk)
        .where(
            Patient.patient_birth_date == row.patient_birth_date,
            Patient.patient_sex == row.patient_sex,
            Patient.id != row.id,
            Patient.regional_patient_pk != regional_pk,
            RegionalPatient.active.is_(True),
        )
    ).all()
    return [other for other in others if identity_key(other) == key]


def add_candidates(conn: Connection, row: Any, regional_pk: int) -> int:
    """Record pending candidates for identity ``row`` linked to ``regional_pk``.

    Returns how many were recorded.

    An identity without INS may belong to the regional patient of a matching
    identity; a matching identity without INS may belong to this one's (when this one
    has an INS). Pairs that both carry an INS are never candidates: equal INS are
    linked already, different INS are different people.
    """
    pairs: set[tuple[int, int]] = set()
    for other in _trait_matches(conn, row, regional_pk):
        if not row.ins:
            pairs.add((row.id, other.regional_patient_pk))
        elif not other.ins:
            pairs.add((other.id, regional_pk))
    if not pairs:
        return 0
    known = {
        (r.patient_pk, r.regional_pk)
        for r in conn.execute(
            select(LinkCandidate.patient_pk, LinkCandidate.regional_pk).where(
                LinkCandidate.patient_pk.in_([p for p, _ in pairs])
            )
        )
    }
    reason = "same birth name, first given name, sex and birth date"
    new = [
        {
            "patient_pk": p,
            "regional_pk": r,
            "reason": reason,
            "status": "pending",
            "created_at": now_utc(),
        }
        for p, r in sorted(pairs - known)
    ]
    if new:
        conn.execute(insert(LinkCandidate), new)
    return len(new)


def link_event_detail(
    patient_pk: int, regional_pk: int, method: str, created: bool
) -> dict[str, Any]:
    """The detail of the ``link`` event of a new local identity (what
    :func:`~pacs_hub.regional.identity_changes.revert` needs to undo it)."""
    move = {"patient": patient_pk, "from": None, "from_method": "", "to": regional_pk}
    return {"moves": [{**move, "to_method": method}], "created": regional_pk if created else None}


def link_new_identity(conn: Connection, patient_pk: int, actor: str = INGEST_ACTOR) -> int:
    """Link a local identity not linked yet (by INS, else to a new regional patient).

    Runs in the caller's transaction (the one that created the ``patients`` row), so
    a local identity is never visible unlinked; :func:`link_unlinked` catches rows
    created otherwise (before revision 0003). Returns the regional patient's pk.
    """
    row = conn.execute(
        select(*_TRAIT_COLUMNS, Patient.ins_oid).where(Patient.id == patient_pk)
    ).one()
    if row.regional_patient_pk is not None:
        return int(row.regional_patient_pk)
    regional_pk: int | None = None
    if row.ins:
        _lock_ins(conn, row.ins)
        regional_pk = regional_by_ins(conn, row.ins, row.ins_oid)
        method = "ins"
    else:
        method = "new"
    created = regional_pk is None
    if regional_pk is None:
        regional_pk = create_regional(conn, row.ins, row.ins_oid)
    conn.execute(
        update(Patient)
        .where(Patient.id == patient_pk)
        .values(regional_patient_pk=regional_pk, link_method=method)
    )
    record_event(conn, "link", actor, link_event_detail(patient_pk, regional_pk, method, created))
    if created:
        add_candidates(conn, row, regional_pk)
    return regional_pk


def link_unlinked(database: Database, limit: int = 500) -> int:
    """Link local identities left unlinked (rows from before revision 0003, or any a
    crash could have left); each in its own transaction. Returns how many."""
    with database.read_connection() as conn:
        pks = conn.scalars(
            select(Patient.id)
            .where(Patient.regional_patient_pk.is_(None))
            .order_by(Patient.id)
            .limit(limit)
        ).all()
    for pk in pks:
        with database.engine.begin() as conn:
            link_new_identity(conn, int(pk), actor="backfill")
    if pks:
        LOGGER.info("linked %d local identities to regional patients", len(pks))
    return len(pks)


def count_unlinked(database: Database) -> int:
    """How many local identities have no regional patient."""
    with database.read_connection() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(Patient)
                .where(Patient.regional_patient_pk.is_(None))
            ).scalar_one()
        )


BACKFILL_INTERVAL = 300.0
"""Seconds between two passes of the backfill task (identities left unlinked)."""


def _backfill(ctx: WorkerContext) -> None:
    while not ctx.stop.is_set() and link_unlinked(ctx.database) > 0:
        pass


register(PeriodicTask("identity-backfill", interval=lambda _s: BACKFILL_INTERVAL, run=_backfill))
