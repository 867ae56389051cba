"""Explicit changes of the identity cross-reference: link, merge, candidates, unmerge.

Each change runs in one transaction and appends an :class:`IdentityEvent` (actor,
time, JSON detail) in it, so the history is exactly what happened (france.md 4:
a cross-reference manager keeps the merge history and can reverse a merge; PIXm
ITI-104 merge, PMIR ``replaced-by``). The detail of a change holds:

* ``moves``: every local identity moved, with the regional patient and link method
  it had before (``from``, ``from_method``) and after (``to``, ``to_method``);
* ``regionals``: the rows of the regional patients it changed, as they were before
  (``active``, ``merged_into``, ``ins``, ``ins_oid``);
* ``candidate``: the candidate it decided, if any, and its status before.

:func:`revert` (``unmerge``) puts all of it back, once, and only while every moved
identity is still where the change put it (a later change must be reverted first).
A change that would put two different INS (matricule + OID) under one regional
patient is refused with :class:`IdentityConflict`, and nothing is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from pacs_hub.regional.identity import (
    IdentityConflict,
    UnknownIdentity,
    now_utc,
    record_event,
)
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import IdentityEvent, LinkCandidate, Patient, RegionalPatient

REVERTIBLE = {"link": "unlink", "merge": "unmerge", "accept": "unaccept"}
"""Kinds of event :func:`revert` undoes, and the kind of the event it records."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a change did: the event recorded and the regional patient it ended on."""

    event_id: int
    regional_id: str


_REGIONAL = select(
    RegionalPatient.id,
    RegionalPatient.regional_id,
    RegionalPatient.active,
    RegionalPatient.merged_into_pk,
    RegionalPatient.ins,
    RegionalPatient.ins_oid,
)


def _regional(conn: Connection, regional_id: str) -> Any:
    row = conn.execute(_REGIONAL.where(RegionalPatient.regional_id == regional_id)).first()
    if row is None:
        raise UnknownIdentity("no regional patient has this regional id")
    return row


def _active(conn: Connection, regional_id: str) -> Any:
    """The regional patient, or the one it was merged into (followed to the end)."""
    regional = _regional(conn, regional_id)
    seen = {regional.id}
    while not regional.active and regional.merged_into_pk is not None:
        regional = conn.execute(
            _REGIONAL.where(RegionalPatient.id == regional.merged_into_pk)
        ).one()
        if regional.id in seen:
            break
        seen.add(regional.id)
    if not regional.active:
        raise UnknownIdentity("the regional patient is inactive and was merged into none")
    return regional


def _ins_set(conn: Connection, regional_pk: int) -> set[tuple[str, str]]:
    """Every INS (matricule, OID) held by a regional patient or its identities."""
    rows = conn.execute(
        select(Patient.ins, Patient.ins_oid).where(
            Patient.regional_patient_pk == regional_pk, Patient.ins != ""
        )
    )
    found = {(str(r.ins), str(r.ins_oid)) for r in rows}
    row = conn.execute(
        select(RegionalPatient.ins, RegionalPatient.ins_oid).where(
            RegionalPatient.id == regional_pk
        )
    ).one()
    if row.ins:
        found.add((row.ins, row.ins_oid))
    return found


def _snapshot(regional: Any) -> dict[str, Any]:
    return {
        "pk": regional.id,
        "active": regional.active,
        "merged_into": regional.merged_into_pk,
        "ins": regional.ins,
        "ins_oid": regional.ins_oid,
    }


def _restore_regional(conn: Connection, state: dict[str, Any]) -> None:
    conn.execute(
        update(RegionalPatient)
        .where(RegionalPatient.id == state["pk"])
        .values(
            active=state["active"],
            merged_into_pk=state["merged_into"],
            ins=state["ins"],
            ins_oid=state["ins_oid"],
        )
    )


def _move(conn: Connection, patient_pks: list[int], target_pk: int, method: str) -> list[Any]:
    """Point identities at ``target_pk``; return the moves (with where they were)."""
    rows = conn.execute(
        select(Patient.id, Patient.regional_patient_pk, Patient.link_method)
        .where(Patient.id.in_(patient_pks))
        .order_by(Patient.id)
    ).all()
    moves = []
    for row in rows:
        conn.execute(
            update(Patient)
            .where(Patient.id == row.id)
            .values(regional_patient_pk=target_pk, link_method=method or row.link_method)
        )
        moves.append(
            {
                "patient": row.id,
                "from": row.regional_patient_pk,
                "from_method": row.link_method,
                "to": target_pk,
                "to_method": method or row.link_method,
            }
        )
    return moves


