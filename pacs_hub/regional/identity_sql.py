"""A new local identity and its regional link, in plain SQL, for the ingest hot path.

The first instance of a patient the index does not know creates a ``patients`` row
(one Patient ID within one issuer, PS3.3 C.7.1.1) and links it, in the same
transaction, exactly as :func:`pacs_hub.storage.index._patient_pk` and
:func:`pacs_hub.regional.identity.link_new_identity` do through SQLAlchemy: to the
active regional patient holding its INS (``link_method`` ``ins``), else to a regional
patient of its own (``new``), with the same ``link`` identity event. Through
SQLAlchemy Core these statements made the first instance of a patient cost about
three times an instance of a known series (profile of ct64 ingest). Every patient of
a region comes this way once; in the benchmark's C-FIND index (one instance per
study) half the instances do.

One case is left to the general path: a regional patient would be created while an
identity of another one has the same strict traits
(:func:`~pacs_hub.dicom.ins.trait_key`), which records link candidates for review.
:meth:`NewIdentity.create` answers None then, having written nothing.
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

from pacs_hub.dicom.header import InstanceHeader
from pacs_hub.regional.identity import (
    INGEST_ACTOR,
    identity_key,
    link_event_detail,
    regional_id_for,
)
from pacs_hub.storage.database import Database, insert_returning_id
from pacs_hub.storage.index import new_patient_row
from pacs_hub.storage.models import Patient

_PATIENT_COLUMNS, _INSERT_PATIENT = insert_returning_id(Patient.__table__)
_SELECT_BY_INS = (
    "SELECT id FROM regional_patients WHERE ins = ? AND ins_oid = ? AND active = ?"
    " ORDER BY id LIMIT 1"
)
_SELECT_SAME_BIRTH = (
    "SELECT patients.patient_name, patients.birth_name, patients.given_names,"
    " patients.patient_sex, patients.patient_birth_date FROM patients"
    " JOIN regional_patients ON regional_patients.id = patients.regional_patient_pk"
    " WHERE patients.patient_birth_date = ? AND patients.patient_sex = ?"
    " AND regional_patients.active = ?"
)
_INSERT_REGIONAL = (
    "INSERT INTO regional_patients (regional_id, ins, ins_oid, active, created_at)"
    " VALUES (?, ?, ?, ?, ?) RETURNING id"
)
_NAME_REGIONAL = "UPDATE regional_patients SET regional_id = ? WHERE id = ?"
_INSERT_EVENT = "INSERT INTO identity_events (kind, actor, detail, at) VALUES (?, ?, ?, ?)"
_LOCK_INS = "SELECT pg_advisory_xact_lock(hashtext(?))"
_TRAITS = ("patient_name", "birth_name", "given_names", "patient_sex", "patient_birth_date")


class NewIdentity:
    """The statements creating a new local identity, prepared for one database's driver."""

    def __init__(self, database: Database) -> None:
        sql = database.driver_sql
        self._insert_patient = sql(_INSERT_PATIENT)
        self._select_by_ins = sql(_SELECT_BY_INS)
        self._select_same_birth = sql(_SELECT_SAME_BIRTH)
        self._insert_regional = sql(_INSERT_REGIONAL)
        self._name_regional = sql(_NAME_REGIONAL)
        self._insert_event = sql(_INSERT_EVENT)
        # One regional patient per INS: PostgreSQL serialises their creation per INS
        # (as identity._lock_ins does); SQLite has one writer at a time already.
        self._lock_ins = None if database.is_sqlite else sql(_LOCK_INS)

    def create(self, cursor: Any, h: InstanceHeader, when: Any) -> int | None:
        """Insert and link the identity of ``h``; its ``patients`` pk. ``when`` is the
        time as the driver takes it. None, nothing written, when link candidates
        would be recorded (the general path does that)."""
        regional_pk: int | None = None
        method = "ins" if h.ins else "new"  # the first identity of an INS creates its patient
        if h.ins:
            if self._lock_ins is not None:
                cursor.execute(self._lock_ins, (h.ins,))
            cursor.execute(self._select_by_ins, (h.ins, h.ins_oid, True))
            found = cursor.fetchone()
            regional_pk = found[0] if found else None
        created = regional_pk is None
        if created and self._has_namesake(cursor, h):
            return None
        if regional_pk is None:
            temporary = f"tmp-{uuid.uuid4().hex}"  # unique until named after its pk
            cursor.execute(self._insert_regional, (temporary, h.ins, h.ins_oid, True, when))
            regional_pk = cursor.fetchone()[0]
            cursor.execute(self._name_regional, (regional_id_for(regional_pk), regional_pk))
        row = new_patient_row(h, regional_pk, method)
        cursor.execute(self._insert_patient, tuple(row[column] for column in _PATIENT_COLUMNS))
        patient_pk: int = cursor.fetchone()[0]
        detail = link_event_detail(patient_pk, regional_pk, method, created)
        cursor.execute(self._insert_event, ("link", INGEST_ACTOR, json.dumps(detail), when))
        return patient_pk

    def _has_namesake(self, cursor: Any, h: InstanceHeader) -> bool:
        """True when a linked identity of an active regional patient has the strict
        traits of ``h`` (:func:`pacs_hub.regional.identity.add_candidates` would
        record a candidate)."""
        key = identity_key(SimpleNamespace(**{trait: getattr(h, trait) for trait in _TRAITS}))
        if not key:
            return False
        cursor.execute(self._select_same_birth, (h.patient_birth_date, h.patient_sex, True))
        return any(
            identity_key(SimpleNamespace(**dict(zip(_TRAITS, other, strict=True)))) == key
            for other in cursor.fetchall()
        )
