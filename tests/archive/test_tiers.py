"""Storage tiers (pacs_hub/archive/tiers.py, tier_sweep.py): real CT slices and
synthetic studies stored through the ingest path, on SQLite and on a real PostgreSQL
server, moved to the cold tier and back; every instance read back byte for byte, the
replaced copies erased only once no row names them, the index rebuilt from both tiers."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from pacs_hub.archive import tier_sweep, tiers
from pacs_hub.archive.integrity import check_archive
from pacs_hub.archive.reindex import reindex
from pacs_hub.config import Settings
from pacs_hub.ingest import Ingestor
from pacs_hub.regional.worker import WorkerContext
from pacs_hub.storage import cold, packs
from pacs_hub.storage.blobs import PACKS, BlobStore, sha256_hex
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Instance, Series, Study
from pacs_hub.storage.packs import PackWriter
from pacs_hub.storage.query import Level
from pacs_hub.storage.retrieval import RetrieveRequest, select_instances
from tests.storage.conftest import as_part10, synthetic_dataset
from tests.storage.test_cold import real_ct


@dataclass
class World:
    settings: Settings
    database: Database
    blobs: BlobStore
    ct: str
    """The real CT study's UID."""
    other: str
    sent: dict[str, bytes]
    """Every instance's bytes as sent, by SOP Instance UID."""

    def rows(self, study: str | None = None) -> dict[str, tuple[str, str]]:
        """SOP Instance UID -> (blob key, SHA-256)."""
        stmt = (
            select(Instance.sop_instance_uid, Instance.blob_key, Instance.sha256)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
        )
        if study:
            stmt = stmt.where(Study.study_instance_uid == study)
        with self.database.reader() as s:
            return {sop: (key, sha) for sop, key, sha in s.execute(stmt)}

    def read_back(self) -> None:
        """Every indexed instance reads back exactly as it was sent."""
        rows = self.rows()
        assert set(rows) == set(self.sent)
        for sop, (key, sha) in rows.items():
            data = self.blobs.ref(key).read_bytes()
            assert data == self.sent[sop] and sha256_hex(data) == sha


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    blobs = BlobStore(data_dir)
    ingestor = Ingestor(database, blobs)
    sent = {}
    slices = real_ct(6)
    for data in slices:
        ingestor.ingest(data, received_from_ae="CT_A")
        sent[dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID] = data
    ct = dcmread(io.BytesIO(slices[0]), stop_before_pixels=True).StudyInstanceUID
    other, series = generate_uid(), generate_uid()
    for n in range(4):
        ds = synthetic_dataset(other, series, patient_id="P2", pixel_bytes=5000 + n)
        data = as_part10(ds)
        ingestor.ingest(data, received_from_ae="CT_A")
        sent[ds.SOPInstanceUID] = data
    return World(settings, database, blobs, ct, other, sent)


def hot_records(blobs: BlobStore) -> tuple[int, int]:
    """(whole records, erased records) in the hot tier's packs."""
    found = erased = 0
    for pack in (blobs.blobs / PACKS).glob("*.pack"):
        for item in packs.survey(pack):
            found += isinstance(item, packs.Found)
            erased += isinstance(item, packs.Erased)
    return found, erased


def test_moved_to_cold_read_back_byte_for_byte_and_the_hot_copies_freed(world: World) -> None:
    with world.database.read_connection() as conn:
        assert tiers.candidates(conn, tiers.now() - timedelta(days=1)) == []
        assert set(tiers.candidates(conn, tiers.now() + timedelta(days=1))) == {
            world.ct,
            world.other,
        }
    moved = tiers.move_study(world.database, world.blobs, world.ct)
    assert (moved.instances, moved.damaged, moved.changed) == (6, [], 0)
    assert moved.bytes == sum(len(world.sent[sop]) for sop in world.rows(world.ct))
    assert moved.stored_bytes < 0.7 * moved.bytes  # lossless, and smaller
    assert all(cold.is_cold(key) for key, _sha in world.rows(world.ct).values())
    assert not any(cold.is_cold(key) for key, _sha in world.rows(world.other).values())
    world.read_back()
    assert check_archive(world.database, world.blobs).damaged == []
    with world.database.read_connection() as conn:
        assert tiers.candidates(conn, tiers.now() + timedelta(days=1)) == [world.other]
        hot_bytes = sum(len(world.sent[sop]) for sop in world.rows(world.other))
        assert tiers.counts(conn) == {
            "hot": {"instances": 4, "bytes": hot_bytes},
            "cold": {"instances": 6, "bytes": moved.bytes},
        }
    assert hot_records(world.blobs) == (10, 0)
    # replaced copies wait for their readers, then go
    assert tiers.free_garbage(world.database, world.blobs) == tiers.Freed(0, 0, 12)
    freed = tiers.free_garbage(world.database, world.blobs, grace=0)
    assert (freed.erased, freed.kept, freed.waiting) == (6, 6, 0)  # the old erased, the new kept
    assert hot_records(world.blobs) == (4, 6)
    world.read_back()
    described = tiers.describe(world.database, world.blobs, 1 << 30)
    assert described["tiers"]["cold"]["instances"] == 6 and described["cold_ratio"] > 1.4
    assert described["garbage_waiting"] == 0


