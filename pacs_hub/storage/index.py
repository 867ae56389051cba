"""Writing to the index: one instance becomes rows and counter updates in one transaction.

The counters kept here answer the computed attributes of PS3.4 C.6.1.1.3 /
C.6.2.1.3 (Number of Patient/Study/Series Related ..., Modalities in Study)
without a GROUP BY at query time. The hot path (a new instance of a known series)
is five SQL statements, written with SQLAlchemy Core: the ORM's unit of work costs
more than the disk here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from pacs_hub.dicom.header import InstanceHeader
from pacs_hub.dicom.matching import fuzzy_name, normalise_name
from pacs_hub.regional.identity import link_new_identity
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


@dataclass(frozen=True, slots=True)
class KnownInstance:
    """The index's record of an already stored instance."""

    id: int
    series_pk: int
    sha256: str
    size: int


# Statements built once: building a Core statement costs more than running it.
_SELECT_INSTANCE = select(
    Instance.id, Instance.series_pk, Instance.sha256, Instance.size_bytes
).where(Instance.sop_instance_uid == bindparam("uid"))
_SELECT_SERIES = (
    select(Series.id, Series.study_pk, Study.patient_pk)
    .join(Study, Study.id == Series.study_pk)
    .where(Series.series_instance_uid == bindparam("uid"))
)
_INSERT_INSTANCE = insert(Instance)
_BUMP_SERIES = (
    update(Series)
    .where(Series.id == bindparam("pk"))
    .values(num_instances=Series.num_instances + 1)
)
_BUMP_STUDY = (
    update(Study)
    .where(Study.id == bindparam("pk"))
    .values(
        num_instances=Study.num_instances + 1,
        size_bytes=Study.size_bytes + bindparam("size"),
        updated_at=bindparam("now"),
    )
)
_BUMP_PATIENT = (
    update(Patient)
    .where(Patient.id == bindparam("pk"))
    .values(num_instances=Patient.num_instances + 1)
)


def existing_instance(conn: Connection, sop_instance_uid: str) -> KnownInstance | None:
    """The indexed instance with this SOP Instance UID, if any."""
    row = conn.execute(_SELECT_INSTANCE, {"uid": sop_instance_uid}).first()
    return KnownInstance(row[0], row[1], row[2], row[3]) if row else None


_SELECT_PATIENT = select(Patient.id).where(
    Patient.patient_id == bindparam("patient_id"),
    Patient.issuer_of_patient_id == bindparam("issuer"),
)
_INSERT_PATIENT = insert(Patient).returning(Patient.id)
_INSERT_STUDY = insert(Study).returning(Study.id)
_INSERT_SERIES = insert(Series).returning(Series.id)
_SELECT_STUDY_FOR_UPDATE = (
    select(Study.id, Study.patient_pk, Study.modalities_in_study)
    .where(Study.study_instance_uid == bindparam("uid"))
    .with_for_update()
)
_STUDY_NEW_SERIES = (
    update(Study)
    .where(Study.id == bindparam("pk"))
    .values(num_series=Study.num_series + 1, modalities_in_study=bindparam("modalities"))
)
_PATIENT_NEW_STUDY = (
    update(Patient).where(Patient.id == bindparam("pk")).values(num_studies=Patient.num_studies + 1)
)
_PATIENT_NEW_SERIES = (
    update(Patient).where(Patient.id == bindparam("pk")).values(num_series=Patient.num_series + 1)
)


def with_modality(modalities: str, modality: str) -> str:
    """Modalities in Study (0008,0061), sorted, once a series of ``modality`` is added."""
    listed = [m for m in modalities.split("\\") if m]
    if modality and modality not in listed:
        listed = sorted([*listed, modality])
    return "\\".join(listed)


def _patient_pk(conn: Connection, h: InstanceHeader) -> int:
    pk = conn.execute(
        _SELECT_PATIENT, {"patient_id": h.patient_id, "issuer": h.issuer_of_patient_id}
    ).scalar()
    if pk is not None:
        return int(pk)
    pk = int(conn.execute(_INSERT_PATIENT, new_patient_row(h)).scalar_one())
    link_new_identity(conn, pk)  # same transaction: a local identity is never left unlinked
    return pk


def new_patient_row(
    h: InstanceHeader, regional_patient_pk: int | None = None, link_method: str = ""
) -> dict[str, Any]:
    """The ``patients`` row of a new local identity, counters at zero (both ingest paths
    write it: here, linked afterwards by :func:`link_new_identity`, and
    :mod:`pacs_hub.regional.identity_sql`, linked as it is written)."""
    return {
        "patient_id": h.patient_id,
        "issuer_of_patient_id": h.issuer_of_patient_id,
        "patient_name": h.patient_name,
        "patient_name_match": normalise_name(h.patient_name),
        "patient_name_fuzzy": fuzzy_name(h.patient_name),
        "patient_birth_date": h.patient_birth_date,
        "patient_sex": h.patient_sex,
        "num_studies": 0,
        "num_series": 0,
        "num_instances": 0,
        "ins": h.ins,
        "ins_oid": h.ins_oid,
        "birth_name": h.birth_name,
        "given_names": h.given_names,
        "birth_place": h.birth_place,
        "regional_patient_pk": regional_patient_pk,
        "link_method": link_method,
    }


