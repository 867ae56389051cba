"""Tables of retention and destruction (revision 0006): legal holds, destructions.

A *destruction* is the elimination of studies whose retention ended (CSP R. 1112-7):
proposed with the list of its studies, signed by the establishment's director and
its medical information doctor (DIM) and, for a public establishment, visaed by the
departmental archives (Code du patrimoine L. 212-2), then executed. Its rows, with
the record file written when it is executed (:mod:`pacs_hub.archive.destruction`),
are the record that the destroyed studies existed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from pacs_hub.storage.models import Base


class LegalHold(Base):
    """A claim on medical liability suspending the retention of a study or a patient."""

    __tablename__ = "legal_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    regional_pk: Mapped[int | None] = mapped_column(
        ForeignKey("regional_patients.id"), nullable=True, index=True
    )
    """The patient held (every study of every linked identity), or None for one study."""
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    reason: Mapped[str] = mapped_column(String(256))
    placed_by: Mapped[str] = mapped_column(String(128))
    placed_at: Mapped[datetime] = mapped_column(DateTime)
    released_by: Mapped[str] = mapped_column(String(128), default="")
    released_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Destruction(Base):
    """One elimination: its studies, signatures and state.

    States: ``proposed`` (signatures being gathered), ``approved``, ``executing``,
    ``done``, ``cancelled``.
    """

    __tablename__ = "destructions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    establishment_pk: Mapped[int | None] = mapped_column(
        ForeignKey("establishments.id"), nullable=True, index=True
    )
    state: Mapped[str] = mapped_column(String(16), index=True)
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    """A public establishment's records are public archives: the archives' visa is due."""
    as_of: Mapped[str] = mapped_column(String(8))
    """The day (DA) the studies' retention was computed for."""
    note: Mapped[str] = mapped_column(String(256), default="")
    proposed_by: Mapped[str] = mapped_column(String(128))
    proposed_at: Mapped[datetime] = mapped_column(DateTime)
    executed_by: Mapped[str] = mapped_column(String(128), default="")
    executed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    cancelled_by: Mapped[str] = mapped_column(String(128), default="")
    cancel_reason: Mapped[str] = mapped_column(String(256), default="")


class DestructionStudy(Base):
    """A study listed for destruction, as it was when listed.

    States: ``listed``, ``erasing`` (its index rows deleted, its blobs being erased),
    ``destroyed``, ``kept`` (no longer due when executed: ``kept_reason`` says why).
    """

    __tablename__ = "destruction_studies"
    __table_args__ = (UniqueConstraint("destruction_pk", "study_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    destruction_pk: Mapped[int] = mapped_column(ForeignKey("destructions.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    regional_id: Mapped[str] = mapped_column(String(64), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    last_contact: Mapped[str] = mapped_column(String(8))
    retention_end: Mapped[str] = mapped_column(String(8))
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16), default="listed")
    kept_reason: Mapped[str] = mapped_column(String(256), default="")
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class DestructionSignature(Base):
    """A signature of a destruction, in one capacity: ``director``, ``dim`` or
    ``archives`` (the archives' visa, with its reference)."""

    __tablename__ = "destruction_signatures"
    __table_args__ = (UniqueConstraint("destruction_pk", "capacity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    destruction_pk: Mapped[int] = mapped_column(ForeignKey("destructions.id"), index=True)
    capacity: Mapped[str] = mapped_column(String(16))
    signer: Mapped[str] = mapped_column(String(128))
    reference: Mapped[str] = mapped_column(String(128), default="")
    signed_at: Mapped[datetime] = mapped_column(DateTime)


def destroyed_in(conn: Connection, study_uid: str) -> int | None:
    """The destruction that destroyed (or is destroying) ``study_uid``, if one did."""
    query = select(DestructionStudy.destruction_pk).where(
        DestructionStudy.study_instance_uid == study_uid,
        DestructionStudy.state.in_(("erasing", "destroyed")),
    )
    found = conn.execute(query.limit(1)).scalar()
    return int(found) if found is not None else None
