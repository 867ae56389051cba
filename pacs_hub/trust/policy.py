"""The one access policy: every query, retrieve, view, share and export asks it.

:meth:`Policy.decide` answers for one study (or one regional patient);
:meth:`Policy.visible_studies` is the same rules as a SQL predicate, so query
results (C-FIND, QIDO-RS, federated queries, counts) only ever contain what the
caller may see: a denied study does not even show up in a total.

Rules, in order (the first that applies decides; ``rule`` names it in the audit):

* ``system`` — the hub's own jobs; ``regional-admin`` — regional administrators;
* ``no-authentication`` — an anonymous caller is denied everything;
* ``node-permission`` — a DICOM node asks for an action it is not permitted
  (store, query, retrieve per node);
* ``share`` — the bearer of a share link, or a doctor named in a share grant, sees
  exactly the grant's studies while it is unrevoked, unexpired and the patient's
  consent for its purpose is still granted (a withdrawal stops it at once);
* ``own-record`` — a patient sees their own studies (regional identity);
* ``establishment`` — staff and nodes see the studies their establishment sent;
* ``care-team`` — staff of an establishment that holds a study of the patient see
  the patient's studies across the region, unless the patient objected (latest
  ``regional-sharing`` consent refused or withdrawn; CSP L1110-4 III-IV);
* ``consent`` — anyone else needs the patient's granted ``regional-sharing`` consent;
* ``break-glass`` — purpose ``emergency`` with a reason, for the configured roles:
  allowed, even over an objection (R1110-3: the patient is informed afterwards), and
  flagged for review;
* ``no-rule`` — denied.

Unknown studies are reported as such (``not-found``): Study Instance UIDs are not
guessable, and a precise 404 helps integrators more than it leaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, false, func, or_, select, true

from pacs_hub.config import Settings
from pacs_hub.errors import HubError
from pacs_hub.storage.models import Patient, Study
from pacs_hub.trust.models import Consent, ShareGrant
from pacs_hub.trust.principal import Action, Kind, Principal, Purpose, Role

REGIONAL_SHARING = "regional-sharing"
STAFF_ROLES = (
    Role.ESTABLISHMENT_ADMIN,
    Role.RADIOLOGIST,
    Role.REFERRING_DOCTOR,
    Role.SERVICE,
)
NO_LONGER = ("refused", "withdrawn")


class AccessDenied(HubError):
    """The access policy refused (PS3.7 C.5: 0x0124 Refused: Not Authorized; HTTP 403)."""

    dicom_status = 0x0124
    http_status = 403
    title = "Forbidden"


class NotAuthenticated(HubError):
    """No valid credentials (HTTP 401)."""

    dicom_status = 0x0124
    http_status = 401
    title = "Authentication required"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer, with the rule that gave it (recorded in the audit trail)."""

    allowed: bool
    rule: str
    break_glass: bool = False
    regional_pk: int | None = None
    study_uid: str = ""

    def check(self, what: str = "this study") -> Decision:
        """Raise :class:`AccessDenied` when denied; return self otherwise."""
        if not self.allowed:
            raise AccessDenied(f"not authorised for {what} (rule {self.rule})")
        return self


@dataclass(frozen=True, slots=True)
class Grant:
    """A usable share grant: its patient and scope."""

    pk: int
    regional_pk: int
    study_uids: frozenset[str]
    scope: str


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """What the rules need to know about a study."""

    study_pk: int
    study_uid: str
    establishment_pk: int | None
    regional_pk: int | None


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def latest_consent(
    conn: Connection, regional_pk: int, purpose: str, doctor_ref: str = ""
) -> str | None:
    """Status of the consent in force (the latest recorded), or None when none was."""
    row = conn.execute(
        select(Consent.status)
        .where(
            Consent.regional_pk == regional_pk,
            Consent.purpose == purpose,
            Consent.doctor_ref == doctor_ref,
        )
        .order_by(Consent.id.desc())
        .limit(1)
    ).first()
    return None if row is None else str(row[0])


def _latest_sharing(statuses: tuple[str, ...]) -> Any:
    """Regional patients whose regional-sharing consent in force has one of ``statuses``."""
    latest = (
        select(Consent.regional_pk, func.max(Consent.id).label("mid"))
        .where(Consent.purpose == REGIONAL_SHARING, Consent.doctor_ref == "")
        .group_by(Consent.regional_pk)
        .subquery()
    )
    return (
        select(Consent.regional_pk)
        .join(latest, Consent.id == latest.c.mid)
        .where(Consent.status.in_(statuses))
    )


