"""The ingest hot path in plain SQL: a new instance, of a series the index holds or not.

Through SQLAlchemy Core each statement costs ~40-60 µs of Python here (compile-cache
look-up, result set-up, connection events); the driver's own call ~4 µs. Every
received instance runs the same few statements, so this module runs them straight on
a pooled DBAPI connection, in one transaction: look the SOP Instance UID up, find
the series (and its study and patient), insert the instance row, and bump the
counters that answer the computed attributes of PS3.4 C.6.1.1.3 / C.6.2.1.3
(Number of Patient/Study/Series Related Instances), exactly as
:func:`pacs_hub.storage.index.add_instance` does. A new series, a new study (every
instance of a one-image radiograph study is the first of its study) and a new
patient with its regional identity link (:mod:`pacs_hub.regional.identity_sql`) are
created here too; what is rarer (an identity that gets link candidates for review,
a replaced blob) stays in :mod:`pacs_hub.storage.index`.

The SQL is portable (SQLite and PostgreSQL); only the parameter marker and the
encoding of timestamps differ, both taken from the SQLAlchemy dialect so that the
rows read back exactly like those written through the ORM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from pacs_hub.dicom.header import InstanceHeader
from pacs_hub.regional.identity_sql import NewIdentity
from pacs_hub.storage.database import Database, insert_returning_id
from pacs_hub.storage.index import KnownInstance, StoredBlob, new_study_row, with_modality
from pacs_hub.storage.models import Instance, Study

_SELECT_INSTANCE = (
    "SELECT id, series_pk, sha256, size_bytes FROM instances WHERE sop_instance_uid = ?"
)
_SELECT_SERIES = (
    "SELECT series.id, series.study_pk, studies.patient_pk FROM series"
    " JOIN studies ON studies.id = series.study_pk WHERE series.series_instance_uid = ?"
)
_INSERT_INSTANCE = (
    "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_pk, instance_number,"
    " transfer_syntax_uid, specific_character_set, rows, columns, number_of_frames,"
    " blob_key, sha256, size_bytes, received_from_ae, received_at, metadata_json)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_STUDY = (
    "SELECT id, patient_pk, modalities_in_study FROM studies WHERE study_instance_uid = ?"
)
_INSERT_SERIES = (
    "INSERT INTO series (series_instance_uid, study_pk, modality, series_number,"
    " series_description, body_part_examined, series_date, series_time, station_name,"
    " num_instances) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0) RETURNING id"
)
_STUDY_NEW_SERIES = (
    "UPDATE studies SET num_series = num_series + 1, modalities_in_study = ? WHERE id = ?"
)
_PATIENT_NEW_SERIES = "UPDATE patients SET num_series = num_series + 1 WHERE id = ?"
_SELECT_PATIENT = "SELECT id FROM patients WHERE patient_id = ? AND issuer_of_patient_id = ?"
_STUDY_COLUMNS, _INSERT_STUDY = insert_returning_id(Study.__table__)
_PATIENT_NEW_STUDY = "UPDATE patients SET num_studies = num_studies + 1 WHERE id = ?"
_BUMP_SERIES = "UPDATE series SET num_instances = num_instances + 1 WHERE id = ?"
_BUMP_STUDY = (
    "UPDATE studies SET num_instances = num_instances + 1, size_bytes = size_bytes + ?,"
    " updated_at = ? WHERE id = ?"
)
_BUMP_PATIENT = "UPDATE patients SET num_instances = num_instances + 1 WHERE id = ?"


class IndexHotPath:
    """The hot-path statements, prepared for one database's driver."""

    def __init__(self, database: Database) -> None:
        dialect = database.engine.dialect
        self._database = database
        self._sqlite = database.is_sqlite
        sql = database.driver_sql
        self._select_instance = sql(_SELECT_INSTANCE)
        self._select_series = sql(_SELECT_SERIES)
        self._insert_instance = sql(_INSERT_INSTANCE)
        self._bump_series = sql(_BUMP_SERIES)
        self._bump_study = sql(_BUMP_STUDY)
        self._bump_patient = sql(_BUMP_PATIENT)
        # The study row is locked (a no-op on SQLite, whose writers are serialised) so that
        # two new series of one study do not both rewrite Modalities in Study from one value.
        lock = "" if database.is_sqlite else " FOR UPDATE"
        self._select_study = sql(_SELECT_STUDY) + lock
        self._insert_series = sql(_INSERT_SERIES)
        self._study_new_series = sql(_STUDY_NEW_SERIES)
        self._patient_new_series = sql(_PATIENT_NEW_SERIES)
        self._select_patient = sql(_SELECT_PATIENT)
        self._insert_study = sql(_INSERT_STUDY)
        self._patient_new_study = sql(_PATIENT_NEW_STUDY)
        self._new_identity = NewIdentity(database)
        # SQLite keeps a DateTime as text in SQLAlchemy's own format; PostgreSQL takes it as is.
        process = Instance.__table__.c.received_at.type.bind_processor(dialect)
        self._timestamp: Callable[[datetime], Any] = process or (lambda value: value)
        dbapi = dialect.dbapi
        #: The driver's exceptions for a constraint hit and for a locked or lost index.
        self.integrity_error: type[Exception] = dbapi.IntegrityError  # type: ignore[union-attr]
        self.operational_error: type[Exception] = dbapi.OperationalError  # type: ignore[union-attr]

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A DBAPI cursor in a write transaction, committed when the block ends normally.

        On SQLite the transaction is ``BEGIN IMMEDIATE``, as for every writer of the
        index (:mod:`pacs_hub.storage.database`).
        """
        with self._database.kept_connection() as raw:
            cursor = raw.cursor()
            if self._sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            raw.commit()

    def lookup(self, sop_instance_uid: str) -> KnownInstance | None:
        """The indexed instance with this SOP Instance UID, read outside any write lock."""
        with self._database.kept_connection() as raw:
            known = self.known(raw.cursor(), sop_instance_uid)
            if not self._sqlite:
                raw.rollback()  # end PostgreSQL's read transaction (SQLite's is per statement)
            return known

    def known(self, cursor: Any, sop_instance_uid: str) -> KnownInstance | None:
        """The indexed instance with this SOP Instance UID, if any."""
        cursor.execute(self._select_instance, (sop_instance_uid,))
        row = cursor.fetchone()
        return KnownInstance(row[0], row[1], row[2], row[3]) if row else None

    def add_instance(
        self,
        cursor: Any,
        h: InstanceHeader,
        blob: StoredBlob,
        received_from_ae: str,
        now: datetime,
        metadata: bytes | None,
        establishment_pk: int | None = None,
    ) -> bool:
        """Index a new instance, creating its series, study and patient as needed; False
        (nothing written) when a new patient's identity needs the general path.
        ``establishment_pk`` is recorded on a new study, as
        :func:`pacs_hub.storage.index.add_instance` does."""
        when = self._timestamp(now)
        cursor.execute(self._select_series, (h.series_instance_uid,))
        row = cursor.fetchone() or self._new_series(cursor, h, when, establishment_pk)
        if row is None:
            return False
        series_pk, study_pk, patient_pk = row
        cursor.execute(
            self._insert_instance,
            (
                h.sop_instance_uid,
                h.sop_class_uid,
                series_pk,
                h.instance_number,
                h.transfer_syntax_uid,
                h.specific_character_set,
                h.rows,
                h.columns,
                h.number_of_frames,
                blob.key,
                blob.sha256,
                blob.size,
                received_from_ae,
                when,
                metadata,
            ),
        )
        cursor.execute(self._bump_series, (series_pk,))
        cursor.execute(self._bump_study, (blob.size, when, study_pk))
        cursor.execute(self._bump_patient, (patient_pk,))
        return True

    def _new_series(
        self, cursor: Any, h: InstanceHeader, when: Any, establishment_pk: int | None
    ) -> tuple[int, int, int] | None:
        """Create the series of ``h`` (and its study when new): (series, study, patient)
        pks; None, with nothing written, as for :meth:`_new_study`."""
        cursor.execute(self._select_study, (h.study_instance_uid,))
        study = cursor.fetchone() or self._new_study(cursor, h, when, establishment_pk)
        if study is None:
            return None
        study_pk, patient_pk, modalities = study
        cursor.execute(
            self._insert_series,
            (
                h.series_instance_uid,
                study_pk,
                h.modality,
                h.series_number,
                h.series_description,
                h.body_part_examined,
                h.series_date,
                h.series_time,
                h.station_name,
            ),
        )
        series_pk = cursor.fetchone()[0]
        cursor.execute(self._study_new_series, (with_modality(modalities, h.modality), study_pk))
        cursor.execute(self._patient_new_series, (patient_pk,))
        return series_pk, study_pk, patient_pk

    def _new_study(
        self, cursor: Any, h: InstanceHeader, when: Any, establishment_pk: int | None
    ) -> tuple[int, int, str] | None:
        """Create the study of ``h`` (and its patient when new): (study pk, patient pk,
        Modalities in Study); None, with nothing written, when a new patient's identity
        needs the general path (:class:`~pacs_hub.regional.identity_sql.NewIdentity`)."""
        cursor.execute(self._select_patient, (h.patient_id, h.issuer_of_patient_id))
        patient = cursor.fetchone()
        patient_pk = patient[0] if patient else self._new_identity.create(cursor, h, when)
        if patient_pk is None:
            return None
        row = new_study_row(h, patient_pk, establishment_pk, when)
        cursor.execute(self._insert_study, tuple(row[column] for column in _STUDY_COLUMNS))
        study_pk = cursor.fetchone()[0]
        cursor.execute(self._patient_new_study, (patient_pk,))
        return study_pk, patient_pk, ""
