"""Ingestor.ingest_batch: instances that arrived together (one STOW-RS request) stored
with one data sync and one index transaction, each with the outcome ingest gives it."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from pacs_hub.dicom.header import InstanceHeader
from pacs_hub.errors import DuplicateConflict, HubError, IndexUnavailable
from pacs_hub.ingest import Arrival, Ingestor, IngestResult
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.index import Outcome
from pacs_hub.storage.models import Instance, Patient, Series, Study
from tests.conftest import DATA

CT = sorted((DATA / "volumes" / "ct_philips_ingenuity_head_phantom_axial_5mm").iterdir())[:6]


def _part10(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> tuple[Database, BlobStore, Ingestor]:
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    blobs = BlobStore(tmp_path / "data")
    return database, blobs, Ingestor(database, blobs)


def test_a_batch_is_stored_with_one_sync_and_indexed_like_single_ingests(
    store: tuple[Database, BlobStore, Ingestor], data_syncs: list[int]
) -> None:
    database, blobs, ingestor = store
    files = [path.read_bytes() for path in CT]
    results = ingestor.ingest_batch([Arrival(data) for data in files], "CT_A")
    assert [r.outcome for r in results if isinstance(r, IngestResult)] == [Outcome.STORED] * 6
    assert len(data_syncs) == 1
    with database.reader() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 6
        assert session.scalar(select(Series.num_instances)) == 6
        assert session.scalar(select(Study.num_instances)) == 6
        assert session.scalar(select(Patient.num_instances)) == 6
        keys = dict(session.execute(select(Instance.sop_instance_uid, Instance.blob_key)).all())
    for result, data in zip(results, files, strict=True):
        assert isinstance(result, IngestResult)
        assert blobs.ref(keys[result.sop_instance_uid]).read_bytes() == data
    again = ingestor.ingest_batch([Arrival(files[0]), Arrival(files[1])])
    assert [r.outcome for r in again if isinstance(r, IngestResult)] == [Outcome.DUPLICATE] * 2


def test_each_instance_of_a_batch_gets_its_own_outcome(
    store: tuple[Database, BlobStore, Ingestor],
) -> None:
    database, _blobs, ingestor = store
    first = pydicom.dcmread(CT[0])
    changed = copy.deepcopy(first)
    changed.SeriesDescription = "other bytes, same SOP Instance UID"
    other_patient = pydicom.dcmread(CT[1])
    other_patient.PatientID = "NEW-PATIENT-7"  # a new patient: the identity's general path
    other_patient.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    other_patient.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    batch = [
        Arrival(_part10(first)),
        Arrival(b"not DICOM at all"),
        Arrival(_part10(first)),  # the same bytes again in the same request
        Arrival(_part10(changed)),  # other bytes under that SOP Instance UID
        Arrival(_part10(other_patient)),
    ]
    results = ingestor.ingest_batch(batch, "CT_A")
    assert len(results) == 5
    assert isinstance(results[0], IngestResult) and results[0].outcome is Outcome.STORED
    assert isinstance(results[1], HubError) and results[1].dicom_status == 0xC000
    assert isinstance(results[2], IngestResult) and results[2].outcome is Outcome.DUPLICATE
    assert isinstance(results[3], DuplicateConflict)
    assert isinstance(results[4], IngestResult) and results[4].outcome is Outcome.STORED
    with database.reader() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 2
        assert session.scalar(select(func.count()).select_from(Patient)) == 2
        assert sorted(session.scalars(select(Study.num_instances))) == [1, 1]


def test_an_instance_the_index_refuses_fails_alone_the_others_stay_stored(
    store: tuple[Database, BlobStore, Ingestor], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, _blobs, ingestor = store
    files = [path.read_bytes() for path in CT[:3]]
    refused = pydicom.dcmread(CT[1]).SOPInstanceUID
    hot = ingestor._hot_path
    real_add = hot.add_instance

    def add(cursor: object, header: InstanceHeader, *args: object) -> bool:
        if header.sop_instance_uid == refused:
            return False  # left to the general path...
        return real_add(cursor, header, *args)  # type: ignore[arg-type]

    def broken(*args: object) -> Outcome:
        raise RuntimeError("index went away")  # ...which fails with no HubError

    monkeypatch.setattr(hot, "add_instance", add)
    monkeypatch.setattr(ingestor, "_index_once", broken)
    results = ingestor.ingest_batch([Arrival(data) for data in files])
    assert isinstance(results[1], IndexUnavailable) and results[1].dicom_status == 0xA701
    assert [r.outcome for r in (results[0], results[2]) if isinstance(r, IngestResult)] == [
        Outcome.STORED,
        Outcome.STORED,
    ]
    with database.reader() as session:
        indexed = set(session.scalars(select(Instance.sop_instance_uid)))
    assert refused not in indexed and len(indexed) == 2