def _care_team(establishments: frozenset[int]) -> Any:
    """Regional patients with a study at one of ``establishments``."""
    return (
        select(Patient.regional_patient_pk)
        .join(Study, Study.patient_pk == Patient.id)
        .where(Study.establishment_pk.in_(establishments), Patient.regional_patient_pk.is_not(None))
    )


class Policy:
    """The access policy, configured once per process from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.enforced = settings.auth_required
        self.break_glass_roles = frozenset(
            Role(r.strip()) for r in settings.break_glass_roles.split(",") if r.strip()
        )

    # -- one study -------------------------------------------------------------------

    def study_facts(self, conn: Connection, study_uid: str) -> StudyFacts | None:
        """The establishment and regional patient of a stored study, or None."""
        row = conn.execute(
            select(Study.id, Study.establishment_pk, Patient.regional_patient_pk)
            .join(Patient, Patient.id == Study.patient_pk)
            .where(Study.study_instance_uid == study_uid)
        ).first()
        if row is None:
            return None
        return StudyFacts(int(row[0]), study_uid, row[1], row[2])

    def decide(
        self,
        conn: Connection,
        principal: Principal,
        action: Action,
        purpose: Purpose,
        *,
        study_uid: str | None = None,
        regional_pk: int | None = None,
        reason: str = "",
    ) -> Decision:
        """May ``principal`` do ``action`` for ``purpose`` on a study or a regional patient?"""
        if not self.enforced:
            return Decision(True, "policy-off", study_uid=study_uid or "")
        facts = self.study_facts(conn, study_uid) if study_uid else None
        if study_uid and facts is None:
            return Decision(False, "not-found", study_uid=study_uid)
        regional = facts.regional_pk if facts else regional_pk
        decision = self._decide(conn, principal, action, purpose, facts, regional, reason)
        return Decision(
            decision.allowed, decision.rule, decision.break_glass, regional, study_uid or ""
        )

    def _decide(
        self,
        conn: Connection,
        principal: Principal,
        action: Action,
        purpose: Purpose,
        facts: StudyFacts | None,
        regional: int | None,
        reason: str,
    ) -> Decision:
        first = self._caller(principal, action)
        if first is not None:
            return first
        if facts is None and regional is None:
            return self._without_data(principal, action)
        if self._shared(conn, principal, facts, regional):
            return Decision(True, "share")
        if principal.kind is Kind.SHARE:
            return Decision(False, "share-scope")
        if principal.has(Role.PATIENT) and regional is not None:
            own = regional == principal.regional_patient_pk
            return Decision(own, "own-record" if own else "not-own-record")
        if principal.kind is Kind.NODE or principal.has(*STAFF_ROLES):
            staff = self._staff(conn, principal, facts, regional)
            if staff is not None and staff.allowed:
                return staff
        else:
            staff = None
        # Emergency access overrides an objection (R1110-3: the patient is told
        # afterwards), as visible_studies does; it is flagged for review.
        if self._break_glass(principal, purpose, reason):
            return Decision(True, "break-glass", break_glass=True)
        return staff if staff is not None else Decision(False, "no-rule")

    @staticmethod
    def _caller(principal: Principal, action: Action) -> Decision | None:
        """Rules that depend on the caller alone."""
        if principal.kind is Kind.SYSTEM:
            return Decision(True, "system")
        if principal.kind is Kind.ANONYMOUS:
            return Decision(False, "no-authentication")
        if principal.has(Role.REGIONAL_ADMIN):
            return Decision(True, "regional-admin")
        if principal.kind is Kind.NODE and action not in principal.node_permissions:
            return Decision(False, "node-permission")
        return None

    def _break_glass(self, principal: Principal, purpose: Purpose, reason: str) -> bool:
        """Emergency access: purpose emergency, a reason, a break-glass role."""
        return (
            purpose is Purpose.EMERGENCY
            and bool(reason.strip())
            and principal.has(*self.break_glass_roles)
        )

    @staticmethod
    def _without_data(principal: Principal, action: Action) -> Decision:
        """Actions not about one study (a store, a query before its results are filtered)."""
        if principal.kind is Kind.NODE:
            return Decision(True, "node-permission")
        if action is Action.STORE:
            allowed = principal.has(Role.ESTABLISHMENT_ADMIN, Role.RADIOLOGIST, Role.SERVICE)
            return Decision(allowed, "store-role" if allowed else "no-store-role")
        if action in (Action.QUERY, Action.VIEW):
            return Decision(True, "filtered-query")
        return Decision(False, "no-rule")

    def _staff(
        self,
        conn: Connection,
        principal: Principal,
        facts: StudyFacts | None,
        regional: int | None,
    ) -> Decision | None:
        establishments = principal.establishments
        if facts is not None and facts.establishment_pk in establishments:
            return Decision(True, "establishment")
        if regional is None:
            return None
        sharing = latest_consent(conn, regional, REGIONAL_SHARING)
        if establishments and sharing not in NO_LONGER:
            in_team = conn.execute(
                select(func.count())
                .select_from(Study)
                .join(Patient, Patient.id == Study.patient_pk)
                .where(
                    Patient.regional_patient_pk == regional,
                    Study.establishment_pk.in_(establishments),
                )
            ).scalar_one()
            if in_team:
                return Decision(True, "care-team")
        if sharing == "granted":
            return Decision(True, "consent")
        if sharing in NO_LONGER:
            return Decision(False, "patient-objected")
        return None

    # -- shares -------------------------------------------------------------------------

    def _grants(self, conn: Connection, principal: Principal) -> list[Grant]:
        """The usable share grants of a link bearer or of a named doctor."""
        stmt = select(
            ShareGrant.id,
            ShareGrant.regional_pk,
            ShareGrant.study_uids,
            ShareGrant.scope,
            ShareGrant.purpose,
            ShareGrant.recipient,
        ).where(ShareGrant.revoked_at.is_(None), ShareGrant.expires_at > _now())
        if principal.kind is Kind.SHARE:
            stmt = stmt.where(ShareGrant.id == principal.share_grant_pk)
        else:
            names = [n for n in (principal.rpps, principal.email) if n]
            if not names:
                return []
            stmt = stmt.where(ShareGrant.recipient.in_(names))
        grants = []
        for pk, regional, uids, scope, purpose, recipient in conn.execute(stmt):
            doctor = recipient if purpose == "named-doctor" else ""
            if latest_consent(conn, regional, purpose, doctor) == "granted":
                grants.append(Grant(pk, regional, frozenset(json.loads(uids)), scope))
        return grants

    def _shared(
        self,
        conn: Connection,
        principal: Principal,
        facts: StudyFacts | None,
        regional: int | None,
    ) -> bool:
        if principal.kind not in (Kind.SHARE, Kind.USER):
            return False
        for grant in self._grants(conn, principal):
            if grant.regional_pk != regional:
                continue
            if grant.scope == "patient":
                return True
            if facts is not None and facts.study_uid in grant.study_uids:
                return True
        return False

    # -- queries ------------------------------------------------------------------------

    def visible_studies(
        self,
        conn: Connection,
        principal: Principal,
        purpose: Purpose,
        *,
        study: Any = Study,
        patient: Any = Patient,
        reason: str = "",
    ) -> ColumnElement[bool] | None:
        """A SQL predicate on ``study``/``patient`` (entities or aliases, joined by the
        caller) true for exactly the studies ``principal`` may see; None = everything."""
        if not self.enforced or principal.kind is Kind.SYSTEM or principal.has(Role.REGIONAL_ADMIN):
            return None
        if principal.kind is Kind.ANONYMOUS:
            return false()
        if principal.kind is Kind.NODE and Action.QUERY not in principal.node_permissions:
            return false()
        if self._break_glass(principal, purpose, reason):
            return None
        clauses: list[ColumnElement[bool]] = self._share_clauses(conn, principal, study, patient)
        if principal.kind is Kind.SHARE:
            return or_(false(), *clauses)
        if principal.has(Role.PATIENT) and principal.regional_patient_pk is not None:
            clauses.append(patient.regional_patient_pk == principal.regional_patient_pk)
        if principal.kind is Kind.NODE or principal.has(*STAFF_ROLES):
            establishments = principal.establishments
            regional = patient.regional_patient_pk
            if establishments:
                clauses.append(study.establishment_pk.in_(establishments))
                clauses.append(
                    and_(
                        regional.in_(_care_team(establishments)),
                        regional.not_in(_latest_sharing(NO_LONGER)),
                    )
                )
            clauses.append(regional.in_(_latest_sharing(("granted",))))
        return or_(false(), *clauses)

    def _share_clauses(
        self, conn: Connection, principal: Principal, study: Any, patient: Any
    ) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if principal.kind not in (Kind.SHARE, Kind.USER):
            return clauses
        for grant in self._grants(conn, principal):
            same_patient = patient.regional_patient_pk == grant.regional_pk
            if grant.scope == "patient":
                clauses.append(same_patient)
            else:
                uids = sorted(grant.study_uids)
                clauses.append(and_(same_patient, study.study_instance_uid.in_(uids)))
        return clauses


def allow_all() -> ColumnElement[bool]:
    """A predicate true for every row (for callers that need a clause, not None)."""
    return true()