def _check_one_ins(
    conn: Connection, target: Any, incoming: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    together = _ins_set(conn, target.id) | incoming
    if len(together) > 1:
        raise IdentityConflict(
            f"the target regional patient would hold {len(together)} different INS;"
            " different INS are different people: nothing changed"
        )
    return together


def _take_ins(conn: Connection, target: Any, together: set[tuple[str, str]]) -> None:
    if together and not target.ins:
        ins, oid = next(iter(together))
        conn.execute(
            update(RegionalPatient)
            .where(RegionalPatient.id == target.id)
            .values(ins=ins, ins_oid=oid)
        )


def _retire_emptied(conn: Connection, sources: set[int], target_pk: int) -> list[dict[str, Any]]:
    """Regional patients left without identities become inactive, replaced by the target."""
    before = []
    for pk in sorted(sources - {target_pk}):
        left = conn.execute(
            select(Patient.id).where(Patient.regional_patient_pk == pk).limit(1)
        ).first()
        if left is not None:
            continue
        before.append(_snapshot(conn.execute(_REGIONAL.where(RegionalPatient.id == pk)).one()))
        conn.execute(
            update(RegionalPatient)
            .where(RegionalPatient.id == pk)
            .values(active=False, merged_into_pk=target_pk)
        )
    return before


def _patient(conn: Connection, patient_id: str, issuer: str) -> Any:
    row = conn.execute(
        select(Patient.id, Patient.ins, Patient.ins_oid, Patient.regional_patient_pk).where(
            Patient.patient_id == patient_id, Patient.issuer_of_patient_id == issuer
        )
    ).first()
    if row is None:
        raise UnknownIdentity("no local identity with this Patient ID and issuer")
    return row


def _link(conn: Connection, patient: Any, target: Any, method: str) -> dict[str, Any]:
    incoming = {(patient.ins, patient.ins_oid)} if patient.ins else set()
    together = _check_one_ins(conn, target, incoming)
    regionals = [_snapshot(target)]
    moves = _move(conn, [patient.id], target.id, method)
    _take_ins(conn, target, together)
    sources = {patient.regional_patient_pk} if patient.regional_patient_pk else set()
    regionals += _retire_emptied(conn, sources, target.id)
    return {"moves": moves, "regionals": regionals, "target": target.regional_id}


def link(database: Database, patient_id: str, issuer: str, regional_id: str, actor: str) -> Change:
    """Link one local identity (Patient ID within its issuer) to a regional patient.

    Manual link (``link_method`` ``manual``); its former regional patient, if left
    without identities, becomes inactive and points at the new one.
    """
    with database.engine.begin() as conn:
        target = _active(conn, regional_id)
        patient = _patient(conn, patient_id, issuer)
        if patient.regional_patient_pk == target.id:
            raise IdentityConflict("the identity is already linked to this regional patient")
        detail = _link(conn, patient, target, "manual")
        return Change(record_event(conn, "link", actor, detail), target.regional_id)


def merge(database: Database, source_id: str, target_id: str, actor: str) -> Change:
    """Merge regional patient ``source_id`` into ``target_id`` (PIXm ITI-104 merge).

    Every identity of the source moves to the target, keeping its link method; the
    source becomes inactive with ``merged_into`` = target, and regional patients
    merged into the source earlier now point at the target too.
    """
    with database.engine.begin() as conn:
        source = _active(conn, source_id)
        target = _active(conn, target_id)
        if source.id == target.id:
            raise IdentityConflict("source and target are the same regional patient")
        together = _check_one_ins(conn, target, _ins_set(conn, source.id))
        earlier = conn.execute(_REGIONAL.where(RegionalPatient.merged_into_pk == source.id)).all()
        regionals = [_snapshot(r) for r in (source, target, *earlier)]
        pks = conn.scalars(select(Patient.id).where(Patient.regional_patient_pk == source.id))
        moves = _move(conn, [int(pk) for pk in pks.all()], target.id, "")
        _take_ins(conn, target, together)
        conn.execute(
            update(RegionalPatient)
            .where(RegionalPatient.id.in_([source.id, *(r.id for r in earlier)]))
            .values(active=False, merged_into_pk=target.id)
        )
        detail = {
            "moves": moves,
            "regionals": regionals,
            "source": source.regional_id,
            "target": target.regional_id,
        }
        return Change(record_event(conn, "merge", actor, detail), target.regional_id)


def _candidate(conn: Connection, candidate_id: int) -> Any:
    candidate = conn.execute(
        select(
            LinkCandidate.id,
            LinkCandidate.patient_pk,
            LinkCandidate.regional_pk,
            LinkCandidate.status,
        ).where(LinkCandidate.id == candidate_id)
    ).first()
    if candidate is None:
        raise UnknownIdentity(f"no link candidate {candidate_id}")
    if candidate.status != "pending":
        raise IdentityConflict(f"link candidate {candidate_id} is already {candidate.status}")
    return candidate


def _decide(conn: Connection, candidate_id: int, status: str) -> None:
    conn.execute(
        update(LinkCandidate)
        .where(LinkCandidate.id == candidate_id)
        .values(status=status, decided_at=now_utc() if status != "pending" else None)
    )


def accept_candidate(database: Database, candidate_id: int, actor: str) -> Change:
    """Accept a pending candidate: its identity joins the regional patient (``traits``)."""
    with database.engine.begin() as conn:
        candidate = _candidate(conn, candidate_id)
        regional_id = conn.execute(
            select(RegionalPatient.regional_id).where(RegionalPatient.id == candidate.regional_pk)
        ).scalar_one()
        target = _active(conn, regional_id)
        patient = conn.execute(
            select(Patient.id, Patient.ins, Patient.ins_oid, Patient.regional_patient_pk).where(
                Patient.id == candidate.patient_pk
            )
        ).one()
        if patient.regional_patient_pk == target.id:
            raise IdentityConflict("the identity is already linked to this regional patient")
        detail = _link(conn, patient, target, "traits")
        detail["candidate"] = {"pk": candidate_id, "status": "pending"}
        _decide(conn, candidate_id, "accepted")
        return Change(record_event(conn, "accept", actor, detail), target.regional_id)


def reject_candidate(database: Database, candidate_id: int, actor: str) -> int:
    """Reject a pending candidate (recorded; the identities stay apart). Returns the event."""
    with database.engine.begin() as conn:
        _candidate(conn, candidate_id)
        _decide(conn, candidate_id, "rejected")
        detail = {"candidate": {"pk": candidate_id, "status": "pending"}}
        return record_event(conn, "reject", actor, detail)


def _check_revertible(conn: Connection, event: Any, detail: dict[str, Any]) -> None:
    if event.kind not in REVERTIBLE or event.actor in ("ingest", "backfill"):
        raise IdentityConflict(f"event {event.id} ({event.kind}) cannot be reverted")
    if event.reverted_by_pk is not None:
        raise IdentityConflict(f"event {event.id} was reverted by event {event.reverted_by_pk}")
    for move in detail["moves"]:
        row = conn.execute(
            select(Patient.regional_patient_pk, Patient.link_method).where(
                Patient.id == move["patient"]
            )
        ).one()
        if (row.regional_patient_pk, row.link_method) != (move["to"], move["to_method"]):
            raise IdentityConflict(
                f"identity #{move['patient']} changed after event {event.id}:"
                " revert the later changes first"
            )


def revert(database: Database, event_id: int, actor: str) -> int:
    """Undo a link, accepted candidate or merge exactly (unmerge); return the new event.

    Every moved identity goes back to its former regional patient and link method,
    every changed regional patient gets its former state, a decided candidate is
    pending again; the original event records who reverted it.
    """
    with database.engine.begin() as conn:
        event = conn.execute(
            select(
                IdentityEvent.id,
                IdentityEvent.kind,
                IdentityEvent.actor,
                IdentityEvent.detail,
                IdentityEvent.reverted_by_pk,
            ).where(IdentityEvent.id == event_id)
        ).first()
        if event is None:
            raise UnknownIdentity(f"no identity event {event_id}")
        detail = json.loads(event.detail)
        _check_revertible(conn, event, detail)
        for move in detail["moves"]:
            conn.execute(
                update(Patient)
                .where(Patient.id == move["patient"])
                .values(regional_patient_pk=move["from"], link_method=move["from_method"])
            )
        for state in detail.get("regionals", []):
            _restore_regional(conn, state)
        if detail.get("candidate"):
            _decide(conn, detail["candidate"]["pk"], detail["candidate"]["status"])
        new = record_event(conn, REVERTIBLE[event.kind], actor, {"reverts": event_id, **detail})
        conn.execute(
            update(IdentityEvent).where(IdentityEvent.id == event_id).values(reverted_by_pk=new)
        )
        return new
