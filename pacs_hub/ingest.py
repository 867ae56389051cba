"""The one path every instance takes: validate -> write blob -> index -> acknowledge.

C-STORE, STOW-RS, import, replication and restore all call :meth:`Ingestor.ingest`.
Durable before acknowledged (ARCHITECTURE.md invariant 2): the blob is synced (appended
to a pack file, or a file of its own renamed in), then the index row naming it is
committed, and only then does ``ingest`` return. :meth:`Ingestor.ingest_batch` stores
several instances that arrived together (the parts of one STOW-RS request) the same
way, with one data sync and one index transaction for them all.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from sqlalchemy.exc import IntegrityError, OperationalError

from pacs_hub import metrics
from pacs_hub.config import DuplicatePolicy
from pacs_hub.dicom import dicomjson
from pacs_hub.dicom.header import InstanceHeader, parse_instance
from pacs_hub.errors import DuplicateConflict, HubError, IndexUnavailable
from pacs_hub.regional.nodes import NodeDirectory, NodeOwner
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
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Arrival:
    """One instance of a batch: its Part 10 bytes and what the caller already knows of
    them (``parsed``: :func:`parse_instance` of them; ``sha256``: their SHA-256)."""

    part10: bytes
    parsed: tuple[InstanceHeader, Dataset] | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to one received instance."""

    outcome: Outcome
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    sha256: str
    size: int


def all_decided(outcomes: list[T | None]) -> list[T]:
    """``outcomes`` once every one is decided (one per instance of a batch, in order)."""
    if any(outcome is None for outcome in outcomes):
        raise AssertionError("an instance of a batch was left without an outcome")
    return [outcome for outcome in outcomes if outcome is not None]


