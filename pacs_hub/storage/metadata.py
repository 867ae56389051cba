"""Reading the instance metadata stored at ingest (DICOM JSON, PS3.18 F.2).

WADO-RS metadata (PS3.18 10.4.1.1.2) of a study or series is one SQL query over
the ``instances.metadata_json`` column: no blob is opened. An instance indexed
before that column existed (index migrated from revision 0001) has none; its
metadata is made once from its blob's header and written back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pacs_hub.dicom import dicomjson
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.models import Instance, Series, Study

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredMetadata:
    """The stored metadata of one instance and the UIDs that locate it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    metadata: bytes

    def path(self) -> str:
        """The instance's path below the DICOMweb root (PS3.18 10.4.1)."""
        return (
            f"/studies/{self.study_instance_uid}/series/{self.series_instance_uid}"
            f"/instances/{self.sop_instance_uid}"
        )


_COLUMNS = (
    Study.study_instance_uid,
    Series.series_instance_uid,
    Instance.sop_instance_uid,
    Instance.metadata_json,
    Instance.blob_key,
    Instance.id,
)


def _from_blob(blobs: BlobStore, blob_key: str) -> bytes:
    with blobs.ref(blob_key).open() as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=False, defer_size=1024)
        return dicomjson.encode(ds)


def instances_metadata(
    session: Session,
    blobs: BlobStore,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[StoredMetadata]:
    """The metadata of every instance of a study, series or one instance, in storage order.

    Instance Number order is left to the viewer (it sorts by geometry anyway).
    """
    stmt = (
        select(*_COLUMNS)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study_uid)
        .order_by(Instance.id)
    )
    if series_uid is not None:
        stmt = stmt.where(Series.series_instance_uid == series_uid)
    if sop_uid is not None:
        stmt = stmt.where(Instance.sop_instance_uid == sop_uid)
    found = []
    for study, series, sop, metadata, blob_key, pk in session.execute(stmt):
        if metadata is None:
            metadata = _backfill(session, blobs, pk, blob_key)
        found.append(StoredMetadata(study, series, sop, metadata))
    return found


def _backfill(session: Session, blobs: BlobStore, pk: int, blob_key: str) -> bytes:
    metadata = _from_blob(blobs, blob_key)
    try:
        session.execute(update(Instance).where(Instance.id == pk).values(metadata_json=metadata))
        session.commit()
    except Exception as exc:  # a read-only index still answers, just without caching
        LOGGER.warning("metadata of instance %d not cached: %s", pk, exc)
        session.rollback()
    return metadata


def representative(
    session: Session, blobs: BlobStore, uids: Sequence[str], level_column: str
) -> bytes | None:
    """The metadata of the first instance received for a study, series or instance.

    ``level_column`` is ``study``, ``series`` or ``instance``; ``uids`` the matched
    entity's unique key (one value).
    """
    column = {
        "study": Study.study_instance_uid,
        "series": Series.series_instance_uid,
        "instance": Instance.sop_instance_uid,
    }[level_column]
    stmt = (
        select(Instance.id, Instance.metadata_json, Instance.blob_key)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(column == uids[0])
        .order_by(Instance.id)
        .limit(1)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    pk, metadata, blob_key = row
    return bytes(metadata) if metadata is not None else _backfill(session, blobs, pk, blob_key)
