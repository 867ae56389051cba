"""Reading the audit trail: filters, keyset pagination, and the trail's own use.

Entries are found by patient (regional id), user (actor), study, action, outcome
and time range, newest first, one page at a time (``before`` = the last id of the
previous page: stable while new entries arrive). An establishment administrator's
scope is the studies their establishments sent (``studies.establishment_pk``);
a regional administrator sees everything.

Reading the trail is itself audited (DICOM "Audit Log Used", PS3.15 A.5.3.2):
:func:`record_read` appends an ``audit-read`` entry naming the filters used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, or_, select

from pacs_hub.config import Settings
from pacs_hub.regional.identity import REGIONAL_PREFIX, regional_id_for
from pacs_hub.storage.models import RegionalPatient, Study
from pacs_hub.trust.audit import AuditEntry, record
from pacs_hub.trust.models import AuditEvent
from pacs_hub.trust.policy import AccessDenied, NotAuthenticated
from pacs_hub.trust.principal import Kind, Principal, Role

READ_ACTION = "audit-read"
"""Action of the entry that records a reading of the trail (Audit Log Used)."""
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What to look for; every field set must match (AND). Times are naive UTC."""

    regional_pk: int | None = None
    user: str = ""
    """An actor id (``user:alice``, ``node:CT1``) or a bare username (``alice``)."""
    study_uid: str = ""
    action: str = ""
    outcome: str = ""
    since: datetime | None = None
    until: datetime | None = None
    establishments: frozenset[int] | None = None
    """The reader's scope: only entries about studies of these establishments."""

    def as_detail(self) -> dict[str, Any]:
        """The filters as recorded in the Audit Log Used entry (no names, no IDs)."""
        out: dict[str, Any] = {
            k: v
            for k, v in (
                ("regional_pk", self.regional_pk),
                ("user", self.user),
                ("study_uid", self.study_uid),
                ("action", self.action),
                ("outcome", self.outcome),
            )
            if v
        }
        if self.since:
            out["since"] = self.since.isoformat()
        if self.until:
            out["until"] = self.until.isoformat()
        if self.establishments is not None:
            out["establishments"] = sorted(self.establishments)
        return out


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored entry, as read back."""

    id: int
    at: datetime
    actor_kind: str
    actor_id: str
    action: str
    purpose: str
    outcome: str
    rule: str
    regional_pk: int | None
    study_uid: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    hash: str = ""

    @property
    def regional_id(self) -> str:
        """The regional patient's id (``RP00000012``), '' when none."""
        return regional_id_for(self.regional_pk) if self.regional_pk is not None else ""


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page, newest first; ``next_before`` is the cursor of the next page."""

    entries: list[AuditRecord]
    next_before: int | None


def record_of(row: Any) -> AuditRecord:
    """An :class:`AuditRecord` from an ``audit_events`` row."""
    try:
        detail = json.loads(row.detail)
    except ValueError:
        detail = {"unparsable": row.detail}
    return AuditRecord(
        id=row.id,
        at=row.at,
        actor_kind=row.actor_kind,
        actor_id=row.actor_id,
        action=row.action,
        purpose=row.purpose,
        outcome=row.outcome,
        rule=row.rule,
        regional_pk=row.regional_pk,
        study_uid=row.study_uid,
        reason=row.reason,
        detail=detail if isinstance(detail, dict) else {"value": detail},
        hash=row.hash,
    )


def resolve_patient(conn: Connection, regional_id: str) -> int | None:
    """The primary key of the regional patient ``RP...`` (or a bare number)."""
    pk = conn.execute(
        select(RegionalPatient.id).where(RegionalPatient.regional_id == regional_id)
    ).scalar()
    if pk is not None:
        return int(pk)
    digits = regional_id.removeprefix(REGIONAL_PREFIX)
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _user_clause(user: str) -> ColumnElement[bool]:
    if ":" in user:
        return AuditEvent.actor_id == user
    return or_(AuditEvent.actor_id == user, AuditEvent.actor_id == f"{Kind.USER}:{user}")


def _where(stmt: Select[Any], flt: AuditFilter) -> Select[Any]:
    if flt.regional_pk is not None:
        stmt = stmt.where(AuditEvent.regional_pk == flt.regional_pk)
    if flt.user:
        stmt = stmt.where(_user_clause(flt.user))
    if flt.study_uid:
        stmt = stmt.where(AuditEvent.study_uid == flt.study_uid)
    if flt.action:
        stmt = stmt.where(AuditEvent.action == flt.action)
    if flt.outcome:
        stmt = stmt.where(AuditEvent.outcome == flt.outcome)
    if flt.since is not None:
        stmt = stmt.where(AuditEvent.at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(AuditEvent.at < flt.until)
    if flt.establishments is not None:
        scoped = select(Study.study_instance_uid).where(
            Study.establishment_pk.in_(sorted(flt.establishments))
        )
        stmt = stmt.where(AuditEvent.study_uid != "", AuditEvent.study_uid.in_(scoped))
    return stmt


def find_entries(
    conn: Connection, flt: AuditFilter, *, limit: int = 100, before: int | None = None
) -> AuditPage:
    """One page of matching entries, newest first, with ids below ``before``."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = _where(select(AuditEvent), flt)
    if before is not None:
        stmt = stmt.where(AuditEvent.id < before)
    rows = conn.execute(stmt.order_by(AuditEvent.id.desc()).limit(limit + 1)).all()
    entries = [record_of(r) for r in rows[:limit]]
    return AuditPage(entries, entries[-1].id if len(rows) > limit else None)


def iter_entries(
    conn: Connection, flt: AuditFilter, *, after: int = 0, batch: int = 500
) -> Iterator[AuditRecord]:
    """Every matching entry with an id above ``after``, oldest first (exports)."""
    while True:
        stmt = _where(select(AuditEvent), flt).where(AuditEvent.id > after)
        rows = conn.execute(stmt.order_by(AuditEvent.id).limit(batch)).all()
        if not rows:
            return
        for row in rows:
            yield record_of(row)
        after = rows[-1].id


def reader_scope(settings: Settings, principal: Principal) -> frozenset[int] | None:
    """Which entries ``principal`` may read: None = all, else these establishments'.

    Regional administrators (and the hub itself) read everything; establishment
    administrators read the entries about their establishments' studies. With
    ``auth_required`` off the policy is off, as everywhere else.
    """
    if not settings.auth_required or principal.kind == Kind.SYSTEM:
        return None
    if principal.kind == Kind.ANONYMOUS:
        raise NotAuthenticated("reading the audit trail needs an authenticated administrator")
    if principal.has(Role.REGIONAL_ADMIN):
        return None
    if principal.has(Role.ESTABLISHMENT_ADMIN) and principal.establishments:
        return principal.establishments
    raise AccessDenied(
        "the audit trail is readable by regional administrators and, for their"
        " establishment's studies, establishment administrators"
    )


def record_read(
    conn: Connection,
    principal: Principal,
    flt: AuditFilter,
    *,
    allowed: bool,
    how: str,
    returned: int = 0,
) -> int:
    """Append the Audit Log Used entry of one reading (or refused reading) of the trail."""
    detail = {"filters": flt.as_detail(), "via": how, "returned": returned}
    return record(
        conn,
        AuditEntry(
            actor_kind=str(principal.kind),
            actor_id=principal.audit_id,
            action=READ_ACTION,
            outcome="allow" if allowed else "deny",
            purpose="admin",
            rule="audit-reader",
            regional_pk=flt.regional_pk,
            study_uid=flt.study_uid,
            detail=detail,
        ),
    )
