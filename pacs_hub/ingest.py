"""The one path every instance takes: validate -> write blob -> index -> acknowledge.

C-STORE, STOW-RS, import, replication and restore all call :meth:`Ingestor.ingest`.
Durable before acknowledged (ARCHITECTURE.md invariant 2): the blob is synced (appended
to a pack file, or a file of its own renamed in), then the index row naming it is
committed, and only then does ``ingest`` return.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy.exc import IntegrityError, OperationalError

from pacs_hub.config import DuplicatePolicy
from pacs_hub.dicom import dicomjson
from pacs_hub.dicom.header import InstanceHeader, parse_instance
from pacs_hub.errors import DuplicateConflict, IndexUnavailable
from pacs_hub.regional.nodes import NodeDirectory
from pacs_hub.storage.blobs import BlobStore, sha256_file, sha256_hex
from pacs_hub.storage.database import Database
from pacs_hub.storage.index import (
    Outcome,
    StoredBlob,
    add_instance,
    existing_instance,
    replace_blob,
)
from pacs_hub.storage.index_hot_path import IndexHotPath

LOGGER = logging.getLogger(__name__)
RETRIES = 5


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to one received instance."""

    outcome: Outcome
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    sha256: str
    size: int


class Ingestor:
    """Validates, stores and indexes instances; shared by every door of the hub."""

    def __init__(
        self,
        database: Database,
        blobs: BlobStore,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST,
    ) -> None:
        self.database = database
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        self.senders = NodeDirectory(database)
        self._hot_path = IndexHotPath(database)

    def ingest(
        self,
        part10: bytes,
        received_from_ae: str = "",
        establishment_pk: int | None = None,
        parsed: tuple[InstanceHeader, Dataset] | None = None,
        sha256: str | None = None,
    ) -> IngestResult:
        """Store one Part 10 file held in memory; return only once it is durable.

        Raises a :class:`~pacs_hub.errors.HubError` (invalid input, conflict, disk
        full, index down); in every such case nothing already stored changes.
        ``establishment_pk``, ``parsed`` and ``sha256`` as for :meth:`ingest_file`.
        """
        header, dataset = parsed or parse_instance(part10)
        digest = sha256 or sha256_hex(part10)
        blob = StoredBlob("", digest, len(part10))  # the key is the write's
        return self._store(
            header,
            dataset,
            blob,
            lambda: self.blobs.put(part10, digest),
            received_from_ae,
            establishment_pk,
        )

    def ingest_file(
        self,
        path: Path,
        received_from_ae: str = "",
        establishment_pk: int | None = None,
        parsed: tuple[InstanceHeader, Dataset] | None = None,
        sha256: str | None = None,
    ) -> IngestResult:
        """Store one Part 10 file spooled to a temp file of the blob store (STOW-RS).

        Same checks and guarantees as :meth:`ingest`, without holding the file in
        memory: pixel data is neither read nor copied, the temp file is moved in.
        The temp file is consumed when stored; the caller removes it otherwise.
        ``establishment_pk`` is recorded on a new study (the storing user's
        establishment); by default it is the sending node's. ``parsed`` is
        :func:`parse_instance` of ``path`` when the caller already has it, ``sha256``
        the file's SHA-256 when the caller computed it while writing the file.
        """
        header, dataset = parsed or parse_instance(path)
        sha256 = sha256 or sha256_file(path)
        blob = StoredBlob("", sha256, path.stat().st_size)
        return self._store(
            header,
            dataset,
            blob,
            lambda: self.blobs.put_file(path, sha256),
            received_from_ae,
            establishment_pk,
        )

    def _store(
        self,
        header: InstanceHeader,
        dataset: Dataset,
        blob: StoredBlob,
        write_blob: Callable[[], str],
        received_from_ae: str,
        establishment_pk: int | None = None,
    ) -> IngestResult:
        owner = self.senders.lookup(received_from_ae) if received_from_ae else None
        if owner is not None and establishment_pk is None:
            establishment_pk = owner.establishment_pk  # recorded on a new study
        if owner is not None and owner.default_issuer and not header.issuer_of_patient_id:
            # No Issuer of Patient ID (0010,0021, PS3.3 C.7.1.1): the patient is indexed under
            # the default issuer of the sending node's establishment (the bytes keep none).
            header = dataclasses.replace(header, issuer_of_patient_id=owner.default_issuer)
        known = self._hot_path.lookup(header.sop_instance_uid)
        if known is not None and known.sha256 == blob.sha256:
            return self._result(Outcome.DUPLICATE, header, blob)
        if known is not None and self.duplicate_policy is DuplicatePolicy.KEEP_FIRST:
            raise self._conflict(header)
        metadata = dicomjson.encode(dataset)  # before the blob moves: deferred values
        blob = StoredBlob(write_blob(), blob.sha256, blob.size)
        outcome = self._index(header, blob, received_from_ae, metadata, establishment_pk)
        if outcome is Outcome.CONFLICT:
            raise self._conflict(header)
        return self._result(outcome, header, blob)

    @staticmethod
    def _conflict(header: InstanceHeader) -> DuplicateConflict:
        return DuplicateConflict(
            # The reason first: the Error Comment (0000,0902) keeps only 64 characters.
            "already stored with other content, kept the first: SOP Instance "
            f"{header.sop_instance_uid}"
        )

    def _index(
        self,
        header: InstanceHeader,
        blob: StoredBlob,
        ae: str,
        metadata: bytes,
        establishment_pk: int | None = None,
    ) -> Outcome:
        hot = self._hot_path
        delay = 0.01
        for attempt in range(RETRIES):
            try:
                outcome = self._index_hot(header, blob, ae, metadata, establishment_pk)
                if outcome is None:
                    outcome = self._index_once(header, blob, ae, metadata, establishment_pk)
                return outcome
            except (IntegrityError, hot.integrity_error):
                # A concurrent ingest created the same patient/study/series: retry reads it.
                if attempt == RETRIES - 1:
                    raise
            except (OperationalError, hot.operational_error) as exc:
                if attempt == RETRIES - 1:
                    reason = exc.orig if isinstance(exc, OperationalError) else exc
                    raise IndexUnavailable(f"index did not commit: {reason}") from exc
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _index_hot(
        self,
        header: InstanceHeader,
        blob: StoredBlob,
        ae: str,
        metadata: bytes,
        establishment_pk: int | None = None,
    ) -> Outcome | None:
        """The hot path: index a new instance in plain SQL.

        None, with nothing written, when the general path must decide: a new patient's
        identity gets link candidates, or the SOP Instance UID is indexed with other
        bytes.
        """
        now = datetime.now(UTC).replace(tzinfo=None)
        hot = self._hot_path
        with hot.transaction() as cursor:
            known = hot.known(cursor, header.sop_instance_uid)
            if known is not None:
                return Outcome.DUPLICATE if known.sha256 == blob.sha256 else None
            if hot.add_instance(cursor, header, blob, ae, now, metadata, establishment_pk):
                return Outcome.STORED
        return None

    def _index_once(
        self,
        header: InstanceHeader,
        blob: StoredBlob,
        ae: str,
        metadata: bytes,
        establishment_pk: int | None = None,
    ) -> Outcome:
        now = datetime.now(UTC).replace(tzinfo=None)
        with self.database.engine.begin() as conn:
            known = existing_instance(conn, header.sop_instance_uid)
            if known is None:
                add_instance(conn, header, blob, ae, now, metadata, establishment_pk)
                return Outcome.STORED
            if known.sha256 == blob.sha256:
                return Outcome.DUPLICATE
            if self.duplicate_policy is DuplicatePolicy.REPLACE:
                replace_blob(conn, known, blob, ae, now, metadata)
                return Outcome.REPLACED
            return Outcome.CONFLICT

    @staticmethod
    def _result(outcome: Outcome, h: InstanceHeader, blob: StoredBlob) -> IngestResult:
        return IngestResult(
            outcome=outcome,
            sop_instance_uid=h.sop_instance_uid,
            sop_class_uid=h.sop_class_uid,
            study_instance_uid=h.study_instance_uid,
            sha256=blob.sha256,
            size=blob.size,
        )
