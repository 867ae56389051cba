"""``pacs-hub import``: folders, zip archives, DICOMDIR media, through the one ingest path."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet

from pacs_hub.dicom.part10 import normalise_part10
from pacs_hub.importer import MEDIA_STORAGE_DIRECTORY
from tests.blobs import blob_of
from tests.conftest import Hub, dcmtk
from tests.storage.test_faults import EXPECTED, MALFORMED, assert_blobs_match_index, snapshot

CT_VOLUME = Path("volumes") / "ct_philips_ingenuity_head_phantom_axial_5mm"
MR_4D = Path("volumes") / "mr_ge_mr750_epi_fmri_4d"
SUMMARY = re.compile(r"(\d+) stored, (\d+) duplicate \(already stored, skipped\), (\d+) rejected")


def pacs_import(data_dir: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``pacs-hub import ARGS`` on ``data_dir`` (a separate process, as a user would)."""
    env = dict(os.environ, PACS_HUB_DATA_DIR=str(data_dir), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "pacs_hub.cli", "import", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def summary(done: subprocess.CompletedProcess[str]) -> tuple[int, int, int]:
    """(stored, duplicate, rejected) from the report's last line."""
    found = SUMMARY.search(done.stdout)
    assert found, f"no summary in: {done.stdout}\n{done.stderr}"
    stored, duplicate, rejected = (int(g) for g in found.groups())
    return stored, duplicate, rejected


def index_rows(data_dir: Path) -> dict[str, tuple[str, str]]:
    return snapshot(data_dir, data_dir / "index.sqlite3")[0]


def test_help_documents_the_exit_status() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pacs_hub.cli", "import", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert done.returncode == 0
    assert "1 when a file was rejected" in done.stdout


def test_import_gives_the_blobs_c_store_gives(hub: Hub, shared_data: Path) -> None:
    """dcmtk storescu first, then import of the same files: every file is a duplicate."""
    folder = shared_data / CT_VOLUME
    subprocess.run(
        [dcmtk("storescu"), "-aec", hub.ae_title, "127.0.0.1", str(hub.dicom_port), "+sd", folder],
        check=True,
        timeout=120,
    )
    before = snapshot(hub.data_dir, hub.data_dir / "index.sqlite3")
    done = pacs_import(hub.data_dir, folder)
    assert done.returncode == 0, done.stdout
    assert summary(done) == (0, 28, 0)
    assert snapshot(hub.data_dir, hub.data_dir / "index.sqlite3") == before


def test_folder_import_is_recursive_and_idempotent(tmp_path: Path, shared_data: Path) -> None:
    data_dir = tmp_path / "data"
    first = pacs_import(data_dir, shared_data / "volumes")
    assert (first.returncode, summary(first)) == (0, (241, 0, 0))
    rows = index_rows(data_dir)
    assert len(rows) == 241
    assert_blobs_match_index(data_dir, rows)
    again = pacs_import(data_dir, shared_data / "volumes")
    assert (again.returncode, summary(again)) == (0, (0, 241, 0))
    assert index_rows(data_dir) == rows


def test_zip_members_are_imported_one_by_one(tmp_path: Path, shared_data: Path) -> None:
    files = sorted((shared_data / CT_VOLUME).iterdir())[:6]
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, f"nested/{path.name}")
        zf.writestr("README.txt", "not DICOM")
        zf.writestr("media/DICOMDIR", b"skipped: a media index, never an instance")
    data_dir = tmp_path / "data"
    done = pacs_import(data_dir, archive, "--received-from", "ZIP_IMPORT")
    assert done.returncode == 1
    assert summary(done) == (6, 0, 1)
    assert f"rejected {archive}:README.txt: not a DICOM Part 10 file" in done.stdout
    rows = index_rows(data_dir)
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    assert set(rows) == expected
    for path in files:  # the blob is the file with the hub's own File Meta
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        blob = blob_of(data_dir, rows[uid][1]).read_bytes()
        assert blob == normalise_part10(path.read_bytes())
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        senders = {s for (s,) in db.execute("select received_from_ae from instances")}
    assert senders == {"ZIP_IMPORT"}


def test_dicomdir_is_followed_not_stored(tmp_path: Path, shared_data: Path) -> None:
    fileset = FileSet()
    sources = sorted((shared_data / MR_4D).iterdir())[:5]
    for path in sources:
        fileset.add(pydicom.dcmread(path))
    media = tmp_path / "media"
    fileset.write(media)
    data_dir = tmp_path / "data"
    done = pacs_import(data_dir, media / "DICOMDIR")
    assert (done.returncode, summary(done)) == (0, (5, 0, 0))
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        classes = {c for (c,) in db.execute("select sop_class_uid from instances")}
    assert MEDIA_STORAGE_DIRECTORY not in classes
    assert set(index_rows(data_dir)) == {str(pydicom.dcmread(p).SOPInstanceUID) for p in sources}
    walked = pacs_import(data_dir, media)  # in a folder walk the DICOMDIR is skipped
    assert (walked.returncode, summary(walked)) == (0, (0, 5, 0))


def test_malformed_files_are_reported_one_by_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = pacs_import(data_dir, MALFORMED)
    assert done.returncode == 1
    refused = {name: rule for name, rule in EXPECTED.items() if rule is not None}
    assert summary(done) == (len(EXPECTED) - len(refused), 0, len(refused))
    for name, (_error, message) in refused.items():
        line = next(
            x for x in done.stdout.splitlines() if x.startswith(f"rejected {MALFORMED}/{name}:")
        )
        assert re.search(message, line), line
    rows = index_rows(data_dir)
    assert len(rows) == len(EXPECTED) - len(refused)
    assert_blobs_match_index(data_dir, rows)


def test_received_from_longer_than_an_ae_title_is_a_usage_error(tmp_path: Path) -> None:
    done = pacs_import(tmp_path / "data", tmp_path, "--received-from", "X" * 17)
    assert done.returncode == 2
    assert "at most 16 characters" in done.stdout + done.stderr


@pytest.mark.parametrize("workers", ["1", "8"])
def test_workers_do_not_change_the_outcome(tmp_path: Path, shared_data: Path, workers: str) -> None:
    data_dir = tmp_path / "data"
    done = pacs_import(data_dir, shared_data / "charsets", "--workers", workers)
    assert done.returncode == 1  # FileInfo.txt, conflicts and meta mismatches
    stored, duplicate, rejected = summary(done)
    assert (stored, duplicate) == (len(index_rows(data_dir)), 0)
    assert "rejected" in done.stdout and rejected == 6
