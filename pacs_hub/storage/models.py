"""The index schema: the DICOM information model of PS3.3 A.1.2 as four tables.

Patient -> Study -> Series -> Instance, with the attributes C-FIND (PS3.4 C.6)
and QIDO-RS (PS3.18 10.6) match and return, plus counters for the computed
attributes (Number of ... Related ..., Modalities in Study) kept up to date by ingest.
Strings are stored decoded (Unicode); ``*_match`` columns hold the normalised form
used for matching (never for answers).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """Declarative base of the index."""


class Patient(Base):
    """A patient as known by one Patient ID within one issuer (PS3.3 C.7.1.1)."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(330), default="")
    patient_name_match: Mapped[str] = mapped_column(String(330), default="", index=True)
    patient_name_fuzzy: Mapped[str] = mapped_column(String(330), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    num_studies: Mapped[int] = mapped_column(Integer, default=0)
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    # Identity traits and the regional cross-reference (revision 0003, see france.md 3-4).
    ins: Mapped[str] = mapped_column(String(64), default="", index=True)
    """INS matricule (NIR/NIA) when the instance carried a qualified one, else ''."""
    ins_oid: Mapped[str] = mapped_column(String(64), default="")
    """1.2.250.1.213.1.4.8 (NIR), .9 (NIA), .10 (test), .11 (demo)."""
    birth_name: Mapped[str] = mapped_column(String(64), default="")
    given_names: Mapped[str] = mapped_column(String(128), default="")
    birth_place: Mapped[str] = mapped_column(String(16), default="")
    regional_patient_pk: Mapped[int | None] = mapped_column(
        ForeignKey("regional_patients.id"), nullable=True, index=True
    )
    link_method: Mapped[str] = mapped_column(String(16), default="")
    """How the link was made: ins, traits, manual, new (a regional patient of its own)."""

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    """A study (PS3.3 C.7.2.1), with the computed attributes of PS3.4 C.6.1.1.3."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    establishment_pk: Mapped[int | None] = mapped_column(
        ForeignKey("establishments.id"), nullable=True, index=True
    )
    """The establishment whose node sent the study's first instance (access policy)."""
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(330), default="")
    referring_physician_name_match: Mapped[str] = mapped_column(String(330), default="")
    referring_physician_name_fuzzy: Mapped[str] = mapped_column(String(330), default="")
    modalities_in_study: Mapped[str] = mapped_column(String(160), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, index=True)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series (PS3.3 C.7.3.1)."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[str] = mapped_column(String(12), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    series_date: Mapped[str] = mapped_column(String(8), default="")
    series_time: Mapped[str] = mapped_column(String(16), default="")
    station_name: Mapped[str] = mapped_column(String(16), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """A stored SOP instance and where its immutable blob lives (PS3.3 C.12.1)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    instance_number: Mapped[str] = mapped_column(String(12), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    specific_character_set: Mapped[str] = mapped_column(String(160), default="")
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    blob_key: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_from_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime)
    # DICOM JSON (PS3.18 F.2) made at ingest, zlib-compressed; see pacs_hub.dicom.dicomjson.
    metadata_json: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)

    series: Mapped[Series] = relationship(back_populates="instances")


class Node(Base):
    """A remote DICOM application entity the hub knows (PS3.8 7.1: AE title, host, port)."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    establishment: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # Regional interconnection (revision 0003): who owns the node and how it is doing.
    establishment_pk: Mapped[int | None] = mapped_column(
        ForeignKey("establishments.id"), nullable=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16), default="pacs")
    """pacs (query/retrieve peer), modality, workstation or destination."""
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    health_status: Mapped[str] = mapped_column(String(8), default="unknown")
    """unknown, up or down (C-ECHO on a schedule)."""
    health_checked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    down_since: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Per-node permissions (revision 0004, access policy): what the node may ask for.
    can_store: Mapped[bool] = mapped_column(Boolean, default=True)
    can_query: Mapped[bool] = mapped_column(Boolean, default=True)
    can_retrieve: Mapped[bool] = mapped_column(Boolean, default=True)


