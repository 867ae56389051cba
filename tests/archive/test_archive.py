"""``pacs-hub archive verify|reindex``: the archive checked against its checksums, and
the index rebuilt from the blobs (ARCHITECTURE.md invariant 5).

Real instances of ../shared/data/dicom stored through the ingest path; blobs damaged
on disk as a failing disk would; the commands run as separate processes, as an
operator runs them, beside (verify) or without (reindex) a running hub.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from pacs_hub.archive.integrity import check_archive
from pacs_hub.archive.reindex import reindex
from pacs_hub.errors import HubError
from pacs_hub.ingest import Ingestor
from pacs_hub.storage import blobs as blobs_module
from pacs_hub.storage import packs
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from tests.conftest import DATA, Hub
from tests.storage.conftest import as_part10, synthetic_dataset

SOURCES = [DATA / "modalities", DATA / "charsets"]


def archive_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pacs-hub archive ARGS`` on ``data_dir``, in a process of its own."""
    env = dict(os.environ, PACS_HUB_DATA_DIR=str(data_dir), COLUMNS="250")
    return subprocess.run(
        [sys.executable, "-m", "pacs_hub.cli", "archive", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def index_of(data_dir: Path) -> Database:
    return Database(f"sqlite:///{data_dir / 'index.sqlite3'}")


def store_files(ingestor: Ingestor, folders: list[Path]) -> list[str]:
    """Store every file of ``folders`` the hub accepts; their SOP Instance UIDs."""
    stored = []
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file()):
        try:
            stored.append(ingestor.ingest(path.read_bytes()).sop_instance_uid)
        except HubError:
            continue  # e.g. a file without File Meta
    return stored


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, list[str]]:
    """A data folder holding the shared modalities and charsets files."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = index_of(data_dir)
    try:
        stored = store_files(Ingestor(database, BlobStore(data_dir)), SOURCES)
    finally:
        database.dispose()
    assert len(stored) > 20
    return data_dir, stored


def snapshot(database: Database) -> dict[str, set[tuple[Any, ...]]]:
    """Every indexed row, without ids, times and senders (what the blobs hold)."""
    queries = {
        "instances": "SELECT i.sop_instance_uid, i.sop_class_uid, s.series_instance_uid,"
        " i.instance_number, i.transfer_syntax_uid, i.specific_character_set, i.rows,"
        " i.columns, i.number_of_frames, i.blob_key, i.sha256, i.size_bytes,"
        " i.metadata_json FROM instances i JOIN series s ON s.id = i.series_pk",
        "series": "SELECT s.series_instance_uid, t.study_instance_uid, s.modality,"
        " s.series_number, s.series_description, s.body_part_examined, s.series_date,"
        " s.series_time, s.station_name, s.num_instances"
        " FROM series s JOIN studies t ON t.id = s.study_pk",
        "studies": "SELECT t.study_instance_uid, p.patient_id, p.issuer_of_patient_id,"
        " t.study_date, t.study_time, t.accession_number, t.study_id, t.study_description,"
        " t.referring_physician_name, t.referring_physician_name_match,"
        " t.modalities_in_study, t.num_series, t.num_instances, t.size_bytes"
        " FROM studies t JOIN patients p ON p.id = t.patient_pk",
        "patients": "SELECT patient_id, issuer_of_patient_id, patient_name,"
        " patient_name_match, patient_name_fuzzy, patient_birth_date, patient_sex,"
        " num_studies, num_series, num_instances, ins, ins_oid, birth_name, given_names,"
        " birth_place, link_method FROM patients",
    }
    with database.engine.connect() as conn:
        return {
            name: {
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in conn.execute(text(sql))
            }
            for name, sql in queries.items()
        }


def blob_key_of(data_dir: Path, sop_instance_uid: str) -> tuple[str, str]:
    database = index_of(data_dir)
    try:
        with database.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT blob_key, study_instance_uid FROM instances i"
                    " JOIN series s ON s.id = i.series_pk JOIN studies t ON t.id = s.study_pk"
                    " WHERE sop_instance_uid = :uid"
                ),
                {"uid": sop_instance_uid},
            ).one()
    finally:
        database.dispose()
    return str(row[0]), str(row[1])


def flip_byte(data_dir: Path, key: str) -> None:
    """Change one of the last bytes of blob ``key`` (a failing disk)."""
    ref = blobs_module.blob_ref(data_dir / "blobs", key)
    at = ref.offset + ref.size - 10
    with ref.file.open("r+b") as fp:
        fp.seek(at)
        byte = fp.read(1)
        fp.seek(at)
        fp.write(bytes([byte[0] ^ 0xFF]))


def remove_index(data_dir: Path) -> None:
    for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        (data_dir / name).unlink(missing_ok=True)


# -- verify ---------------------------------------------------------------------------


def test_verify_reads_back_every_instance_and_names_each_damaged_one(
    archive: tuple[Path, list[str]],
) -> None:
    data_dir, stored = archive
    done = archive_cli(data_dir, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"checked {len(stored)} instance(s) of the archive" in done.stdout
    assert f"{len(stored)} whole, 0 damaged" in done.stdout

    flipped, flipped_study = blob_key_of(data_dir, stored[3])
    flip_byte(data_dir, flipped)
    last, _ = blob_key_of(data_dir, stored[-1])  # the pack's last blob: cut its end off
    pack = blobs_module.blob_ref(data_dir / "blobs", last).file
    os.truncate(pack, pack.stat().st_size - 100)

    done = archive_cli(data_dir, "verify", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["checked"] == len(stored)
    assert report["whole"] == len(stored) - 2
    problems = {d["sop_instance_uid"]: (d["blob"], d["problem"]) for d in report["damaged"]}
    size = blobs_module.blob_ref(data_dir / "blobs", last).size
    assert problems == {
        stored[3]: (flipped, "checksum mismatch"),
        stored[-1]: (last, f"truncated ({size - 100} of {size} bytes)"),
    }
    assert (
        next(d for d in report["damaged"] if d["sop_instance_uid"] == stored[3])[
            "study_instance_uid"
        ]
        == flipped_study
    )

    # The table names each one; a check of another study passes.
    done = archive_cli(data_dir, "verify")
    assert done.returncode == 1
    assert "checksum mismatch" in done.stdout and stored[3] in done.stdout
    assert f"{len(stored) - 2} whole, 2 damaged" in done.stdout
    _, last_study = blob_key_of(data_dir, stored[-1])
    other_study = next(
        study
        for study in (blob_key_of(data_dir, uid)[1] for uid in stored)
        if study not in (flipped_study, last_study)
    )
    done = archive_cli(data_dir, "verify", "--study", other_study, "--json")
    assert done.returncode == 0, done.stdout
    assert 0 < json.loads(done.stdout)["checked"] < len(stored)


def test_verify_says_a_missing_blob_file_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs_module, "PACKED_MAX", 0)  # every blob a file of its own
    database = index_of(tmp_path)
    try:
        ingestor = Ingestor(database, BlobStore(tmp_path))
        study = "1.2.826.0.1.3680043.8.498.1"
        results = [ingestor.ingest(as_part10(synthetic_dataset(study))) for _ in range(3)]
        before = snapshot(database)
        key = BlobStore.key_for(results[1].sha256)
        (tmp_path / "blobs" / key).unlink()
        report = check_archive(database, BlobStore(tmp_path), jobs=2)
        assert (report.checked, report.whole) == (3, 2)
        assert [(d.instance.sop_instance_uid, d.problem) for d in report.damaged] == [
            (results[1].sop_instance_uid, "missing")
        ]
        assert snapshot(database) == before
        other = check_archive(database, BlobStore(tmp_path), study_instance_uid="1.2.3")
        assert (other.checked, other.damaged) == (0, [])
    finally:
        database.dispose()


def test_verify_runs_beside_a_running_hub(hub: Hub, shared_data: Path) -> None:
    hub.cli("import", str(shared_data / "charsets"), check=False)  # one file is refused
    done = hub.cli("archive", "verify", "--json")
    report = json.loads(done.stdout)
    assert report["checked"] > 0 and report["damaged"] == []


# -- reindex --------------------------------------------------------------------------


def test_reindex_rebuilds_a_lost_index_as_ingest_made_it(archive: tuple[Path, list[str]]) -> None:
    data_dir, stored = archive
    database = index_of(data_dir)
    before = snapshot(database)
    database.dispose()
    remove_index(data_dir)

    started = datetime.now(UTC).replace(tzinfo=None)
    done = archive_cli(data_dir, "reindex")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"{len(stored)} blob(s) read: {len(stored)} instance(s) indexed, 0 already" in done.stdout
    )

    database = index_of(data_dir)
    try:
        assert snapshot(database) == before
        with database.engine.connect() as conn:
            times = conn.execute(
                text("SELECT MAX(received_at), MAX(created_at) FROM instances, studies")
            ).one()
        # Stamped with the blobs' time, not now: routing and prefetch see no new arrival.
        assert all(datetime.fromisoformat(str(t)) < started for t in times)
    finally:
        database.dispose()

    again = archive_cli(data_dir, "reindex", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout) == {
        "blobs": len(stored),
        "indexed": 0,
        "already_indexed": len(stored),
        "destroyed": 0,
        "skipped": [],
    }


def test_reindex_completes_an_index_restored_from_an_older_backup(
    tmp_path: Path, shared_data: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = index_of(data_dir)
    ingestor = Ingestor(database, BlobStore(data_dir))
    first = store_files(ingestor, [shared_data / "charsets"])
    database.dispose()
    shutil.copy(
        data_dir / "index.sqlite3", tmp_path / "backup.sqlite3"
    )  # WAL checkpointed on close
    database = index_of(data_dir)
    later = store_files(Ingestor(database, BlobStore(data_dir)), [shared_data / "modalities"])
    whole = snapshot(database)
    database.dispose()
    remove_index(data_dir)
    shutil.copy(tmp_path / "backup.sqlite3", data_dir / "index.sqlite3")

    done = archive_cli(data_dir, "reindex", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["indexed"], report["already_indexed"]) == (len(later), len(first))
    database = index_of(data_dir)
    try:
        assert snapshot(database) == whole
    finally:
        database.dispose()


def test_reindex_reads_past_a_damaged_record_and_says_what_it_could_not_index(
    archive: tuple[Path, list[str]],
) -> None:
    data_dir, stored = archive
    damaged, _ = blob_key_of(data_dir, stored[5])
    flip_byte(data_dir, damaged)
    pack = blobs_module.blob_ref(data_dir / "blobs", damaged).file
    with pack.open("ab") as fp:  # a write a crash cut short: header and part of a blob
        fp.write(packs.HEADER.pack(packs.MAGIC, 50_000, bytes(32)) + b"\0" * 1000)
    remove_index(data_dir)

    done = archive_cli(data_dir, "reindex", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["indexed"] == len(stored) - 1
    _, offset, size = damaged.split(":")
    tail, cut = pack.stat().st_size, packs.HEADER.size + 1000
    start = int(offset) - packs.HEADER.size
    assert report["skipped"] == [
        {
            "kind": "damaged",
            "where": f"packs/{pack.name}@{start}+{int(size) + packs.HEADER.size}",
            "reason": "damaged record",
            "sop_instance_uid": stored[5],  # its header still reads: which instance to fetch again
        },
        {
            "kind": "incomplete end",
            "where": f"packs/{pack.name}@{tail - cut}+{cut}",
            "reason": "no whole record",
            "sop_instance_uid": "",
        },
    ]
    database = index_of(data_dir)
    try:
        indexed = {row[0] for row in snapshot(database)["instances"]}
    finally:
        database.dispose()
    assert indexed == set(stored) - {stored[5]}


@pytest.mark.parametrize("jobs", [1, 2])  # read here, or by two processes: the same order
def test_reindex_keeps_the_indexed_instance_over_a_blob_with_other_bytes(
    tmp_path: Path, jobs: int
) -> None:
    database = index_of(tmp_path)
    blobs = BlobStore(tmp_path)
    try:
        first = synthetic_dataset("1.2.826.0.1.3680043.8.498.2", comment="first")
        kept = Ingestor(database, blobs).ingest(as_part10(first))
        other = as_part10(
            synthetic_dataset(
                "1.2.826.0.1.3680043.8.498.2",
                first.SeriesInstanceUID,
                sop_instance_uid=first.SOPInstanceUID,
                comment="second",
            )
        )
        stray = blobs.put(other, blobs_module.sha256_hex(other))  # written, never indexed
        report = reindex(database, blobs, jobs=jobs)
        assert (report.blobs, report.indexed, report.already) == (2, 0, 1)
        assert [(s.where, s.sop_instance_uid) for s in report.conflicts] == [
            (stray, first.SOPInstanceUID)
        ]
        assert report.problems == 1
        with database.engine.connect() as conn:
            assert conn.execute(text("SELECT sha256 FROM instances")).scalar_one() == kept.sha256
    finally:
        database.dispose()


def test_reindex_into_a_fresh_index_on_either_database(tmp_path: Path, database: Database) -> None:
    """The same rows whether the rebuilt index is SQLite or PostgreSQL."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    original = index_of(data_dir)
    try:
        store_files(Ingestor(original, BlobStore(data_dir)), [DATA / "charsets"])
        expected = snapshot(original)
    finally:
        original.dispose()
    report = reindex(database, BlobStore(data_dir))
    assert report.problems == 0 and report.indexed == len(expected["instances"])
    assert snapshot(database) == expected


def test_reindex_refuses_while_a_hub_runs_on_the_folder(hub: Hub) -> None:
    done = hub.cli("archive", "reindex", check=False)
    assert done.returncode == 2
    said = " ".join(done.stdout.split())
    assert f"error: a hub runs on data folder {hub.data_dir} (pid {hub.process.pid})" in said
    assert "stop it before rebuilding the index" in said
