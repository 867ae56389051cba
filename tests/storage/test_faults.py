"""Faults: malformed input, unsupported SOP classes, duplicates, kill -9, disk full.

ARCHITECTURE.md invariants 2 (durable before acknowledged), 3 (idempotent) and 7
(bad input gets a clear answer and never corrupts what was stored), checked through
the ingest path directly and through C-STORE (PS3.4 B.2.3 statuses) against a real hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config

from pacs_hub.dicom.part10 import normalise_part10, part10_bytes, read_file_meta
from pacs_hub.errors import HubError, InvalidInstance, MissingAttribute, UnsupportedSOPClass
from pacs_hub.gateway.server import enable_tcp_nodelay_on_requests
from pacs_hub.ingest import Ingestor
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from tests.blobs import blob_of
from tests.conftest import DATA, Hub, dcmtk, start_hub, wait_until
from tests.storage.conftest import as_part10, dataset_bytes, synthetic_dataset

MALFORMED = DATA / "malformed"
NO_DICM = (InvalidInstance, r"not a DICOM Part 10 file: no 'DICM' prefix at byte 128")
NO_SOP_CLASS = (MissingAttribute, r"missing SOPClassUID$")
NO_META_CLASS = (MissingAttribute, r"File Meta has no MediaStorageSOPClassUID \(0002,0002\)")
# Every file of malformed/: None = stored byte-identically, else (error, message).
EXPECTED: dict[str, tuple[type[HubError], str] | None] = {
    "bad_vr_value_rtdose.dcm": (InvalidInstance, r"UID differs from the announced one: 1\.9\."),
    "ct_invalid_sequence_as_un.dcm": (InvalidInstance, r"invalid SOPInstanceUID 'dccc95"),
    "ct_tcia_almost_all_vr_un.dcm": None,
    "empty_specific_charset.dcm": NO_META_CLASS,
    "enhanced_mr_j2k_truncated.dcm": (InvalidInstance, r"truncated dataset: End of file"),
    "explicit_big_endian_no_meta.dcm": NO_DICM,
    "explicit_little_endian_no_meta.dcm": NO_DICM,
    "j2k_embedded_sequence_delimiter.dcm": None,
    "meta_missing_transfer_syntax.dcm": (MissingAttribute, r"no TransferSyntaxUID \(0002,0010"),
    "mr_truncated_pixel_data.dcm": (InvalidInstance, r"\(7FE0,0010\): 8130 of 8192 bytes"),
    "nested_private_sq.dcm": NO_META_CLASS,
    "no_meta_ct.dcm": NO_DICM,
    "no_meta_group_length.dcm": NO_SOP_CLASS,
    "private_sq_undefined_length_item.dcm": NO_SOP_CLASS,
    "rgb_3x3_odd_length_pixel_data.dcm": None,
    "rtplan_truncated.dcm": (InvalidInstance, r"\(300A,00B0\): 711 of 976 bytes present"),
    "un_private_sequence.dcm": NO_SOP_CLASS,
}
FIND_SOP_CLASS = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root Q/R FIND: not storage
SUCCESS, OUT_OF_RESOURCES, CONFLICT = 0x0000, 0xA700, 0xA900


Snapshot = tuple[dict[str, tuple[str, str]], dict[str, int]]


def snapshot(data_dir: Path, index: Path) -> Snapshot:
    """(SOP Instance UID -> (sha256, blob key)) of the index, and every file of the blob
    store (pack files and blob files) with its size: equal snapshots, nothing written."""
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
        rows = db.execute("select sop_instance_uid, sha256, blob_key from instances").fetchall()
    blobs = {
        str(p.relative_to(data_dir / "blobs")): p.stat().st_size
        for p in (data_dir / "blobs").rglob("*")
        if p.is_file()
    }
    return {uid: (sha, key) for uid, sha, key in rows}, blobs


def hub_snapshot(hub: Hub) -> Snapshot:
    return snapshot(hub.data_dir, hub.data_dir / "index.sqlite3")


def assert_blobs_match_index(data_dir: Path, rows: dict[str, tuple[str, str]]) -> None:
    """Every index row points at a complete blob whose SHA-256 is the indexed one."""
    for uid, (sha, key) in rows.items():
        blob = blob_of(data_dir, key)
        assert blob.file.is_file(), f"{uid}: blob {key} missing"
        data = blob.read_bytes()
        assert len(data) == blob.size, f"{uid}: blob {key} cut short"
        assert hashlib.sha256(data).hexdigest() == sha, f"{uid}: blob corrupt"


def send(hub: Hub, items: list[Dataset | Path], **ae_options: float) -> list[Dataset | None]:
    """C-STORE each item over one association; the status dataset of each (None: no answer)."""
    enable_tcp_nodelay_on_requests()  # else every C-STORE waits ~40 ms on Nagle
    ae = AE(ae_title="FAULT_SCU")
    for name, value in ae_options.items():
        setattr(ae, name, value)
    for sop_class, syntax in {_context_of(item) for item in items}:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title=hub.ae_title)
    assert assoc.is_established, "hub refused the association"
    try:
        return [assoc.send_c_store(item) or None for item in items]
    finally:
        assoc.release()


def _context_of(item: Dataset | Path) -> tuple[str, str]:
    if isinstance(item, Dataset):
        return str(item.SOPClassUID), str(item.file_meta.TransferSyntaxUID)
    meta = read_file_meta(item.read_bytes())
    return meta.sop_class_uid, meta.transfer_syntax_uid


def status_of(answer: Dataset | None) -> int:
    assert answer is not None and "Status" in answer, "no C-STORE response"
    return int(answer.Status)


# --- malformed files, through the ingest path directly -------------------------------


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Ingestor, Path]]:
    """An ingestor on a fresh SQLite index, already holding one good instance."""
    data_dir = tmp_path / "data"
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    ingestor = Ingestor(database, BlobStore(data_dir))
    ingestor.ingest(as_part10(synthetic_dataset(generate_uid())))
    yield ingestor, data_dir
    database.dispose()


def test_every_malformed_file_is_classified() -> None:
    assert {p.name for p in MALFORMED.iterdir()} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_via_ingest(name: str, seeded: tuple[Ingestor, Path]) -> None:
    ingestor, data_dir = seeded
    index = data_dir.parent / "index.sqlite3"
    data = (MALFORMED / name).read_bytes()
    before = snapshot(data_dir, index)
    expected = EXPECTED[name]
    if expected is None:
        result = ingestor.ingest(normalise_part10(data))
        _sha, key = snapshot(data_dir, index)[0][result.sop_instance_uid]
        stored = ingestor.blobs.read(key)
        assert stored == normalise_part10(data)
        assert stored.endswith(data[read_file_meta(data).dataset_offset :])
        assert len(snapshot(data_dir, index)[0]) == len(before[0]) + 1
    else:
        error, message = expected
        with pytest.raises(error, match=message):
            ingestor.ingest(normalise_part10(data))
        assert snapshot(data_dir, index) == before
    assert_blobs_match_index(data_dir, snapshot(data_dir, index)[0])
    assert list((data_dir / "tmp").iterdir()) == []


# --- malformed files, through C-STORE -------------------------------------------------


@pytest.fixture(scope="module")
def module_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(tmp_path_factory.mktemp("faults") / "data")
    yield running
    running.stop()


def _guessed_context(raw: bytes) -> tuple[str, str, str]:
    """SOP Class, SOP Instance and transfer syntax of a dataset without File Meta."""
    try:
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw), force=True)
        implicit, little = ds.original_encoding
    except Exception:  # unreadable: send it anyway under default values
        return SecondaryCaptureImageStorage, generate_uid(), ImplicitVRLittleEndian
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    sop_class = str(ds.get("SOPClassUID", "")) or SecondaryCaptureImageStorage
    return sop_class, str(ds.get("SOPInstanceUID", "")) or generate_uid(), syntax


def as_sendable(path: Path, folder: Path) -> tuple[Path, bool]:
    """A Part 10 file pynetdicom can send raw (chunked), and whether ``path`` already was."""
    data = path.read_bytes()
    if data[128:132] == b"DICM":
        meta = read_file_meta(data)
        if meta.sop_class_uid and meta.sop_instance_uid and meta.transfer_syntax_uid:
            return path, True
        raw = data[meta.dataset_offset :]
        sop_class, sop_instance, syntax = _guessed_context(raw)
        syntax = meta.transfer_syntax_uid or syntax
    else:
        raw = data
        sop_class, sop_instance, syntax = _guessed_context(raw)
    out = folder / path.name
    out.write_bytes(part10_bytes(raw, sop_class, sop_instance, syntax))
    return out, False


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_via_c_store(
    name: str, module_hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The raw dataset bytes go on the wire (pynetdicom chunked mode, no re-encoding)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    path, sent_as_is = as_sendable(MALFORMED / name, tmp_path)
    before = hub_snapshot(module_hub)
    (answer,) = send(module_hub, [path])
    code = status_of(answer)
    after = hub_snapshot(module_hub)
    if code == SUCCESS:
        meta = read_file_meta(path.read_bytes())
        sha, key = after[0][meta.sop_instance_uid]
        blob = blob_of(module_hub.data_dir, key).read_bytes()
        assert blob == normalise_part10(path.read_bytes())
        assert hashlib.sha256(blob).hexdigest() == sha
    else:
        assert answer is not None and str(answer.get("ErrorComment", "")).strip()
        assert after == before
    expected = EXPECTED[name]
    if sent_as_is:  # the same bytes as the direct ingest: the same verdict
        assert code == (SUCCESS if expected is None else expected[0].dicom_status)
    assert_blobs_match_index(module_hub.data_dir, after[0])


# --- unsupported SOP class and duplicates ---------------------------------------------


def test_unsupported_sop_class(seeded: tuple[Ingestor, Path], module_hub: Hub) -> None:
    ds = synthetic_dataset(generate_uid())
    ds.SOPClassUID = FIND_SOP_CLASS  # the context still says Secondary Capture
    ingestor, data_dir = seeded
    before = snapshot(data_dir, data_dir.parent / "index.sqlite3")
    with pytest.raises(UnsupportedSOPClass, match=f"SOP Class {FIND_SOP_CLASS} is not a storage"):
        ingestor.ingest(as_part10(ds))
    assert snapshot(data_dir, data_dir.parent / "index.sqlite3") == before
    hub_before = hub_snapshot(module_hub)
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    wire = Dataset()
    wire.update(ds)
    wire.file_meta = ds.file_meta
    (answer,) = _send_under_context(module_hub, wire, SecondaryCaptureImageStorage)
    assert status_of(answer) == UnsupportedSOPClass.dicom_status
    assert answer is not None and "not a storage SOP class" in answer.ErrorComment
    assert hub_snapshot(module_hub) == hub_before


def _send_under_context(hub: Hub, ds: Dataset, sop_class: str) -> list[Dataset | None]:
    """Send ``ds`` raw under a presentation context for ``sop_class``."""
    path = Path(hub.data_dir.parent / f"{ds.SOPInstanceUID}.dcm")
    path.write_bytes(
        part10_bytes(dataset_bytes(ds), sop_class, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    )
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return send(hub, [path])
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def test_duplicates_keep_first(module_hub: Hub) -> None:
    study = generate_uid()
    first = synthetic_dataset(study, comment="first")
    again = synthetic_dataset(
        study, first.SeriesInstanceUID, comment="first", sop_instance_uid=first.SOPInstanceUID
    )
    other = synthetic_dataset(
        study, first.SeriesInstanceUID, comment="other bytes", sop_instance_uid=first.SOPInstanceUID
    )
    answers = send(module_hub, [first, again])
    assert [status_of(a) for a in answers] == [SUCCESS, SUCCESS]
    rows, blobs = hub_snapshot(module_hub)
    assert rows[first.SOPInstanceUID][0] == hashlib.sha256(as_part10(first)).hexdigest()
    (answer,) = send(module_hub, [other])
    assert status_of(answer) == CONFLICT
    assert answer is not None and "already stored with other content" in answer.ErrorComment
    assert hub_snapshot(module_hub) == (rows, blobs)


def test_duplicates_replace_policy(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "data", PACS_HUB_DUPLICATE_POLICY="replace")
    try:
        first = synthetic_dataset(generate_uid(), comment="first")
        other = synthetic_dataset(
            first.StudyInstanceUID,
            first.SeriesInstanceUID,
            comment="second",
            sop_instance_uid=first.SOPInstanceUID,
        )
        assert [status_of(a) for a in send(hub, [first, other])] == [SUCCESS, SUCCESS]
        rows, _ = hub_snapshot(hub)
        assert rows[first.SOPInstanceUID][0] == hashlib.sha256(as_part10(other)).hexdigest()
        assert len(rows) == 1
        assert_blobs_match_index(hub.data_dir, rows)
    finally:
        hub.stop()


# --- kill -9 during a bulk ingest -----------------------------------------------------


def _kill_hard(hub: Hub) -> None:
    """SIGKILL the hub's gateway processes and the hub itself (a crash, no shutdown)."""
    pid = hub.process.pid
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    hub.process.send_signal(signal.SIGKILL)
    hub.process.wait(timeout=30)


