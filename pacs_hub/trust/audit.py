"""The append-only, hash-chained audit trail (issue 4, Audit; CSP R6113-9-2).

:func:`record` appends one entry on the caller's connection, inside the caller's
transaction, so an action and its trace commit or roll back together. Entries are
chained: ``hash = SHA-256(prev_hash || canonical JSON of the entry)``; the one-row
``audit_head`` table holds the last hash and is locked while appending, which
serialises writers on PostgreSQL (``FOR UPDATE``) and SQLite (one writer at a
time). :func:`verify` recomputes the chain and reports every entry where it
breaks (an edited, inserted or deleted row).

Retention (CSP R6113-9-2: at least 6 rolling months) prunes the oldest entries with
:func:`prune` without breaking verification. In the same transaction as the
DELETE, it appends a *checkpoint* entry (action ``audit-prune``) whose detail names
the last pruned entry (``through_id``, ``through_hash``). The checkpoint is itself a
link of the chain, so it cannot be edited unnoticed; :func:`verify` starts from the
latest checkpoint's ``through_hash`` instead of the genesis hash, and the first
kept entry must follow it exactly. Deleting kept entries at the start, deleting the
checkpoint, or editing its anchor all show as breaks. Like any keyless hash chain,
this detects edits by someone who does not recompute every later hash; the copy
shipped to the audit repository (:mod:`pacs_hub.trust.syslog`) is the outside
witness against that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from pacs_hub.errors import HubError
from pacs_hub.trust.models import AuditEvent, AuditHead
from pacs_hub.trust.policy import Decision
from pacs_hub.trust.principal import Action, Principal, Purpose

GENESIS = "0" * 64
PRUNE_ACTION = "audit-prune"
"""Action of the checkpoint entry that :func:`prune` appends."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What one audit entry says. Never a patient name or Patient ID: the patient is
    the regional patient's primary key, the study its Study Instance UID."""

    actor_kind: str
    actor_id: str
    action: str
    outcome: str
    purpose: str = ""
    rule: str = ""
    regional_pk: int | None = None
    study_uid: str = ""
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def decision_entry(
    principal: Principal,
    action: Action,
    purpose: Purpose,
    decision: Decision,
    *,
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """The audit entry of one policy decision."""
    extra = dict(detail or {})
    if decision.break_glass:
        extra["break_glass"] = True
    return AuditEntry(
        actor_kind=str(principal.kind),
        actor_id=principal.audit_id,
        action=str(action),
        outcome="allow" if decision.allowed else "deny",
        purpose=str(purpose),
        rule=decision.rule,
        regional_pk=decision.regional_pk,
        study_uid=decision.study_uid,
        reason=reason,
        detail=extra,
    )


def _canonical(at: datetime, entry: AuditEntry) -> bytes:
    body = {
        "at": at.isoformat(timespec="microseconds"),
        "actor_kind": entry.actor_kind,
        "actor_id": entry.actor_id,
        "action": entry.action,
        "purpose": entry.purpose,
        "outcome": entry.outcome,
        "rule": entry.rule,
        "regional_pk": entry.regional_pk,
        "study_uid": entry.study_uid,
        "reason": entry.reason,
        "detail": entry.detail,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def chain_hash(prev_hash: str, at: datetime, entry: AuditEntry) -> str:
    """The hash of an entry following ``prev_hash``."""
    return hashlib.sha256(prev_hash.encode("ascii") + _canonical(at, entry)).hexdigest()


def record(conn: Connection, entry: AuditEntry, at: datetime | None = None) -> int:
    """Append ``entry`` in the caller's transaction; return its id."""
    at = at or datetime.now(UTC).replace(tzinfo=None)
    head = conn.execute(
        select(AuditHead.last_id, AuditHead.last_hash).where(AuditHead.id == 1).with_for_update()
    ).first()
    if head is None:  # a database created without the 0004 data step
        conn.execute(insert(AuditHead).values(id=1, last_id=0, last_hash=GENESIS))
        prev = GENESIS
    else:
        prev = str(head[1])
    digest = chain_hash(prev, at, entry)
    new_id = conn.execute(
        insert(AuditEvent)
        .values(
            at=at,
            actor_kind=entry.actor_kind,
            actor_id=entry.actor_id[:256],
            action=entry.action,
            purpose=entry.purpose,
            outcome=entry.outcome,
            rule=entry.rule,
            regional_pk=entry.regional_pk,
            study_uid=entry.study_uid,
            reason=entry.reason[:256],
            detail=json.dumps(entry.detail, sort_keys=True, separators=(",", ":")),
            prev_hash=prev,
            hash=digest,
        )
        .returning(AuditEvent.id)
    ).scalar_one()
    conn.execute(
        update(AuditHead).where(AuditHead.id == 1).values(last_id=new_id, last_hash=digest)
    )
    return int(new_id)


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where the chain stops holding, and why."""

    entry_id: int
    problem: str


def _entry_of(row: Any) -> AuditEntry:
    return AuditEntry(
        actor_kind=row.actor_kind,
        actor_id=row.actor_id,
        action=row.action,
        outcome=row.outcome,
        purpose=row.purpose,
        rule=row.rule,
        regional_pk=row.regional_pk,
        study_uid=row.study_uid,
        reason=row.reason,
        detail=json.loads(row.detail),
    )


def _anchor(conn: Connection) -> tuple[int, str]:
    """Where the kept chain starts: the latest retention checkpoint's last pruned entry
    (its id and hash), or (0, genesis) when nothing was ever pruned."""
    detail = conn.execute(
        select(AuditEvent.detail)
        .where(AuditEvent.action == PRUNE_ACTION)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).scalar()
    if detail is None:
        return 0, GENESIS
    try:
        anchor = json.loads(detail)
        return int(anchor["through_id"]), str(anchor["through_hash"])
    except (ValueError, KeyError, TypeError):
        return 0, GENESIS  # an edited checkpoint: its own hash check reports it


def _check(rows: Sequence[Any], prev_id: int, prev: str) -> tuple[list[ChainBreak], int, str]:
    """Check ``rows`` (in id order) follow entry ``prev_id`` of hash ``prev``; return the
    breaks found and the last entry's id and hash."""
    breaks: list[ChainBreak] = []
    for row in rows:
        if row.prev_hash != prev:
            breaks.append(ChainBreak(row.id, f"does not follow entry {prev_id} (deleted?)"))
        elif chain_hash(prev, row.at, _entry_of(row)) != row.hash:
            breaks.append(ChainBreak(row.id, "content changed after it was written"))
        prev, prev_id = row.hash, row.id
    return breaks, prev_id, prev


def verify(conn: Connection, batch: int = 5000) -> list[ChainBreak]:
    """Recompute the kept chain from its anchor; an empty list means intact."""
    breaks: list[ChainBreak] = []
    prev_id, prev = _anchor(conn)
    after = 0
    while True:
        rows = conn.execute(
            select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id).limit(batch)
        ).all()
        if not rows:
            break
        found, prev_id, prev = _check(rows, prev_id, prev)
        breaks += found
        after = rows[-1].id
    head = conn.execute(select(AuditHead.last_id, AuditHead.last_hash)).first()
    if head is not None and (int(head[0]), str(head[1])) != (prev_id, prev):
        breaks.append(ChainBreak(prev_id, "the newest entries were removed"))
    return breaks


class AuditChainBroken(HubError):
    """Retention found a break among the entries it would prune: it keeps them."""

    http_status = 409
    title = "Audit trail broken"


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one :func:`prune` removed, and the checkpoint entry it appended."""

    count: int
    through_id: int
    checkpoint_id: int


def _prune_bound(conn: Connection, cutoff: datetime, keep_from_id: int | None) -> int | None:
    """The highest id that may go: every entry up to it is older than ``cutoff``."""
    first_recent = conn.execute(select(func.min(AuditEvent.id)).where(AuditEvent.at >= cutoff))
    recent = first_recent.scalar()
    bound = (
        int(recent) - 1
        if recent is not None
        else int(conn.execute(select(func.max(AuditEvent.id))).scalar() or 0)
    )
    if keep_from_id is not None:
        bound = min(bound, keep_from_id - 1)
    return bound if bound > 0 else None


def prune(
    conn: Connection,
    cutoff: datetime,
    *,
    keep_from_id: int | None = None,
    batch: int = 10_000,
    actor: str = "system:pacs-hub",
) -> Pruned | None:
    """Delete up to ``batch`` of the oldest entries written before ``cutoff`` (naive
    UTC) and append the retention checkpoint, in the caller's transaction.

    Only a prefix of the chain ever goes (never an entry younger than ``cutoff``,
    nor one at or after ``keep_from_id``, e.g. not yet shipped to the audit
    repository). Returns None when nothing was old enough. The entries to prune are
    checked first: a break among them raises :class:`AuditChainBroken` and nothing
    goes, so tampering is never erased by retention.
    """
    conn.execute(select(AuditHead.id).where(AuditHead.id == 1).with_for_update())
    bound = _prune_bound(conn, cutoff, keep_from_id)
    if bound is None:
        return None
    rows = conn.execute(
        select(AuditEvent).where(AuditEvent.id <= bound).order_by(AuditEvent.id).limit(batch)
    ).all()
    if not rows:
        return None
    breaks, _, _ = _check(rows, *_anchor(conn))
    if breaks:  # pruning would destroy the evidence: keep it, say where
        raise AuditChainBroken(
            f"retention stopped: entry {breaks[0].entry_id} {breaks[0].problem};"
            " run 'pacs-hub audit verify'"
        )
    through_id, through_hash, through_at = rows[-1].id, rows[-1].hash, rows[-1].at
    count = conn.execute(delete(AuditEvent).where(AuditEvent.id <= through_id)).rowcount
    checkpoint = AuditEntry(
        actor_kind=actor.split(":", 1)[0],
        actor_id=actor,
        action=PRUNE_ACTION,
        outcome="ok",
        purpose="admin",
        rule="retention",
        detail={
            "through_id": int(through_id),
            "through_hash": str(through_hash),
            "through_at": through_at.isoformat(timespec="microseconds"),
            "count": int(count),
            "cutoff": cutoff.isoformat(timespec="seconds"),
        },
    )
    return Pruned(int(count), int(through_id), record(conn, checkpoint))
