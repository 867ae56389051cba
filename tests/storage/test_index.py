"""The index through the one ingest path, on SQLite and on a real PostgreSQL server.

Counters are the computed attributes of PS3.4 C.6.1.1.3 / C.6.2.1.3 (Number of
Patient/Study/Series Related ..., Modalities in Study): each test checks them against
a GROUP BY over the rows, plus exact expected values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from pacs_hub.config import DuplicatePolicy
from pacs_hub.dicom.part10 import normalise_part10
from pacs_hub.errors import DuplicateConflict, HubError
from pacs_hub.ingest import Ingestor
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.index import Outcome
from pacs_hub.storage.models import Instance, Patient, Series, Study
from pacs_hub.storage.packs import HEADER
from tests.storage.conftest import as_part10, hot_path_taken, synthetic_dataset

CT_VOLUME = Path("volumes") / "ct_philips_ingenuity_head_phantom_axial_5mm"
# Charset samples and the Patient Name each must decode to (FileInfo.txt).
CHARSET_NAMES = {
    "chrFren.dcm": "Buc^Jérôme",
    "chrGerm.dcm": "Äneas^Rüdiger",
    "chrGreek.dcm": "Διονυσιος",
    "chrRuss.dcm": "Люкceмбypг",  # noqa: RUF001 (Latin c, e, y, p as in the file)
    "chrX1.dcm": "Wang^XiaoDong=王^小東",
    "chrH31.dcm": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "chrI2.dcm": "Hong^Gildong=洪^吉洞=홍^길동",
}


def blob_files(blobs: BlobStore) -> dict[Path, int]:
    """Every file of the blob store (pack files and blob files) with its size."""
    return {p: p.stat().st_size for p in blobs.blobs.rglob("*") if p.is_file()}


def counts(db: Database) -> dict[str, int]:
    with db.read_connection() as conn:
        return {
            model.__tablename__: int(
                conn.execute(select(func.count()).select_from(model)).scalar_one()
            )
            for model in (Patient, Study, Series, Instance)
        }


def assert_counters_consistent(db: Database) -> None:
    """Every stored counter equals what the rows below it say."""
    with db.read_connection() as conn:
        for series_pk, stored, actual in conn.execute(
            select(Series.id, Series.num_instances, func.count(Instance.id))
            .outerjoin(Instance, Instance.series_pk == Series.id)
            .group_by(Series.id, Series.num_instances)
        ):
            assert stored == actual, f"series {series_pk}: {stored} != {actual} instances"
        for study in conn.execute(select(Study)).mappings():
            rows = conn.execute(
                select(Series.modality, func.count(Instance.id), func.sum(Instance.size_bytes))
                .join(Instance, Instance.series_pk == Series.id)
                .where(Series.study_pk == study["id"])
                .group_by(Series.id, Series.modality)
            ).all()
            assert study["num_series"] == len(rows)
            assert study["num_instances"] == sum(r[1] for r in rows)
            assert study["size_bytes"] == sum(r[2] for r in rows)
            modalities = sorted({r[0] for r in rows if r[0]})
            assert study["modalities_in_study"] == "\\".join(modalities)
        for patient in conn.execute(select(Patient)).mappings():
            studies = conn.execute(
                select(Study.num_series, Study.num_instances).where(
                    Study.patient_pk == patient["id"]
                )
            ).all()
            assert patient["num_studies"] == len(studies)
            assert patient["num_series"] == sum(s[0] for s in studies)
            assert patient["num_instances"] == sum(s[1] for s in studies)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "data")


@pytest.fixture
def ingestor(database: Database, blobs: BlobStore) -> Ingestor:
    return Ingestor(database, blobs)


def test_ct_volume_counters(
    ingestor: Ingestor, database: Database, shared_data: Path, blobs: BlobStore
) -> None:
    files = sorted((shared_data / CT_VOLUME).iterdir())
    results = [ingestor.ingest(normalise_part10(f.read_bytes()), "IMPORT") for f in files]
    assert {r.outcome for r in results} == {Outcome.STORED}
    assert counts(database) == {"patients": 1, "studies": 1, "series": 1, "instances": 28}
    with database.read_connection() as conn:
        study = conn.execute(select(Study)).mappings().one()
        patient = conn.execute(select(Patient)).mappings().one()
    assert (study["num_series"], study["num_instances"]) == (1, 28)
    assert study["modalities_in_study"] == "CT"
    assert study["size_bytes"] == sum(r.size for r in results)
    assert (patient["num_studies"], patient["num_series"], patient["num_instances"]) == (1, 1, 28)
    with database.read_connection() as conn:
        keys = dict(conn.execute(select(Instance.blob_key, Instance.sha256)).all())
    assert sorted(keys.values()) == sorted(r.sha256 for r in results)
    assert all(blobs.verify(key, sha256) for key, sha256 in keys.items())
    # one copy each, in a pack after its record header
    assert sum(blob_files(blobs).values()) == sum(HEADER.size + r.size for r in results)
    assert_counters_consistent(database)


def _ingest_charsets(ingestor: Ingestor, folder: Path) -> dict[str, Outcome | str]:
    outcomes: dict[str, Outcome | str] = {}
    for path in sorted(folder.glob("*.dcm")):
        try:
            outcomes[path.name] = ingestor.ingest(normalise_part10(path.read_bytes())).outcome
        except HubError as exc:
            outcomes[path.name] = type(exc).__name__
    return outcomes


def test_charsets_decoded_and_idempotent(
    ingestor: Ingestor, database: Database, shared_data: Path, blobs: BlobStore
) -> None:
    folder = shared_data / "charsets" / "clunie"
    first = _ingest_charsets(ingestor, folder)
    # chrFrenMulti reuses chrFren's SOP Instance UID with other content: keep-first.
    assert first["chrFrenMulti.dcm"] == "DuplicateConflict"
    assert first["chrSQEncoding.dcm"] == "MissingAttribute"
    assert first["chrX1.dcm"] == first["chrH32.dcm"] == Outcome.STORED
    with database.read_connection() as conn:
        names = {n for (n,) in conn.execute(select(Patient.patient_name))}
    assert set(CHARSET_NAMES.values()) <= names
    before, files = counts(database), blob_files(blobs)
    second = _ingest_charsets(ingestor, folder)
    assert second == {
        name: Outcome.DUPLICATE if outcome is Outcome.STORED else outcome
        for name, outcome in first.items()
    }
    assert counts(database) == before
    assert blob_files(blobs) == files
    assert_counters_consistent(database)


def test_conflict_keep_first_then_replace(
    database: Database, blobs: BlobStore, tmp_path: Path
) -> None:
    study = generate_uid()
    original = synthetic_dataset(study, comment="first")
    changed = synthetic_dataset(
        study,
        original.SeriesInstanceUID,
        sop_instance_uid=original.SOPInstanceUID,
        pixel_bytes=200,
        comment="second",
    )
    keep = Ingestor(database, blobs, DuplicatePolicy.KEEP_FIRST)
    stored = keep.ingest(as_part10(original))
    before, files = counts(database), blob_files(blobs)
    with pytest.raises(DuplicateConflict, match=r"already stored with other content") as caught:
        keep.ingest(as_part10(changed))
    assert caught.value.dicom_status == 0xA900
    assert counts(database) == before
    assert blob_files(blobs) == files  # refused before any blob was written
    replaced = Ingestor(database, blobs, DuplicatePolicy.REPLACE).ingest(as_part10(changed))
    assert replaced.outcome is Outcome.REPLACED
    assert counts(database) == before
    with database.read_connection() as conn:
        row = conn.execute(select(Instance.sha256, Instance.size_bytes)).one()
        size = conn.execute(select(Study.size_bytes)).scalar_one()
    assert tuple(row) == (replaced.sha256, replaced.size) != (stored.sha256, stored.size)
    assert size == replaced.size
    assert_counters_consistent(database)


def _run_threads(workers: list[Callable[[], Any]]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(workers))

    def run(work: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            work()
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "ingest threads hung"
    return errors


def test_concurrent_ingest_of_one_new_study(ingestor: Ingestor, database: Database) -> None:
    """Eight threads race to create the same patient, study and series (PS3.4 C.6.1.1.3)."""
    study = generate_uid()
    modalities = ["CT", "MR", "PT", "OT"]
    series = [(generate_uid(), m) for m in modalities for _ in range(2)]
    per_thread = 6
    payloads = [
        [
            as_part10(synthetic_dataset(study, uid, modality=modality, pixel_bytes=32 + n))
            for n in range(per_thread)
        ]
        for uid, modality in series
    ]
    # Every thread also sends one instance that another thread sends too.
    shared = as_part10(synthetic_dataset(study, series[0][0], modality="CT"))

    def work(batch: list[bytes]) -> Callable[[], None]:
        return lambda: [ingestor.ingest(data) for data in (shared, *batch)]

    errors = _run_threads([work(batch) for batch in payloads])
    assert errors == []
    total = len(series) * per_thread + 1
    assert counts(database) == {"patients": 1, "studies": 1, "series": 8, "instances": total}
    with database.read_connection() as conn:
        row = conn.execute(select(Study)).mappings().one()
    assert (row["num_series"], row["num_instances"]) == (8, total)
    assert row["modalities_in_study"] == "CT\\MR\\OT\\PT"
    assert_counters_consistent(database)


def test_a_file_ingested_for_an_establishment_records_it_on_the_new_study(
    ingestor: Ingestor, database: Database, tmp_path: Path
) -> None:
    """STOW-RS by a user: the study belongs to the user's establishment (access policy)."""
    from datetime import datetime

    from pacs_hub.storage.models import Establishment

    with database.session() as session:
        est = Establishment(code="E1", name="E1", created_at=datetime(2026, 1, 1))
        session.add(est)
        session.flush()
        est_pk = est.id
    study = generate_uid()
    temp = ingestor.blobs.temp_path()
    temp.write_bytes(as_part10(synthetic_dataset(study)))
    result = ingestor.ingest_file(temp, "STOW-RS", est_pk)
    assert result.outcome is Outcome.STORED
    with database.reader() as session:
        assert (
            session.scalar(select(Study.establishment_pk).where(Study.study_instance_uid == study))
            == est_pk
        )
    assert not temp.exists()  # moved in as the blob


