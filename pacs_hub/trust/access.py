"""The access policy applied on an access path: queries filtered, retrieves decided, audited.

Every access path (DICOMweb, the regional APIs, and the DICOM services C-FIND, C-MOVE,
C-GET, C-STORE) does the same three things, through this module:

* a **query** (C-FIND, QIDO-RS, federated query, listings) restricts its SQL with
  :func:`query_access` (the policy's :meth:`~pacs_hub.trust.policy.Policy.visible_studies`
  as a :class:`~pacs_hub.storage.query.Access` on the :class:`~pacs_hub.storage.query.Query`),
  so pages and totals never count a study the caller may not see, then records one
  audit entry with :func:`record_query`;
* a **retrieve** (C-MOVE, C-GET, WADO-RS, rendered images, metadata) asks
  :func:`authorize` per study: the policy's decision, recorded in the audit trail;
* a **store** (C-STORE, STOW-RS) asks :func:`authorize` without a study.

Remote results of a federated query (answers of an establishment PACS for studies the
hub does not hold) are shown by the same rules once their patient is known
(:func:`remote_visible`): the establishment rule when the answering PACS belongs to one
of the caller's establishments; else the per-study decision when the hub holds the
study; else the per-patient decision (care team, consent, own record, a patient-wide
share) when the Patient ID (with its issuer, or the PACS establishment's default
issuer) is linked to a regional patient. A remote answer whose patient is unknown to
the hub is shown only to callers who see everything (regional administrators,
break-glass).

Audit volume. Every deny is recorded. An allowed decision is recorded once per
(caller, action, purpose, study, rule) per :data:`WINDOW_SECONDS` (60 s) in this
process (:class:`AuditWindow`): a viewer that opens a study fetches its metadata
and then hundreds of frames; the first request is recorded, the frames that follow
within the minute are not recorded again (IHE ATNA records a study access, not
each frame). With the policy off (``PACS_HUB_AUTH_REQUIRED=false``) nothing is
decided nor recorded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, Node, Patient
from pacs_hub.storage.query import Access, access_from
from pacs_hub.trust import audit
from pacs_hub.trust.policy import Decision, Policy
from pacs_hub.trust.principal import Action, Principal, Purpose

WINDOW_SECONDS = 60.0
WINDOW_SIZE = 20_000


def query_access(
    policy: Policy, conn: Connection, principal: Principal, purpose: Purpose, reason: str = ""
) -> Access | None:
    """The restriction to put on a query for ``principal`` (None: sees everything).

    Use it as ``query.restricted(query_access(...))`` before ``find`` / ``count_matches``.
    """

    def visible(study: Any, patient: Any) -> Any:
        return policy.visible_studies(
            conn, principal, purpose, study=study, patient=patient, reason=reason
        )

    return access_from(visible)


@dataclass
class AuditWindow:
    """Allowed decisions already recorded in the last ``seconds`` (thread-safe, bounded)."""

    seconds: float = WINDOW_SECONDS
    size: int = WINDOW_SIZE
    _seen: OrderedDict[tuple[str, ...], float] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def first(self, key: tuple[str, ...]) -> bool:
        """True when ``key`` was not recorded within the window (and marks it now)."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen < self.seconds:
                return False
            self._seen[key] = now
            self._seen.move_to_end(key)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True

    def clear(self) -> None:
        """Forget everything (tests; a policy change)."""
        with self._lock:
            self._seen.clear()


def authorize(
    database: Database,
    policy: Policy,
    principal: Principal,
    action: Action,
    purpose: Purpose,
    *,
    study_uid: str | None = None,
    regional_pk: int | None = None,
    reason: str = "",
    detail: dict[str, Any] | None = None,
    window: AuditWindow | None = None,
) -> Decision:
    """The policy's decision for one study (or patient, or none), recorded in the audit
    trail (in its own transaction; an allowed repeat within ``window`` is not recorded
    again). The caller turns a deny into its protocol's refusal (``decision.check()``)."""
    if not policy.enforced:
        return Decision(True, "policy-off", study_uid=study_uid or "")
    with database.read_connection() as conn:
        decision = policy.decide(
            conn,
            principal,
            action,
            purpose,
            study_uid=study_uid,
            regional_pk=regional_pk,
            reason=reason,
        )
    key = (principal.audit_id, str(action), str(purpose), decision.study_uid, decision.rule)
    if decision.allowed and window is not None and not window.first(key):
        return decision
    entry = audit.decision_entry(principal, action, purpose, decision, reason=reason, detail=detail)
    with database.session() as session:
        audit.record(session.connection(), entry)
    return decision


def record_query(
    database: Database,
    policy: Policy,
    principal: Principal,
    purpose: Purpose,
    *,
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit entry for a query whose results were filtered by :func:`query_access`
    (rule ``filtered-query``, or ``break-glass`` when the emergency purpose widened it)."""
    if not policy.enforced:
        return
    break_glass = (
        purpose is Purpose.EMERGENCY
        and bool(reason.strip())
        and principal.has(*policy.break_glass_roles)
    )
    decision = Decision(True, "break-glass" if break_glass else "filtered-query", break_glass)
    record_decision(database, principal, Action.QUERY, purpose, decision, reason, detail)


def record_decision(
    database: Database,
    principal: Principal,
    action: Action,
    purpose: Purpose,
    decision: Decision,
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Record a decision taken outside :meth:`Policy.decide` (a query, a remote result)."""
    entry = audit.decision_entry(principal, action, purpose, decision, reason=reason, detail=detail)
    with database.session() as session:
        audit.record(session.connection(), entry)


@dataclass(frozen=True, slots=True)
class RemoteAnswer:
    """What a federated query knows of a study only a PACS holds (no pydicom here)."""

    locations: tuple[str, ...]
    """AE titles of the PACS nodes that answered it."""
    study_uid: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""


def remote_visible(
    policy: Policy,
    conn: Connection,
    principal: Principal,
    purpose: Purpose,
    answer: RemoteAnswer,
    reason: str = "",
) -> bool:
    """May ``principal`` see this remote answer? (the rules of the module docstring)."""
    if not policy.enforced:
        return True
    nodes = conn.execute(
        select(Node.establishment_pk, Establishment.default_issuer)
        .outerjoin(Establishment, Establishment.id == Node.establishment_pk)
        .where(Node.ae_title.in_(answer.locations))
    ).all()
    owners = {pk for pk, _issuer in nodes if pk is not None}
    if owners & principal.establishments:
        return True
    if answer.study_uid and policy.study_facts(conn, answer.study_uid) is not None:
        return policy.decide(
            conn, principal, Action.QUERY, purpose, study_uid=answer.study_uid, reason=reason
        ).allowed
    issuers = {answer.issuer_of_patient_id} if answer.issuer_of_patient_id else set()
    issuers |= {str(issuer) for _pk, issuer in nodes if issuer} if not issuers else set()
    regional = None
    if answer.patient_id and issuers:
        regional = conn.execute(
            select(Patient.regional_patient_pk).where(
                Patient.patient_id == answer.patient_id,
                Patient.issuer_of_patient_id.in_(issuers),
                Patient.regional_patient_pk.is_not(None),
            )
        ).scalar()
    if regional is None:
        return policy.visible_studies(conn, principal, purpose, reason=reason) is None
    return policy.decide(
        conn, principal, Action.QUERY, purpose, regional_pk=int(regional), reason=reason
    ).allowed