def _sender(hub: Hub, batches: list[list[Dataset]], acked: list[str]) -> None:
    """Send batch after batch, one association each; record every Success received."""
    enable_tcp_nodelay_on_requests()
    for batch in batches:
        ae = AE(ae_title="CRASH_SCU")
        ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = 10
        ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title=hub.ae_title)
        if not assoc.is_established:
            return
        for ds in batch:
            answer = assoc.send_c_store(ds)
            if not answer or "Status" not in answer:
                return  # the hub died: this instance was not acknowledged
            if answer.Status == SUCCESS:
                acked.append(str(ds.SOPInstanceUID))
        assoc.release()


def test_kill_9_during_bulk_ingest_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    hub = start_hub(data_dir, processes=2)
    studies = [generate_uid() for _ in range(6)]
    datasets = [synthetic_dataset(studies[n % 6], pixel_bytes=4096) for n in range(600)]
    acked: list[str] = []
    threads = [
        threading.Thread(
            target=_sender,
            args=(hub, [datasets[s : s + 50] for s in range(t * 150, (t + 1) * 150, 50)], acked),
        )
        for t in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acked) >= 150, timeout=120, what="150 acknowledgements")
        _kill_hard(hub)
    finally:
        hub.stop()
        for thread in threads:
            thread.join(timeout=60)
    assert 150 <= len(acked) < len(datasets), "the crash must interrupt the transfer"
    orphan = data_dir / "tmp" / "0123456789abcdef.part"
    orphan.write_bytes(b"half a blob")
    hub = start_hub(data_dir, processes=2)
    try:
        assert not orphan.exists()
        rows, _ = hub_snapshot(hub)
        assert set(acked) <= set(rows)
        assert_blobs_match_index(data_dir, rows)
        answers = send(hub, list(datasets))  # idempotent resend: all Success, stored once
        assert {status_of(a) for a in answers} == {SUCCESS}
        rows, _ = hub_snapshot(hub)
        assert set(rows) == {str(ds.SOPInstanceUID) for ds in datasets}
        assert_blobs_match_index(data_dir, rows)
    finally:
        hub.stop()


# --- disk full ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted as the data folder (root only); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "data"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_answers_out_of_resources(small_disk: Path, tmp_path: Path) -> None:
    index = tmp_path / "index.sqlite3"
    hub = start_hub(small_disk, PACS_HUB_DATABASE_URL=f"sqlite:///{index}")
    try:
        study = generate_uid()
        datasets = [synthetic_dataset(study, pixel_bytes=100_000) for _ in range(40)]
        answers = send(hub, list(datasets))
        codes = [status_of(a) for a in answers]
        stored = codes.count(SUCCESS)
        assert stored >= 5 and codes == [SUCCESS] * stored + [OUT_OF_RESOURCES] * (40 - stored)
        assert all("storage full" in str(a.ErrorComment) for a in answers[stored:] if a)
        assert hub.process.poll() is None
        subprocess.run([dcmtk("echoscu"), "127.0.0.1", str(hub.dicom_port)], check=True, timeout=30)
        rows, _ = snapshot(small_disk, index)
        assert set(rows) == {str(ds.SOPInstanceUID) for ds in datasets[:stored]}
        assert_blobs_match_index(small_disk, rows)
        assert list((small_disk / "tmp").iterdir()) == []
    finally:
        hub.stop()