class Establishment(Base):
    """A hospital or clinic of the region: it owns nodes and issues local Patient IDs."""

    __tablename__ = "establishments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    """FINESS-like identifier (9 characters in France)."""
    name: Mapped[str] = mapped_column(String(128))
    default_issuer: Mapped[str] = mapped_column(String(64), default="")
    """Issuer of Patient ID given to instances of its nodes that carry none."""
    created_at: Mapped[datetime] = mapped_column(DateTime)
    retention_years: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Years its records are kept after the last contact (revision 0006); None: the
    hub's ``retention_years`` (:mod:`pacs_hub.archive.retention_rules`)."""


class EstablishmentIssuer(Base):
    """An issuer of Patient ID (PS3.3 C.7.1.1) an establishment uses (one owner each)."""

    __tablename__ = "establishment_issuers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    establishment_pk: Mapped[int] = mapped_column(ForeignKey("establishments.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(64), unique=True)


class RegionalPatient(Base):
    """One person of the region, to whom local identities (``patients`` rows) link."""

    __tablename__ = "regional_patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    regional_id: Mapped[str] = mapped_column(String(64), unique=True)
    ins: Mapped[str] = mapped_column(String(64), default="", index=True)
    ins_oid: Mapped[str] = mapped_column(String(64), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    """False once merged into another regional patient."""
    merged_into_pk: Mapped[int | None] = mapped_column(
        ForeignKey("regional_patients.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime)
    death_date: Mapped[str] = mapped_column(String(8), default="")
    """Date of death (DA) when an administrator recorded it (revision 0006): the
    retention of the patient's records (:mod:`pacs_hub.archive.retention_rules`)."""


class IdentityEvent(Base):
    """A recorded change of the cross-reference (link, unlink, merge, unmerge).

    ``detail`` is JSON holding what is needed to reverse it exactly (for a merge:
    every local identity moved and the regional patient it was linked to before).
    """

    __tablename__ = "identity_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    reverted_by_pk: Mapped[int | None] = mapped_column(
        ForeignKey("identity_events.id"), nullable=True
    )


class LinkCandidate(Base):
    """A local identity that may be a regional patient (strict traits), for human review."""

    __tablename__ = "link_candidates"
    __table_args__ = (UniqueConstraint("patient_pk", "regional_pk"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    regional_pk: Mapped[int] = mapped_column(ForeignKey("regional_patients.id"), index=True)
    reason: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """pending, accepted or rejected."""
    created_at: Mapped[datetime] = mapped_column(DateTime)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class RetrieveJob(Base):
    """Pulling a study from an establishment's PACS into the hub (on demand or prefetch)."""

    __tablename__ = "retrieve_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    source_node_pk: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    kind: Mapped[str] = mapped_column(String(16), default="on-demand")
    """on-demand or prefetch."""
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    """queued, running, done or failed."""
    expected: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class RoutingRule(Base):
    """Forward arriving studies that match ``conditions`` (JSON) to a destination node."""

    __tablename__ = "routing_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    conditions: Mapped[str] = mapped_column(Text, default="{}")
    """JSON object: establishment, modality, body_part, station (all optional, AND-ed)."""
    destination_node_pk: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class RoutingItem(Base):
    """One study to forward by one rule: the persistent routing queue."""

    __tablename__ = "routing_queue"
    __table_args__ = (UniqueConstraint("rule_pk", "study_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_pk: Mapped[int] = mapped_column(ForeignKey("routing_rules.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    destination_node_pk: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    """queued, sending, sent or failed (after the last retry)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    last_error: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


Index("ix_studies_patient_date", Study.patient_pk, Study.study_date)
Index("ix_patients_birth_date_sex", Patient.patient_birth_date, Patient.patient_sex)