def test_a_retrieve_of_a_cold_study_decompresses_each_instance_when_it_is_read(
    world: World,
) -> None:
    tiers.move_study(world.database, world.blobs, world.ct)
    cold.clear_cache(world.blobs.blobs)
    request = RetrieveRequest(Level.STUDY, {Level.STUDY: (world.ct,)})
    with world.database.reader() as session:
        items = select_instances(session, world.blobs, request)
    assert len(items) == 6 and cold.cache_use(world.blobs.blobs).files == 0  # planned only
    first = items[0].blob
    assert first.read_bytes() == world.sent[items[0].sop_instance_uid]
    assert cold.cache_use(world.blobs.blobs).files == 1  # the one read, no more
    assert [item.blob.read_bytes() for item in items] == [
        world.sent[item.sop_instance_uid] for item in items
    ]
    assert cold.cache_use(world.blobs.blobs).files == 6


def test_recalled_to_hot_and_the_index_rebuilt_from_both_tiers(
    world: World, tmp_path: Path
) -> None:
    tiers.move_study(world.database, world.blobs, world.ct)
    tiers.move_study(world.database, world.blobs, world.other)
    tiers.free_garbage(world.database, world.blobs, grace=0)
    fresh = Database(f"sqlite:///{tmp_path / 'rebuilt.sqlite3'}")
    try:
        report = reindex(fresh, world.blobs)
        assert report.indexed == 10 and report.problems == 0
        with fresh.reader() as s:
            stmt = select(Instance.sop_instance_uid, Instance.blob_key)
            rebuilt = {sop: key for sop, key in s.execute(stmt)}
        assert rebuilt == {sop: key for sop, (key, _sha) in world.rows().items()}
    finally:
        fresh.dispose()
    recalled = tiers.recall_study(world.database, world.blobs, world.ct)
    assert recalled.instances == 6 and recalled.stored_bytes == recalled.bytes
    assert not any(cold.is_cold(key) for key, _sha in world.rows(world.ct).values())
    world.read_back()
    assert tiers.free_garbage(world.database, world.blobs, grace=0).erased == 6
    (pack,) = cold.cold_packs(world.blobs.blobs)
    kinds = [type(item).__name__ for item in cold.survey(pack)]
    assert kinds.count("Erased") == 6 and kinds.count("Found") == 4
    world.read_back()
    with pytest.raises(tiers.UnknownStudy):
        tiers.move_study(world.database, world.blobs, "1.2.3.4")


def test_a_damaged_instance_stays_and_a_row_changed_meanwhile_keeps_its_blob(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = world.rows(world.other)
    damaged_sop = sorted(rows)[0]
    key, _sha = rows[damaged_sop]
    ref = world.blobs.ref(key)
    with ref.file.open("r+b") as fp:
        fp.seek(ref.offset + ref.size - 10)
        fp.write(b"\xff" * 10)
    changed_sop = sorted(rows)[1]
    real_put = cold.put_many

    def put_then_change(writer: PackWriter, items: list[tuple[bytes, str]]) -> list[str]:
        keys = real_put(writer, items)
        with world.database.engine.begin() as conn:  # as a replacement would, meanwhile
            conn.execute(
                update(Instance)
                .where(Instance.sop_instance_uid == changed_sop)
                .values(blob_key=rows[changed_sop][0] + "0")
            )
        return keys

    monkeypatch.setattr(cold, "put_many", put_then_change)
    moved = tiers.move_study(world.database, world.blobs, world.other)
    assert (moved.instances, moved.damaged, moved.changed) == (2, [damaged_sop], 1)
    after = world.rows(world.other)
    assert after[damaged_sop][0] == key  # left where it was
    assert after[changed_sop][0] == rows[changed_sop][0] + "0"
    # the hot copies of the two moved, the changed row's (no row names it now) and its
    # cold copy (made for nothing)
    assert tiers.free_garbage(world.database, world.blobs, grace=0).erased == 4
    (pack,) = cold.cold_packs(world.blobs.blobs)
    kinds = [type(item).__name__ for item in cold.survey(pack)]
    assert sorted(kinds) == ["Erased", "Found", "Found"]


def test_one_tier_operation_at_a_time_and_the_task_moves_old_studies(
    world: World, database: Database
) -> None:
    held, again = tiers.alone(world.settings.data_dir), tiers.alone(world.settings.data_dir)
    with held, pytest.raises(tiers.TierBusy), again:
        pass
    settings = world.settings.model_copy(update={"cold_after_days": 30})
    assert tier_sweep.moves_due(settings) and not tier_sweep.moves_due(world.settings)
    with database.engine.begin() as conn:
        conn.execute(
            update(Study)
            .where(Study.study_instance_uid == world.ct)
            .values(updated_at=tiers.now() - timedelta(days=31))
        )
    ctx = WorkerContext(settings, database, world.blobs, threading.Event())
    tier_sweep.run_pass(ctx)
    assert all(cold.is_cold(key) for key, _sha in world.rows(world.ct).values())
    assert not any(cold.is_cold(key) for key, _sha in world.rows(world.other).values())
    last = tier_sweep.load(settings)
    assert (last["studies"], last["instances"], last["older_than_days"]) == (1, 6, 30)
    assert not tier_sweep.moves_due(settings)  # not again before tier_sweep_hours
    world.read_back()
    # the task skips its pass while an operator's command holds the lock
    with tiers.alone(world.settings.data_dir):
        tier_sweep.run_pass(ctx)
    assert tiers.free_garbage(world.database, world.blobs, grace=0).waiting == 0
