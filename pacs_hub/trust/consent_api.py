"""Consent API (``/api/consents``): the text to show, the decisions, their history.

* ``GET /api/consents/text?purpose=&lang=&doctor_ref=`` — the exact text to show
  the patient and its SHA-256 (the proof to send back);
* ``POST /api/consents`` ``{patient, purpose, doctor_ref, status, text_sha256}`` —
  record a decision: ``in-person`` when a professional of the patient's care team
  (or a regional admin) records it, ``patient-link`` when the patient does it;
  audited in the same transaction (CSP L1110-4, décret 2016-1349);
* ``GET /api/consents?patient=REGIONAL_ID`` — the decisions in force and the history.

Patients are named by their regional id; errors are ``application/problem+json``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, NoReturn

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, select

from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Patient, Study
from pacs_hub.trust import consent
from pacs_hub.trust.audit import decision_entry, record
from pacs_hub.trust.policy import AccessDenied, Decision, NotAuthenticated, Policy
from pacs_hub.trust.principal import Action, Kind, Principal, Purpose, Role
from pacs_hub.trust.requests import principal_of

router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]
Caller = Annotated[Principal, Depends(principal_of)]
PROFESSIONALS = (
    Role.REGIONAL_ADMIN,
    Role.ESTABLISHMENT_ADMIN,
    Role.RADIOLOGIST,
    Role.REFERRING_DOCTOR,
)
RECORDER_RULES = frozenset({"policy-off", "regional-admin", "establishment", "care-team"})
"""Rules under which a professional may record a patient's consent in person: the
patient's care team, not a doctor who only sees the patient through a share."""


class ConsentTextOut(BaseModel):
    """The text to show, and the proof to send back."""

    purpose: str
    doctor_ref: str
    version: int
    lang: str
    text: str
    sha256: str


class ConsentIn(BaseModel):
    """A consent decision to record."""

    model_config = ConfigDict(extra="forbid")

    patient: str = Field(min_length=1, max_length=64, description="Regional id of the patient")
    purpose: Literal["regional-sharing", "named-doctor", "national-record", "research"]
    doctor_ref: str = Field(
        default="", max_length=128, description="named-doctor: RPPS-like id or e-mail"
    )
    status: Literal["granted", "refused", "withdrawn"]
    text_sha256: str = Field(
        pattern="^[0-9a-fA-F]{64}$", description="SHA-256 of the exact text shown"
    )


class ConsentOut(BaseModel):
    """One recorded consent decision."""

    id: int
    patient: str
    purpose: str
    doctor_ref: str
    status: str
    method: str
    recorded_by: str
    proof_sha256: str
    at: datetime


class ConsentsOut(BaseModel):
    """A patient's consent decisions: in force, and all of them newest first."""

    patient: str
    in_force: list[ConsentOut]
    history: list[ConsentOut]


def consent_out(regional_id: str, row: consent.ConsentRecord) -> ConsentOut:
    """The API form of a consent row."""
    return ConsentOut(
        id=row.id,
        patient=regional_id,
        purpose=row.purpose,
        doctor_ref=row.doctor_ref,
        status=row.status,
        method=row.method,
        recorded_by=row.recorded_by,
        proof_sha256=row.proof_sha256,
        at=row.at.replace(tzinfo=UTC),
    )


def deny(database: Database, principal: Principal, action: Action, decision: Decision) -> NoReturn:
    """Audit a refusal in its own transaction (the action's rolls back), then raise."""
    with database.session() as session:
        record(session.connection(), decision_entry(principal, action, Purpose.CARE, decision))
    raise AccessDenied(f"not authorised (rule {decision.rule})")


def require_caller(policy: Policy, principal: Principal) -> None:
    """401 when the policy is on and nobody is authenticated."""
    if policy.enforced and principal.kind is Kind.ANONYMOUS:
        raise NotAuthenticated("sign in first (Authorization: Bearer, or the hub's session)")


def _holds_a_study(conn: Connection, principal: Principal, regional_pk: int) -> bool:
    """One of the caller's establishments sent a study of this patient."""
    if not principal.establishments:
        return False
    found = conn.execute(
        select(Study.id)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(
            Patient.regional_patient_pk == regional_pk,
            Study.establishment_pk.in_(principal.establishments),
        )
        .limit(1)
    ).first()
    return found is not None


