"""Tables of the trust layer (revision 0004): users, consents, share grants, audit trail.

Kept apart from the DICOM index (:mod:`pacs_hub.storage.models`) but on the same
declarative base, so one migration chain and one transaction cover both: an access
and its audit row commit together.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pacs_hub.storage.models import Base


class User(Base):
    """A person or service account known to the hub (local or from an OIDC provider)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str] = mapped_column(String(256), default="")
    """'' for users who authenticate only through an external OIDC provider."""
    roles: Mapped[str] = mapped_column(String(128), default="")
    """Comma-separated :class:`pacs_hub.trust.principal.Role` values."""
    rpps: Mapped[str] = mapped_column(String(32), default="", index=True)
    """National professional id (RPPS; IDNPS = '8' + RPPS) of a professional."""
    email: Mapped[str] = mapped_column(String(128), default="", index=True)
    external_subject: Mapped[str] = mapped_column(String(256), default="", index=True)
    """'issuer|sub' of a user mapped from an external OIDC provider."""
    regional_patient_pk: Mapped[int | None] = mapped_column(
        ForeignKey("regional_patients.id"), nullable=True
    )
    """For the patient role: the regional patient this account is."""
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class UserEstablishment(Base):
    """A user works for an establishment (its staff see its studies)."""

    __tablename__ = "user_establishments"
    __table_args__ = (UniqueConstraint("user_pk", "establishment_pk"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    establishment_pk: Mapped[int] = mapped_column(ForeignKey("establishments.id"), index=True)


class Consent(Base):
    """One recorded consent decision of a regional patient for one purpose (CSP L1110-4).

    Rows are never updated: the latest row per (patient, purpose, doctor) is in force.
    """

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    regional_pk: Mapped[int] = mapped_column(ForeignKey("regional_patients.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    """regional-sharing, named-doctor, national-record or research."""
    doctor_ref: Mapped[str] = mapped_column(String(128), default="")
    """For named-doctor: the doctor's RPPS-like id or e-mail."""
    status: Mapped[str] = mapped_column(String(16))
    """granted, refused or withdrawn."""
    method: Mapped[str] = mapped_column(String(16))
    """in-person (recorded by a professional) or patient-link (by the patient)."""
    recorded_by: Mapped[str] = mapped_column(String(128))
    proof_sha256: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the exact text shown to the patient."""
    at: Mapped[datetime] = mapped_column(DateTime, index=True)


class ShareGrant(Base):
    """A capability to view some studies, given to a community doctor or by link."""

    __tablename__ = "share_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 of the link's token (the token itself is never stored)."""
    created_by_user_pk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(128), default="")
    """RPPS-like id or e-mail of the named doctor; '' for a plain link."""
    regional_pk: Mapped[int] = mapped_column(ForeignKey("regional_patients.id"), index=True)
    study_uids: Mapped[str] = mapped_column(Text, default="[]")
    """JSON list of Study Instance UIDs; '[]' with scope 'patient' = all the patient's."""
    scope: Mapped[str] = mapped_column(String(16), default="study")
    """study (the listed studies) or patient (every study of the regional patient)."""
    purpose: Mapped[str] = mapped_column(String(32), default="named-doctor")
    one_time_code_sha256: Mapped[str] = mapped_column(String(64), default="")
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class AuditEvent(Base):
    """One entry of the append-only, hash-chained audit trail.

    ``hash`` = SHA-256 over the previous entry's hash and this entry's canonical
    content (see :mod:`pacs_hub.trust.audit`); editing or deleting any row breaks
    the chain from there on.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor_kind: Mapped[str] = mapped_column(String(16))
    """user, node, share, patient, system or anonymous."""
    actor_id: Mapped[str] = mapped_column(String(256), index=True)
    action: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(32), default="")
    outcome: Mapped[str] = mapped_column(String(8))
    """allow or deny (decisions), ok or failed (other events)."""
    rule: Mapped[str] = mapped_column(String(64), default="")
    regional_pk: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    reason: Mapped[str] = mapped_column(String(256), default="")
    """Mandatory for break-glass."""
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the last entry's id and hash, locked while appending (serialises writers)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


class PendingGrant(Base):
    """A short-lived, single-use secret of a sign-in in progress (revision 0005): an
    authorization code of the embedded issuer, or the state of a web sign-in.

    Kept in the index, not in a process's memory, so that every HTTP process of the
    hub can take what another one handed out. Only the SHA-256 of the secret is
    stored: whoever reads the table cannot use a row.
    """

    __tablename__ = "pending_grants"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    """code (authorization code) or login (web sign-in state)."""
    payload: Mapped[str] = mapped_column(Text)
    """JSON object: what the secret stands for."""
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