def new_study_row(
    h: InstanceHeader, patient_pk: int, establishment_pk: int | None, now: Any
) -> dict[str, Any]:
    """The ``studies`` row of a new study, counters at zero (both ingest paths write
    it: here and :mod:`pacs_hub.storage.index_hot_path`); ``now`` as the driver takes it."""
    return {
        "study_instance_uid": h.study_instance_uid,
        "patient_pk": patient_pk,
        "establishment_pk": establishment_pk,
        "study_date": h.study_date,
        "study_time": h.study_time,
        "accession_number": h.accession_number,
        "study_id": h.study_id,
        "study_description": h.study_description,
        "referring_physician_name": h.referring_physician_name,
        "referring_physician_name_match": normalise_name(h.referring_physician_name),
        "referring_physician_name_fuzzy": fuzzy_name(h.referring_physician_name),
        "modalities_in_study": "",
        "num_series": 0,
        "num_instances": 0,
        "size_bytes": 0,
        "created_at": now,
        "updated_at": now,
    }


def _new_study(
    conn: Connection, h: InstanceHeader, now: datetime, establishment_pk: int | None
) -> tuple[int, int, str]:
    patient_pk = _patient_pk(conn, h)
    study_pk = conn.execute(
        _INSERT_STUDY, new_study_row(h, patient_pk, establishment_pk, now)
    ).scalar_one()
    conn.execute(_PATIENT_NEW_STUDY, {"pk": patient_pk})
    return int(study_pk), patient_pk, ""


def _study(
    conn: Connection, h: InstanceHeader, now: datetime, establishment_pk: int | None
) -> tuple[int, int, str]:
    """(study pk, patient pk, Modalities in Study) of the instance's study, created if new.

    Called only for a new series; the row is locked (``FOR UPDATE``, a no-op on
    SQLite, whose writers are serialised) so that two new series of the same study
    do not both rewrite Modalities in Study from the same old value.
    """
    row = conn.execute(_SELECT_STUDY_FOR_UPDATE, {"uid": h.study_instance_uid}).first()
    if row is None:
        return _new_study(conn, h, now, establishment_pk)
    return int(row[0]), int(row[1]), str(row[2])


def _new_series(
    conn: Connection, h: InstanceHeader, now: datetime, establishment_pk: int | None
) -> tuple[int, int, int]:
    study_pk, patient_pk, modalities = _study(conn, h, now, establishment_pk)
    series_pk = conn.execute(
        _INSERT_SERIES,
        {
            "series_instance_uid": h.series_instance_uid,
            "study_pk": study_pk,
            "modality": h.modality,
            "series_number": h.series_number,
            "series_description": h.series_description,
            "body_part_examined": h.body_part_examined,
            "series_date": h.series_date,
            "series_time": h.series_time,
            "station_name": h.station_name,
            "num_instances": 0,
        },
    ).scalar_one()
    conn.execute(
        _STUDY_NEW_SERIES, {"pk": study_pk, "modalities": with_modality(modalities, h.modality)}
    )
    conn.execute(_PATIENT_NEW_SERIES, {"pk": patient_pk})
    return int(series_pk), study_pk, patient_pk


def _series(
    conn: Connection, h: InstanceHeader, now: datetime, establishment_pk: int | None
) -> tuple[int, int, int]:
    """(series pk, study pk, patient pk) of the instance's series, created if new."""
    row = conn.execute(_SELECT_SERIES, {"uid": h.series_instance_uid}).first()
    if row is None:
        return _new_series(conn, h, now, establishment_pk)
    return int(row[0]), int(row[1]), int(row[2])


def add_instance(
    conn: Connection,
    h: InstanceHeader,
    blob: StoredBlob,
    received_from_ae: str,
    now: datetime,
    metadata: bytes | None = None,
    establishment_pk: int | None = None,
) -> None:
    """Index a new instance (its SOP Instance UID must not be indexed yet).

    ``metadata`` is the stored DICOM JSON of :mod:`pacs_hub.dicom.dicomjson`;
    ``establishment_pk`` the sending node's establishment, recorded on a new study.
    """
    series_pk, study_pk, patient_pk = _series(conn, h, now, establishment_pk)
    conn.execute(
        _INSERT_INSTANCE,
        {
            "sop_instance_uid": h.sop_instance_uid,
            "sop_class_uid": h.sop_class_uid,
            "series_pk": series_pk,
            "instance_number": h.instance_number,
            "transfer_syntax_uid": h.transfer_syntax_uid,
            "specific_character_set": h.specific_character_set,
            "rows": h.rows,
            "columns": h.columns,
            "number_of_frames": h.number_of_frames,
            "blob_key": blob.key,
            "sha256": blob.sha256,
            "size_bytes": blob.size,
            "received_from_ae": received_from_ae,
            "received_at": now,
            "metadata_json": metadata,
        },
    )
    conn.execute(_BUMP_SERIES, {"pk": series_pk})
    conn.execute(_BUMP_STUDY, {"pk": study_pk, "size": blob.size, "now": now})
    conn.execute(_BUMP_PATIENT, {"pk": patient_pk})


def replace_blob(
    conn: Connection,
    known: KnownInstance,
    blob: StoredBlob,
    received_from_ae: str,
    now: datetime,
    metadata: bytes | None = None,
) -> None:
    """Point an indexed instance at a new blob (duplicate policy ``replace``)."""
    study_pk = select(Series.study_pk).where(Series.id == known.series_pk).scalar_subquery()
    conn.execute(
        update(Study)
        .where(Study.id == study_pk)
        .values(size_bytes=Study.size_bytes + blob.size - known.size, updated_at=now)
    )
    conn.execute(
        update(Instance)
        .where(Instance.id == known.id)
        .values(
            blob_key=blob.key,
            sha256=blob.sha256,
            size_bytes=blob.size,
            received_from_ae=received_from_ae,
            received_at=now,
            metadata_json=metadata,
        )
    )
