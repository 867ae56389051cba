"""Writing to the index: one instance becomes rows and counter updates in one transaction.

The counters kept here answer the computed attributes of PS3.4 C.6.1.1.3 /
C.6.2.1.3 (Number of Patient/Study/Series Related ..., Modalities in Study)
without a GROUP BY at query time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs_hub.dicom.header import InstanceHeader
from pacs_hub.dicom.matching import normalise_name
from pacs_hub.storage.models import Instance, Patient, Series, Study


class Outcome(StrEnum):
    """What indexing one instance did."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing to do
    CONFLICT = "conflict"  # same SOP Instance UID, other bytes, kept the first
    REPLACED = "replaced"  # same SOP Instance UID, other bytes, index points at the new


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """Where and what the blob of an instance is."""

    key: str
    sha256: str
    size: int


def existing_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    """The indexed instance with this SOP Instance UID, if any."""
    return session.scalars(
        select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
    ).one_or_none()


def _patient(session: Session, h: InstanceHeader) -> Patient:
    patient = session.scalars(
        select(Patient).where(
            Patient.patient_id == h.patient_id,
            Patient.issuer_of_patient_id == h.issuer_of_patient_id,
        )
    ).one_or_none()
    if patient is None:
        patient = Patient(
            patient_id=h.patient_id,
            issuer_of_patient_id=h.issuer_of_patient_id,
            patient_name=h.patient_name,
            patient_name_match=normalise_name(h.patient_name),
            patient_birth_date=h.patient_birth_date,
            patient_sex=h.patient_sex,
            num_studies=0,
            num_series=0,
            num_instances=0,
        )
        session.add(patient)
        session.flush()
    return patient


def _study(session: Session, h: InstanceHeader, now: datetime) -> tuple[Study, bool]:
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == h.study_instance_uid)
    ).one_or_none()
    if study is not None:
        return study, False
    patient = _patient(session, h)
    study = Study(
        study_instance_uid=h.study_instance_uid,
        patient_pk=patient.id,
        study_date=h.study_date,
        study_time=h.study_time,
        accession_number=h.accession_number,
        study_id=h.study_id,
        study_description=h.study_description,
        referring_physician_name=h.referring_physician_name,
        referring_physician_name_match=normalise_name(h.referring_physician_name),
        modalities_in_study="",
        num_series=0,
        num_instances=0,
        size_bytes=0,
        created_at=now,
        updated_at=now,
    )
    session.add(study)
    patient.num_studies += 1
    session.flush()
    return study, True


def _series(session: Session, h: InstanceHeader, study: Study) -> Series:
    series = session.scalars(
        select(Series).where(Series.series_instance_uid == h.series_instance_uid)
    ).one_or_none()
    if series is not None:
        return series
    series = Series(
        series_instance_uid=h.series_instance_uid,
        study_pk=study.id,
        modality=h.modality,
        series_number=h.series_number,
        series_description=h.series_description,
        body_part_examined=h.body_part_examined,
        series_date=h.series_date,
        series_time=h.series_time,
        station_name=h.station_name,
        num_instances=0,
    )
    session.add(series)
    study.num_series += 1
    study.patient.num_series += 1
    modalities = [m for m in study.modalities_in_study.split("\\") if m]
    if h.modality and h.modality not in modalities:
        study.modalities_in_study = "\\".join(sorted([*modalities, h.modality]))
    session.flush()
    return series


def add_instance(
    session: Session,
    h: InstanceHeader,
    blob: StoredBlob,
    received_from_ae: str,
    now: datetime,
) -> None:
    """Index a new instance (its SOP Instance UID must not be indexed yet)."""
    study, _ = _study(session, h, now)
    series = _series(session, h, study)
    session.add(
        Instance(
            sop_instance_uid=h.sop_instance_uid,
            sop_class_uid=h.sop_class_uid,
            series_pk=series.id,
            instance_number=h.instance_number,
            transfer_syntax_uid=h.transfer_syntax_uid,
            specific_character_set=h.specific_character_set,
            rows=h.rows,
            columns=h.columns,
            number_of_frames=h.number_of_frames,
            blob_key=blob.key,
            sha256=blob.sha256,
            size_bytes=blob.size,
            received_from_ae=received_from_ae,
            received_at=now,
        )
    )
    series.num_instances += 1
    study.num_instances += 1
    study.size_bytes += blob.size
    study.updated_at = now
    study.patient.num_instances += 1


def replace_blob(
    session: Session, instance: Instance, blob: StoredBlob, received_from_ae: str, now: datetime
) -> None:
    """Point an indexed instance at a new blob (duplicate policy ``replace``)."""
    study = instance.series.study
    study.size_bytes += blob.size - instance.size_bytes
    study.updated_at = now
    instance.blob_key = blob.key
    instance.sha256 = blob.sha256
    instance.size_bytes = blob.size
    instance.received_from_ae = received_from_ae
    instance.received_at = now
