"""Storage fixtures: a real PostgreSQL server, fresh index databases, synthetic instances."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import create_engine, text

from pacs_hub.dicom.part10 import part10_bytes
from pacs_hub.storage.database import Database
from tests.conftest import free_port

PG_BIN = Path(os.environ.get("PACS_HUB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class PostgresServer:
    """A throw-away PostgreSQL cluster on loopback."""

    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"hub_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)


def _as_postgres(*args: str) -> list[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return [*prefix, *args]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a temp dir (as the postgres user when we are root)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="pacs-hub-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pgdata, port = root / "data", free_port()
    subprocess.run(
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = str(PG_BIN / "pg_ctl")
    log = str(root / "server.log")
    subprocess.run(
        _as_postgres(pg_ctl, "-D", str(pgdata), "-o", options, "-l", log, "-w", "start"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield PostgresServer("127.0.0.1", port, "postgres")
    finally:
        subprocess.run(
            _as_postgres(pg_ctl, "-D", str(pgdata), "-m", "immediate", "-w", "stop"),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated index on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    db = Database(url)
    yield db
    db.dispose()


def synthetic_dataset(
    study_uid: str,
    series_uid: str | None = None,
    *,
    sop_instance_uid: str | None = None,
    modality: str = "OT",
    pixel_bytes: int = 64,
    patient_id: str = "SYNTH-1",
    comment: str = "",
) -> Dataset:
    """A Secondary Capture instance (PS3.3 A.8.1) with about ``pixel_bytes`` of pixels."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^Test"
    ds.Modality = modality
    ds.ConversionType = "WSD"
    ds.ImageComments = comment
    ds.Columns = min(pixel_bytes, 1024)
    ds.Rows = max(1, pixel_bytes // ds.Columns)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(i % 251 for i in range(ds.Rows * ds.Columns))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    """The dataset encoded in Explicit VR Little Endian, without File Meta."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def as_part10(ds: Dataset) -> bytes:
    """The Part 10 file the hub stores for ``ds`` received in Explicit VR LE."""
    return part10_bytes(
        dataset_bytes(ds), ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian
    )


def hot_path_taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What IndexHotPath.add_instance answers, call by call (True: it indexed)."""
    from pacs_hub.storage.index_hot_path import IndexHotPath

    taken: list[bool] = []
    original = IndexHotPath.add_instance

    def spy(self: IndexHotPath, *args: Any) -> bool:
        taken.append(original(self, *args))
        return taken[-1]

    monkeypatch.setattr(IndexHotPath, "add_instance", spy)
    return taken


@pytest.fixture
def data_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors pack writers ``fdatasync`` from now on, in order (the syncs
    still happen)."""
    from pacs_hub.storage import packs

    synced: list[int] = []
    real = packs._sync
    monkeypatch.setattr(packs, "_sync", lambda fd: (synced.append(fd), real(fd)))
    return synced