def consent_method(
    conn: Connection, policy: Policy, principal: Principal, regional_pk: int
) -> tuple[str, Decision]:
    """How ``principal`` may record this patient's consent, and the decision behind it.

    The patient themselves: ``patient-link``; a professional of an establishment that
    holds a study of the patient (even after the patient objected to regional sharing:
    they record that objection), of the patient's care team, or a regional admin:
    ``in-person``; anyone else is refused.
    """
    if not policy.enforced:
        return "in-person", Decision(True, "policy-off", regional_pk=regional_pk)
    if principal.has(Role.PATIENT):
        own = principal.regional_patient_pk == regional_pk
        return "patient-link", Decision(
            own, "own-record" if own else "not-own-record", regional_pk=regional_pk
        )
    if principal.kind is Kind.USER and principal.has(*PROFESSIONALS):
        if _holds_a_study(conn, principal, regional_pk):  # even after an objection
            return "in-person", Decision(True, "establishment", regional_pk=regional_pk)
        decision = policy.decide(
            conn, principal, Action.VIEW, Purpose.CARE, regional_pk=regional_pk
        )
        if decision.allowed and decision.rule in RECORDER_RULES:
            return "in-person", decision
        return "in-person", Decision(
            False, f"consent-not-care-team:{decision.rule}", regional_pk=regional_pk
        )
    return "in-person", Decision(False, "consent-no-role", regional_pk=regional_pk)


@router.get("/consents/text", response_model=ConsentTextOut)
def get_text(
    purpose: Annotated[str, Query(description="regional-sharing, named-doctor, ...")],
    lang: Annotated[str, Query(description="fr or en")] = "fr",
    doctor_ref: Annotated[str, Query(max_length=128)] = "",
) -> ConsentTextOut:
    """The current text of a consent, to show before recording it (no patient data)."""
    text = consent.consent_text(purpose, lang, doctor_ref.strip())
    return ConsentTextOut(
        purpose=text.purpose,
        doctor_ref=text.doctor_ref,
        version=text.version,
        lang=text.lang,
        text=text.text,
        sha256=text.sha256,
    )


@router.post("/consents", status_code=201, response_model=ConsentOut)
def post_consent(body: ConsentIn, hub: Hub, principal: Caller) -> ConsentOut:
    """Record a decision (appended; the latest is in force) and its audit entry."""
    policy = Policy(hub.settings)
    require_caller(policy, principal)
    with hub.database.session() as session:
        conn = session.connection()
        regional_pk = consent.regional_pk_of(conn, body.patient)
        method, decision = consent_method(conn, policy, principal, regional_pk)
        if decision.allowed:
            row = consent.record_consent(
                conn,
                principal,
                regional_pk,
                purpose=body.purpose,
                status=body.status,
                method=method,
                text_sha256=body.text_sha256,
                doctor_ref=body.doctor_ref if body.purpose == "named-doctor" else "",
            )
            return consent_out(body.patient, row)
    deny(hub.database, principal, Action.ADMIN, decision)


@router.get("/consents", response_model=ConsentsOut)
def get_consents(
    patient: Annotated[str, Query(min_length=1, max_length=64, description="Regional id")],
    hub: Hub,
    principal: Caller,
) -> ConsentsOut:
    """A patient's consents, for the patient, their care team or a regional admin."""
    policy = Policy(hub.settings)
    require_caller(policy, principal)
    with hub.database.reader() as session:
        conn = session.connection()
        regional_pk = consent.regional_pk_of(conn, patient)
        _method, decision = consent_method(conn, policy, principal, regional_pk)
        if decision.allowed:
            history = consent.consent_history(conn, regional_pk)
            current = consent.consents_in_force(conn, regional_pk)
            return ConsentsOut(
                patient=patient,
                in_force=[consent_out(patient, r) for r in current],
                history=[consent_out(patient, r) for r in history],
            )
    deny(hub.database, principal, Action.VIEW, decision)


def now() -> datetime:
    """Naive UTC, as the index stores times."""
    return datetime.now(UTC).replace(tzinfo=None)