def test_a_known_study_takes_the_plain_sql_hot_path_and_reads_back_alike(
    ingestor: Ingestor, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first instance creates its patient and study, the next ones go to its series
    or to a new series of the study, all on the hot path; every row reads back through
    the ORM with the same types and values, and the counters add up."""
    from datetime import UTC, datetime

    from pacs_hub.dicom.dicomjson import expand

    taken = hot_path_taken(monkeypatch)
    study = generate_uid()
    first = synthetic_dataset(study, comment="first", modality="CT")
    second = synthetic_dataset(study, first.SeriesInstanceUID, comment="second", modality="CT")
    third = synthetic_dataset(study, comment="other series", modality="MR")
    before = datetime.now(UTC).replace(tzinfo=None)
    results = [ingestor.ingest(as_part10(ds), "MODALITY") for ds in (first, second, third)]
    assert [r.outcome for r in results] == [Outcome.STORED] * 3
    assert taken == [True, True, True]  # new patient, then series known, then study known
    assert ingestor.ingest(as_part10(second), "MODALITY").outcome is Outcome.DUPLICATE
    with database.reader() as session:
        rows = session.scalars(select(Instance).order_by(Instance.id)).all()
        blobs = [(r.metadata_json, r.sop_instance_uid) for r in rows]
        columns = [
            (r.sop_class_uid, r.transfer_syntax_uid, r.received_from_ae, r.rows, r.columns)
            for r in rows
        ]
        received = [r.received_at for r in rows]
        study_row = session.scalars(select(Study)).one()
        series_rows = session.scalars(select(Series).order_by(Series.id)).all()
        series = [(s.series_instance_uid, s.modality, s.num_instances) for s in series_rows]
        patient_row = session.scalars(select(Patient)).one()
    after = datetime.now(UTC).replace(tzinfo=None)
    assert [uid for _, uid in blobs] == [ds.SOPInstanceUID for ds in (first, second, third)]
    assert columns[0] == columns[1] == columns[2]
    assert all(type(when) is datetime for when in received)
    assert before <= received[0] <= received[1] <= received[2] <= after
    assert study_row.updated_at == received[2]
    for metadata, uid in blobs:
        assert metadata is not None
        assert uid in expand(metadata, "http://hub/instances/x")
    assert series == [
        (first.SeriesInstanceUID, "CT", 2),
        (third.SeriesInstanceUID, "MR", 1),
    ]
    assert (study_row.num_series, study_row.num_instances) == (2, 3)
    assert study_row.modalities_in_study == "CT\\MR"
    assert (patient_row.num_series, patient_row.num_instances) == (2, 3)
    assert_counters_consistent(database)


def test_a_kept_connection_that_broke_is_dropped_and_the_error_kept(database: Database) -> None:
    """Database.kept_connection: a connection whose rollback fails is closed, not reused,
    and the caller sees its own error, not the rollback's."""
    with database.kept_connection() as first:
        pass
    with pytest.raises(ValueError, match="caller's"), database.kept_connection() as again:
        assert again is first  # kept and handed out again
        again.close()  # as a lost server would leave it
        raise ValueError("the caller's error")
    with database.kept_connection() as fresh:
        assert fresh is not first
        cursor = fresh.cursor()
        cursor.execute("SELECT 1")
        assert cursor.fetchone()[0] == 1
        fresh.rollback()


def test_a_new_study_of_a_known_patient_takes_the_hot_path_and_matches_the_general_path(
    database: Database, blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-image study of a patient already indexed is created in plain SQL
    (IndexHotPath._new_study); its rows read back exactly as the general path's
    (index._new_study) for the same header: only ids and times differ."""
    from datetime import datetime

    from pacs_hub.storage.index_hot_path import IndexHotPath
    from pacs_hub.storage.models import Establishment

    taken = hot_path_taken(monkeypatch)
    with database.session() as session:
        est = Establishment(code="E9", name="E9", created_at=datetime(2026, 1, 1))
        session.add(est)
        session.flush()
        est_pk = est.id
    ingestor = Ingestor(database, blobs)
    first = synthetic_dataset(generate_uid(), modality="CR")
    assert ingestor.ingest(as_part10(first)).outcome is Outcome.STORED  # new patient
    studies = [synthetic_dataset(generate_uid(), modality="CR") for _ in range(2)]
    for ds in studies:
        ds.ReferringPhysicianName = "Dupont^Jean"
        ds.AccessionNumber, ds.StudyDate, ds.StudyDescription = "ACC1", "20260102", "Thorax"
    hot = ingestor.ingest(as_part10(studies[0]), "", establishment_pk=est_pk)
    assert hot.outcome is Outcome.STORED
    assert taken == [True, True]
    monkeypatch.setattr(IndexHotPath, "add_instance", lambda *_args: False)
    general = ingestor.ingest(as_part10(studies[1]), "", establishment_pk=est_pk)
    assert general.outcome is Outcome.STORED

    def row(uid: str) -> dict[str, Any]:
        with database.read_connection() as conn:
            found = dict(
                conn.execute(select(Study).where(Study.study_instance_uid == uid)).mappings().one()
            )
        for varying in ("id", "study_instance_uid", "created_at", "updated_at"):
            assert found.pop(varying) is not None
        return found

    made_hot, made_general = row(studies[0].StudyInstanceUID), row(studies[1].StudyInstanceUID)
    # generated UIDs differ in length by a digit or two, so do the files
    assert (made_hot.pop("size_bytes"), made_general.pop("size_bytes")) == (hot.size, general.size)
    assert made_hot == made_general
    assert made_hot["establishment_pk"] == est_pk
    assert made_hot["referring_physician_name_match"] != ""
    assert (made_hot["num_series"], made_hot["num_instances"], made_hot["modalities_in_study"]) == (
        1,
        1,
        "CR",
    )
    with database.read_connection() as conn:
        patient = conn.execute(select(Patient)).mappings().one()
    assert (patient["num_studies"], patient["num_series"], patient["num_instances"]) == (3, 3, 3)
    assert_counters_consistent(database)
