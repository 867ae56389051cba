"""Storage tiers on a running hub: real CT slices sent by dcmtk storescu, the study moved
to the cold tier by ``pacs-hub archive tier move`` (a process of its own, as an operator
runs it), then served byte for byte by dcmtk movescu (C-MOVE, its cache emptied first),
getscu (C-GET), WADO-RS and the frames of the viewer, verified by
``pacs-hub archive verify``, recalled, the replaced copies erased."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from pacs_hub.dicom.part10 import read_file_meta
from pacs_hub.storage import cold
from pacs_hub.storage.blobs import BlobStore
from tests.archive.test_tiers import hot_records
from tests.backup.storescp import running_storescp
from tests.blobs import stored_bytes, study_blob_keys
from tests.conftest import Hub, dcmtk, start_hub
from tests.dicomweb.test_wado import AS_STORED, OHIF_FRAMES, multipart
from tests.gateway.test_roundtrip import received_by_uid
from tests.regional.study_factory import storescu
from tests.storage.test_cold import CT_FOLDER

SLICES = 8


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = start_hub(tmp_path_factory.mktemp("tiers") / "data")
    try:
        yield hub
    finally:
        hub.stop()


def ct_files() -> list[Path]:
    files = sorted(path for path in CT_FOLDER.rglob("*") if path.is_file())
    found = [path for path in files if path.read_bytes()[128:132] == b"DICM"]
    return found[:SLICES]


def as_stored(hub: Hub, study: str) -> dict[str, bytes]:
    """SOP Instance UID -> bytes of every instance of ``study`` sent by WADO-RS as stored."""
    response = httpx.get(f"{hub.url}/dicom-web/studies/{study}", headers=AS_STORED, timeout=60)
    assert response.status_code == 200, response.text
    found = {}
    for _header, data in multipart(response):
        found[str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).SOPInstanceUID)] = data
    return found


def getscu(hub: Hub, study: str, into: Path) -> dict[str, Path]:
    into.mkdir()
    args = [dcmtk("getscu"), "-S", "+xe", "+B", "-aet", "VIEWER", "-aec", hub.ae_title,
            "-od", str(into), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(hub.dicom_port)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return received_by_uid(into)


def assert_sent_as_stored(received: dict[str, Path], stored: dict[str, bytes]) -> None:
    """Every stored instance was received, its dataset bytes unchanged on the wire."""
    assert set(received) == set(stored)
    for sop, path in received.items():
        data, sent = path.read_bytes(), stored[sop]
        assert (
            data[read_file_meta(data).dataset_offset :]
            == (sent[read_file_meta(sent).dataset_offset :])
        )


def movescu(hub: Hub, study: str, into: Path) -> dict[str, Path]:
    """The study C-MOVEd by dcmtk movescu to a dcmtk storescp registered as a node."""
    with running_storescp("COLD_DEST", into) as port:
        hub.cli("nodes", "add", "COLD_DEST", "127.0.0.1", str(port))
        args = [dcmtk("movescu"), "-v", "-S", "-aec", hub.ae_title, "-aem", "COLD_DEST",
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                "127.0.0.1", str(hub.dicom_port)]  # fmt: skip
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Received Final Move Response (Success)" in result.stderr
    return received_by_uid(into)


def test_a_cold_study_is_served_byte_for_byte_by_every_door(hub: Hub, tmp_path: Path) -> None:
    files = ct_files()
    storescu("CT_A", hub.ae_title, hub.dicom_port, files)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    before = as_stored(hub, study)
    assert len(before) == SLICES
    moved = json.loads(hub.cli("archive", "tier", "move", "--study", study, "--json").stdout)
    assert moved[0]["instances"] == SLICES and moved[0]["damaged"] == []
    assert moved[0]["stored_bytes"] < 0.7 * moved[0]["bytes"]
    assert all(cold.is_cold(key) for key in study_blob_keys(hub.data_dir, study).values())
    # freed only after the grace period (a reader may hold the old place)
    waiting = json.loads(hub.cli("archive", "tier", "free", "--json").stdout)
    assert waiting == {"erased": 0, "kept": 0, "waiting": 2 * SLICES}
    freed = json.loads(hub.cli("archive", "tier", "free", "--grace", "0", "--json").stdout)
    assert freed == {"erased": SLICES, "kept": SLICES, "waiting": 0}
    assert hot_records(BlobStore(hub.data_dir))[0] == 0  # nothing left hot

    # C-MOVE with the cache emptied: each instance decompressed as its turn comes
    cold.clear_cache(BlobStore(hub.data_dir).blobs)
    assert_sent_as_stored(movescu(hub, study, tmp_path / "move"), before)
    assert as_stored(hub, study) == before  # WADO-RS: the stored files, unchanged
    assert stored_bytes(hub.data_dir) == before
    assert_sent_as_stored(getscu(hub, study, tmp_path / "get"), before)
    sop = sorted(before)[0]
    series = str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(before[sop])).SeriesInstanceUID)
    frame = httpx.get(
        f"{hub.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers=OHIF_FRAMES,
        timeout=60,
    )
    assert frame.status_code == 200
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(before[sop]))
    ((_header, pixels),) = multipart(frame)
    assert pixels == ds.PixelData[: ds.Rows * ds.Columns * ds.BitsAllocated // 8]

    status = json.loads(hub.cli("archive", "tier", "status", "--json").stdout)
    assert status["tiers"]["cold"]["instances"] == SLICES
    assert status["cold_ratio"] > 1.4 and status["cache"]["files"] == SLICES
    by_api = httpx.get(f"{hub.url}/api/archive/tiers", timeout=30).json()
    assert by_api["tiers"] == status["tiers"] and by_api["last_pass"] is None
    verified = hub.cli("archive", "verify", "--json")
    assert json.loads(verified.stdout)["damaged"] == []

    recalled = json.loads(hub.cli("archive", "tier", "recall", "--study", study, "--json").stdout)
    assert recalled[0]["instances"] == SLICES
    hub.cli("archive", "tier", "free", "--grace", "0")
    assert not any(cold.is_cold(key) for key in study_blob_keys(hub.data_dir, study).values())
    assert as_stored(hub, study) == before


def test_bad_tier_commands_are_refused_and_change_nothing(hub: Hub) -> None:
    keys = study_blob_keys(hub.data_dir, "1.2.3")
    unknown = hub.cli("archive", "tier", "move", "--study", "1.2.3", check=False)
    assert unknown.returncode != 0 and "no study 1.2.3" in unknown.stdout + unknown.stderr
    nothing = hub.cli("archive", "tier", "move", check=False)
    assert nothing.returncode == 2 and "--older-than" in nothing.stdout + nothing.stderr
    assert study_blob_keys(hub.data_dir, "1.2.3") == keys
    listed = hub.cli("archive", "tier", "move", "--older-than", "0", "--dry-run", "--json")
    assert isinstance(json.loads(listed.stdout), list)
