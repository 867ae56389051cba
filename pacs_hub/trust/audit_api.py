"""Audit trail API: ``GET /api/audit`` (query) and ``GET /api/audit/verify``.

``GET /api/audit?patient=RP00000012&user=alice&study=1.2...&action=view&outcome=deny
&since=2026-01-01T00:00:00&until=...&limit=100&before=5123`` answers one page of
entries, newest first, and ``next`` (the ``before`` of the next page, null at the
end). Regional administrators read every entry; establishment administrators the
entries about their establishments' studies (others: 403, anonymous: 401). Every
reading, allowed or refused, is itself recorded (Audit Log Used, PS3.15 A.5.3.2).
``GET /api/audit/verify`` (regional administrators) recomputes the hash chain.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.errors import HubError
from pacs_hub.trust import audit
from pacs_hub.trust.audit_query import (
    MAX_PAGE,
    AuditFilter,
    AuditRecord,
    find_entries,
    reader_scope,
    record_read,
    resolve_patient,
)
from pacs_hub.trust.policy import AccessDenied
from pacs_hub.trust.principal import Principal
from pacs_hub.trust.requests import principal_of

router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]
Caller = Annotated[Principal, Depends(principal_of)]


class AuditEntryOut(BaseModel):
    """One entry of the trail."""

    id: int
    at: datetime
    actor: str
    action: str
    purpose: str
    outcome: str
    rule: str
    patient: str
    """The regional id (``RP...``), '' when the entry names no patient."""
    study_uid: str
    reason: str
    detail: dict[str, Any]
    hash: str


class AuditPageOut(BaseModel):
    """One page, newest first."""

    entries: list[AuditEntryOut]
    next: int | None


class ChainBreakOut(BaseModel):
    """Where the chain stops holding."""

    entry_id: int
    problem: str


class VerifyOut(BaseModel):
    """The result of recomputing the chain."""

    intact: bool
    breaks: list[ChainBreakOut]


def _out(rec: AuditRecord) -> AuditEntryOut:
    return AuditEntryOut(
        id=rec.id,
        at=rec.at.replace(tzinfo=UTC),
        actor=rec.actor_id,
        action=rec.action,
        purpose=rec.purpose,
        outcome=rec.outcome,
        rule=rec.rule,
        patient=rec.regional_id,
        study_uid=rec.study_uid,
        reason=rec.reason,
        detail=rec.detail,
        hash=rec.hash,
    )


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


@router.get("/audit", response_model=AuditPageOut)
def list_audit(
    hub: Hub,
    caller: Caller,
    patient: Annotated[str, Query(description="Regional patient id (RP...)")] = "",
    user: Annotated[str, Query(description="Actor id (user:alice) or username")] = "",
    study: Annotated[str, Query(description="Study Instance UID")] = "",
    action: Annotated[str, Query(description="query, view, retrieve, share, ...")] = "",
    outcome: Annotated[str, Query(description="allow, deny, ok, failed")] = "",
    since: Annotated[datetime | None, Query(description="From this instant (UTC)")] = None,
    until: Annotated[datetime | None, Query(description="Before this instant (UTC)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    before: Annotated[int | None, Query(description="Entries older than this id")] = None,
) -> AuditPageOut:
    """One page of the audit trail."""
    with hub.database.read_connection() as conn:
        regional_pk = resolve_patient(conn, patient) if patient else None
    flt = AuditFilter(
        regional_pk=regional_pk if patient else None,
        user=user,
        study_uid=study,
        action=action,
        outcome=outcome,
        since=_naive_utc(since),
        until=_naive_utc(until),
    )
    try:
        scope = reader_scope(hub.settings, caller)
    except HubError:
        with hub.database.session() as session:
            record_read(session.connection(), caller, flt, allowed=False, how="api")
        raise
    flt = replace(flt, establishments=scope)
    if patient and regional_pk is None:
        page_entries: list[AuditRecord] = []
        next_before = None
    else:
        with hub.database.read_connection() as conn:
            page = find_entries(conn, flt, limit=limit, before=before)
        page_entries, next_before = page.entries, page.next_before
    with hub.database.session() as session:
        record_read(
            session.connection(), caller, flt, allowed=True, how="api", returned=len(page_entries)
        )
    return AuditPageOut(entries=[_out(r) for r in page_entries], next=next_before)


@router.get("/audit/verify", response_model=VerifyOut)
def verify_audit(hub: Hub, caller: Caller) -> VerifyOut:
    """Recompute the hash chain (regional administrators)."""
    flt = AuditFilter()
    try:
        if reader_scope(hub.settings, caller) is not None:
            raise AccessDenied("verifying the whole trail is for regional administrators")
    except HubError:
        with hub.database.session() as session:
            record_read(session.connection(), caller, flt, allowed=False, how="api-verify")
        raise
    with hub.database.read_connection() as conn:
        breaks = audit.verify(conn)
    with hub.database.session() as session:
        record_read(session.connection(), caller, flt, allowed=True, how="api-verify")
    return VerifyOut(
        intact=not breaks,
        breaks=[ChainBreakOut(entry_id=b.entry_id, problem=b.problem) for b in breaks],
    )