class Ingestor:
    """Validates, stores and indexes instances; shared by every door of the hub."""

    def __init__(
        self,
        database: Database,
        blobs: BlobStore,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST,
        door: str = "dicom",
    ) -> None:
        self.database = database
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        self.door = door
        """How instances reach this ingestor (dicom, dicomweb, import, c-get, processing),
        the label of the ingest metrics (:mod:`pacs_hub.metrics`)."""
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
        return self._ingest_one(part10, received_from_ae, establishment_pk, parsed, sha256)

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
        return self._ingest_one(path, received_from_ae, establishment_pk, parsed, sha256)

    def _ingest_one(
        self,
        source: bytes | Path,
        received_from_ae: str,
        establishment_pk: int | None,
        parsed: tuple[InstanceHeader, Dataset] | None,
        sha256: str | None,
    ) -> IngestResult:
        """:meth:`ingest` (``source`` in memory) or :meth:`ingest_file` (spooled to a
        file), its outcome counted in the metrics."""
        try:
            header, dataset = parsed or parse_instance(source)
            write: Callable[[], str]
            if isinstance(source, Path):
                path, digest = source, sha256 or sha256_file(source)
                blob = StoredBlob("", digest, path.stat().st_size)
                write = lambda: self.blobs.put_file(path, digest)  # noqa: E731
            else:
                data, digest = source, sha256 or sha256_hex(source)
                blob = StoredBlob("", digest, len(data))  # the key is the write's
                write = lambda: self.blobs.put(data, digest)  # noqa: E731
            result = self._store(header, dataset, blob, write, received_from_ae, establishment_pk)
        except HubError as exc:
            self._count(exc)
            raise
        self._count(result)
        return result

    def ingest_batch(
        self,
        arrivals: Sequence[Arrival],
        received_from_ae: str = "",
        establishment_pk: int | None = None,
    ) -> list[IngestResult | HubError]:
        """Store instances held in memory that arrived together; return once every one
        stored is durable, each one's outcome in order.

        What :meth:`ingest` would return or raise for each, the errors returned in its
        place (one instance's failure leaves the others stored). The blobs go to the
        pack with one data sync; the new instances are indexed in one transaction, any
        the hot path cannot index (or a transaction that fails) one by one as
        :meth:`ingest` does.
        """
        owner, establishment_pk = self._sender(received_from_ae, establishment_pk)
        outcomes: list[IngestResult | HubError | None] = [None] * len(arrivals)
        ready: list[tuple[int, InstanceHeader, Dataset, StoredBlob, bytes]] = []
        for n, arrival in enumerate(arrivals):
            try:
                header, dataset = arrival.parsed or parse_instance(arrival.part10)
                header = self._with_issuer(header, owner)
                digest = arrival.sha256 or sha256_hex(arrival.part10)
                blob = StoredBlob("", digest, len(arrival.part10))
                outcomes[n] = self._known(header, blob)
                if outcomes[n] is None:
                    ready.append((n, header, dataset, blob, arrival.part10))
            except HubError as exc:
                outcomes[n] = exc
        if ready:
            for n, outcome in self._store_batch(ready, received_from_ae, establishment_pk):
                outcomes[n] = outcome
        decided: list[IngestResult | HubError] = all_decided(outcomes)
        for outcome in decided:
            self._count(outcome)
        return decided

    def _count(self, outcome: IngestResult | HubError) -> None:
        """Count ``outcome`` (a result, or why the instance was refused) in the metrics."""
        if isinstance(outcome, IngestResult):
            stored = outcome.outcome in (Outcome.STORED, Outcome.REPLACED)
            metrics.ingested(self.door, outcome.outcome.value, outcome.size if stored else 0)
        else:
            metrics.ingested(self.door, "rejected")

    def _store_batch(
        self,
        ready: list[tuple[int, InstanceHeader, Dataset, StoredBlob, bytes]],
        received_from_ae: str,
        establishment_pk: int | None,
    ) -> list[tuple[int, IngestResult | HubError]]:
        metadata = [dicomjson.encode(dataset) for _n, _h, dataset, _b, _d in ready]
        try:
            keys = self.blobs.put_many([(data, blob.sha256) for _n, _h, _ds, blob, data in ready])
        except HubError as exc:
            return [(n, exc) for n, *_ in ready]
        items = [
            (header, StoredBlob(key, blob.sha256, blob.size), meta)
            for (_n, header, _ds, blob, _d), key, meta in zip(ready, keys, metadata, strict=True)
        ]
        indexed = self._index_batch(items, received_from_ae, establishment_pk)
        results: list[tuple[int, IngestResult | HubError]] = []
        for (n, *_), (header, blob, _meta), outcome in zip(ready, items, indexed, strict=True):
            if isinstance(outcome, HubError):
                results.append((n, outcome))
            elif outcome is Outcome.CONFLICT:
                results.append((n, self._conflict(header)))
            else:
                results.append((n, self._result(outcome, header, blob)))
        return results

    def _index_batch(
        self,
        items: list[tuple[InstanceHeader, StoredBlob, bytes]],
        ae: str,
        establishment_pk: int | None,
    ) -> list[Outcome | HubError]:
        """Index the instances of a batch in one hot-path transaction; those it leaves to
        the general path, or all when the transaction fails, through :meth:`_index`."""
        hot = self._hot_path
        now = datetime.now(UTC).replace(tzinfo=None)
        outcomes: list[Outcome | HubError | None] = [None] * len(items)
        try:
            with hot.transaction() as cursor:
                for n, (header, blob, metadata) in enumerate(items):
                    outcomes[n] = self._index_hot_in(
                        cursor, header, blob, ae, now, metadata, establishment_pk
                    )
        except (IntegrityError, hot.integrity_error, OperationalError, hot.operational_error):
            outcomes = [None] * len(items)  # rolled back: each one on its own, with retries
        for n, (header, blob, metadata) in enumerate(items):
            if outcomes[n] is None:
                try:
                    outcomes[n] = self._index(header, blob, ae, metadata, establishment_pk)
                except HubError as exc:
                    outcomes[n] = exc
                except Exception as exc:  # the others of the batch may be indexed already
                    LOGGER.exception("instance of a batch not indexed")
                    outcomes[n] = IndexUnavailable(f"index did not commit: {type(exc).__name__}")
        return all_decided(outcomes)

    def _sender(
        self, received_from_ae: str, establishment_pk: int | None
    ) -> tuple[NodeOwner | None, int | None]:
        """The registered node of ``received_from_ae`` (if any), and the establishment a
        new study is recorded under: the one given, else the node's."""
        owner = self.senders.lookup(received_from_ae) if received_from_ae else None
        if owner is not None and establishment_pk is None:
            establishment_pk = owner.establishment_pk  # recorded on a new study
        return owner, establishment_pk

    @staticmethod
    def _with_issuer(header: InstanceHeader, owner: NodeOwner | None) -> InstanceHeader:
        if owner is not None and owner.default_issuer and not header.issuer_of_patient_id:
            # No Issuer of Patient ID (0010,0021, PS3.3 C.7.1.1): the patient is indexed under
            # the default issuer of the sending node's establishment (the bytes keep none).
            header = dataclasses.replace(header, issuer_of_patient_id=owner.default_issuer)
        return header

    def _known(self, header: InstanceHeader, blob: StoredBlob) -> IngestResult | None:
        """DUPLICATE when these very bytes are indexed; raises when other bytes are and
        the first are kept; None for a new instance (or one to replace)."""
        known = self._hot_path.lookup(header.sop_instance_uid)
        if known is not None and known.sha256 == blob.sha256:
            return self._result(Outcome.DUPLICATE, header, blob)
        if known is not None and self.duplicate_policy is DuplicatePolicy.KEEP_FIRST:
            raise self._conflict(header)
        return None

    def _store(
        self,
        header: InstanceHeader,
        dataset: Dataset,
        blob: StoredBlob,
        write_blob: Callable[[], str],
        received_from_ae: str,
        establishment_pk: int | None = None,
    ) -> IngestResult:
        owner, establishment_pk = self._sender(received_from_ae, establishment_pk)
        header = self._with_issuer(header, owner)
        duplicate = self._known(header, blob)
        if duplicate is not None:
            return duplicate
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
        with self._hot_path.transaction() as cursor:
            return self._index_hot_in(cursor, header, blob, ae, now, metadata, establishment_pk)

    def _index_hot_in(
        self,
        cursor: Any,
        header: InstanceHeader,
        blob: StoredBlob,
        ae: str,
        now: datetime,
        metadata: bytes,
        establishment_pk: int | None,
    ) -> Outcome | None:
        """:meth:`_index_hot` in a transaction the caller holds (one or a batch's)."""
        hot = self._hot_path
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
