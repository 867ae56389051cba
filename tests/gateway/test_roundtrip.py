"""Every shared DICOM file round-trips byte-identical through a real hub process.

The hub under test is a ``pacs-hub serve`` process; the peers are dcmtk 3.6.7 tools
(by path) and pynetdicom:

* C-STORE in, bytes preserved: pynetdicom sends each file's dataset bytes exactly as
  they are in the file (its chunked-file send, no decode). dcmtk storescu cannot be
  the sender for this check: it re-encodes what it sends (undefined-length sequences
  and items get explicit lengths, group lengths are recomputed, the deflated stream
  is re-deflated), so about 20 files would differ before reaching the hub.
* C-STORE in with dcmtk storescu: a separate test checks that the hub stores every
  file storescu sends and refuses exactly the listed ones.
* Out: dcmtk movescu (C-MOVE to a dcmtk storescp, bit-preserving, started here and
  registered with ``pacs-hub nodes add``) and dcmtk getscu (C-GET, bit-preserving).
  The received dataset bytes (everything after the File Meta group) must equal the
  originals'. getscu proposes one family of transfer syntaxes per run, so it runs
  once per transfer syntax with the matching preference option.
"""

from __future__ import annotations

import io
import re
import socket
import sqlite3
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from pacs_hub.dicom.part10 import dataset_offset, part10_bytes
from tests.blobs import stored_bytes
from tests.conftest import DATA, Hub, dcmtk, free_port, start_hub, wait_until

HTJ2K = "1.2.840.10008.1.2.4.203"
IMPLICIT_LE = "1.2.840.10008.1.2"
# dcmtk 3.6.7 option proposing (storescu -x..) / preferring (getscu +x..) each syntax.
DCMTK_SYNTAX = {
    "1.2.840.10008.1.2": "xi",
    "1.2.840.10008.1.2.1": "xe",
    "1.2.840.10008.1.2.2": "xb",
    "1.2.840.10008.1.2.1.99": "xd",
    "1.2.840.10008.1.2.5": "xr",
    "1.2.840.10008.1.2.4.50": "xy",
    "1.2.840.10008.1.2.4.51": "xx",
    "1.2.840.10008.1.2.4.70": "xs",
    "1.2.840.10008.1.2.4.80": "xt",
    "1.2.840.10008.1.2.4.90": "xv",
    "1.2.840.10008.1.2.4.91": "xw",
}
NOT_DICOM = {"README.md", "SHA256SUMS", "FileInfo.txt"}
# Not sendable by any C-STORE (a C-STORE needs Affected SOP Class / Instance UIDs).
UNSENDABLE = {
    "charsets/clunie/chrSQEncoding.dcm": "no SOP Class UID or SOP Instance UID",
    "charsets/clunie/chrSQEncoding1.dcm": "no SOP Class UID or SOP Instance UID",
}
# Sent, and refused by the hub with a failure status. Files are sent in path order,
# so of two files with one SOP Instance UID the first is kept (duplicate policy
# keep-first) and the second refused.
REFUSED = {
    "transfer_syntaxes/htj2k_lossy_rgb.dcm": "no Study Instance UID (0xC001)",
    "charsets/clunie/chrFrenMulti.dcm": "SOP Instance UID of chrFren.dcm, other bytes (0xA900)",
    "charsets/clunie/chrJapMultiExplicitIR6.dcm": (
        "SOP Instance UID of chrJapMulti.dcm, other bytes (0xA900)"
    ),
}
REFUSED_STATUS = {"htj2k_lossy_rgb.dcm": 0xC001}


def dataset_bytes(file: Path | bytes) -> bytes:
    """The bytes of a file (or of its content) after its File Meta group (all of it
    when there is no meta)."""
    data = file if isinstance(file, bytes) else file.read_bytes()
    try:
        offset = dataset_offset(io.BytesIO(data))
    except ValueError:
        offset = 0
    return data[offset:]


@dataclass(frozen=True)
class Original:
    """A shared file and what identifies it."""

    relative: str
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    dataset: bytes


def _original(path: Path) -> Original:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return Original(
        str(path.relative_to(DATA)),
        path,
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.get("StudyInstanceUID", "")),
        str(ds.file_meta.get("TransferSyntaxUID", IMPLICIT_LE)),
        dataset_bytes(path),
    )


def candidates() -> list[Path]:
    """Every DICOM file under the shared data, the malformed/ folder left out."""
    return sorted(
        p
        for p in DATA.rglob("*")
        if p.is_file()
        and not {"malformed", "LICENSES"} & set(p.relative_to(DATA).parts)
        and p.name not in NOT_DICOM
    )


ORIGINALS = [_original(p) for p in candidates() if str(p.relative_to(DATA)) not in UNSENDABLE]
KEPT = [o for o in ORIGINALS if o.relative not in REFUSED]


def by_syntax(originals: list[Original]) -> dict[str, list[Original]]:
    groups: dict[str, list[Original]] = defaultdict(list)
    for original in originals:
        groups[original.transfer_syntax_uid].append(original)
    return groups


def indexed_uids(hub: Hub) -> set[str]:
    with sqlite3.connect(hub.data_dir / "index.sqlite3") as db:
        return {uid for (uid,) in db.execute("select sop_instance_uid from instances")}


def received_by_uid(folder: Path) -> dict[str, Path]:
    """Files written by storescp / getscu, keyed by their SOP Instance UID."""
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        meta = pydicom.filereader.read_file_meta_info(path)
        found[str(meta.MediaStorageSOPInstanceUID)] = path
    return found


def on_the_wire(original: Original) -> bytes:
    """The dataset bytes a conformant sender transmits for ``original``.

    Identical to the file's, except an odd-length dataset (only the deflated file:
    its stream is 4303 bytes) gets the single trailing NUL of PS3.5 A.5; dcmtk
    refuses an odd PDV fragment ("Odd Fragment Length").
    """
    return original.dataset + b"\x00" * (len(original.dataset) % 2)


def mismatches(expected: list[Original], received: dict[str, Path]) -> list[str]:
    """Originals not received, or received with other dataset bytes."""
    return [
        o.relative
        for o in expected
        if o.sop_instance_uid not in received
        or dataset_bytes(received[o.sop_instance_uid]) != on_the_wire(o)
    ]


def store_unchanged(hub: Hub, originals: list[Original], staging: Path) -> dict[str, int]:
    """C-STORE every file's dataset bytes unchanged (pynetdicom chunked send); status per file.

    Each file is staged with a fresh File Meta group (files without one need it for
    pynetdicom to send from disk); the dataset bytes are the original's.
    """
    ae = AE(ae_title="PYSTORE")
    for pair in dict.fromkeys((o.sop_class_uid, o.transfer_syntax_uid) for o in originals):
        ae.add_requested_context(pair[0], [pair[1]])
    saved, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title=hub.ae_title)
    assert assoc.is_established
    statuses: dict[str, int] = {}
    try:
        for n, o in enumerate(originals):
            staged = staging / f"{n}.dcm"
            staged.write_bytes(
                part10_bytes(o.dataset, o.sop_class_uid, o.sop_instance_uid, o.transfer_syntax_uid)
            )
            statuses[o.relative] = int(assoc.send_c_store(staged).Status)
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = saved
    return statuses


@dataclass
class Loaded:
    """A hub holding every sendable shared file, and the C-STORE status of each."""

    hub: Hub
    statuses: dict[str, int]
    archived: set[bytes]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    base = tmp_path_factory.mktemp("roundtrip")
    (base / "staging").mkdir()
    hub = start_hub(base / "data")
    try:
        statuses = store_unchanged(hub, ORIGINALS, base / "staging")
        archived = {dataset_bytes(data) for data in stored_bytes(hub.data_dir).values()}
        yield Loaded(hub, statuses, archived)
    finally:
        hub.stop()


def test_hub_refuses_exactly_the_listed_files_and_keeps_bytes(loaded: Loaded) -> None:
    refused = {name for name, code in loaded.statuses.items() if code != 0x0000}
    assert refused == set(REFUSED)
    assert loaded.statuses["transfer_syntaxes/htj2k_lossy_rgb.dcm"] == 0xC001
    assert loaded.statuses["charsets/clunie/chrFrenMulti.dcm"] == 0xA900
    assert [o.relative for o in KEPT if o.dataset not in loaded.archived] == []
    assert len(loaded.archived) == len(KEPT) > 250
    assert [o.relative for o in KEPT if len(o.dataset) % 2] == [
        "transfer_syntaxes/deflated_explicit_le_clunie.dcm"
    ]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def storescp(tmp_path: Path, loaded: Loaded) -> Iterator[tuple[str, Path]]:
    """dcmtk storescp (bit-preserving, every syntax and SOP class) registered as a node."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "STORESCP", "+xa", "-pm", "+B", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port), what="storescp listening")
        loaded.hub.cli("nodes", "add", "STORESCP", "127.0.0.1", str(port))
        yield "STORESCP", out
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_movescu_round_trip_is_byte_identical(loaded: Loaded, storescp: tuple[str, Path]) -> None:
    hub = loaded.hub
    destination, out = storescp
    studies = "\\".join(sorted({o.study_instance_uid for o in KEPT}))
    result = subprocess.run(
        [
            *(dcmtk("movescu"), "-v", "-S", "-aec", hub.ae_title, "-aem", destination),
            *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={studies}"),
            *("127.0.0.1", str(hub.dicom_port)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    received = received_by_uid(out)
    assert mismatches(KEPT, received) == []
    assert len(received) == len(KEPT)
    assert f"Received Move Response {len(KEPT)} (Pending)" in result.stderr
    assert "Received Final Move Response (Success)" in result.stderr


def getscu(hub: Hub, syntax: str, files: list[Original], out: Path) -> str:
    uids = "\\".join(o.sop_instance_uid for o in files)
    result = subprocess.run(
        [
            *(dcmtk("getscu"), "-v", "-S", "-aec", hub.ae_title, "+" + DCMTK_SYNTAX[syntax], "+B"),
            *("-od", str(out), "-k", "QueryRetrieveLevel=IMAGE", "-k", f"SOPInstanceUID={uids}"),
            *("127.0.0.1", str(hub.dicom_port)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def pynetdicom_get(hub: Hub, files: list[Original]) -> dict[str, bytes]:
    """C-GET ``files`` (IMAGE level, UID list) with pynetdicom; dataset bytes by SOP UID."""
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title="PYGETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    pairs = dict.fromkeys((o.sop_class_uid, o.transfer_syntax_uid) for o in files)
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, [syntax])
    roles = [build_role(sop_class, scp_role=True) for sop_class in {p[0] for p in pairs}]
    handlers = [(evt.EVT_C_STORE, on_store)]
    assoc = ae.associate(
        "127.0.0.1", hub.dicom_port, ae_title=hub.ae_title, ext_neg=roles, evt_handlers=handlers
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.SOPInstanceUID = [o.sop_instance_uid for o in files]
    try:
        answers = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert answers[-1][0].Status == 0x0000
    assert answers[-1][0].NumberOfCompletedSuboperations == len(files)
    return received


def test_getscu_round_trip_is_byte_identical(loaded: Loaded, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    for syntax, files in by_syntax(KEPT).items():
        if syntax == IMPLICIT_LE:
            continue  # dcmtk 3.6.7 getscu never proposes it first (+xi proposes Explicit LE)
        log = getscu(loaded.hub, syntax, files, out)
        assert "Received C-GET Response (Success)" in log, log[-1500:]
        assert re.search(rf"Completed Suboperations\s*:\s*{len(files)}\n", log), log[-1500:]
    received = received_by_uid(out)
    dcmtk_kept = [o for o in KEPT if o.transfer_syntax_uid != IMPLICIT_LE]
    assert mismatches(dcmtk_kept, received) == []
    assert len(received) == len(dcmtk_kept)


def test_implicit_vr_get_round_trip_with_pynetdicom(loaded: Loaded) -> None:
    implicit = [o for o in KEPT if o.transfer_syntax_uid == IMPLICIT_LE]
    assert len(implicit) == 5  # rtstruct_no_meta.dcm has no meta: Implicit VR LE
    received = pynetdicom_get(loaded.hub, implicit)
    assert received == {o.sop_instance_uid: on_the_wire(o) for o in implicit}


def storescu_answers(log: str) -> dict[str, str]:
    """File -> Store Response text, from a ``storescu -v`` log."""
    pairs = re.findall(r"Sending file: (\S+)\n(?:.*\n)*?.*Received Store Response \(([^)]*)\)", log)
    return dict(pairs)


def test_storescu_and_echoscu_against_the_hub(hub: Hub) -> None:
    """dcmtk as the sender: the hub stores what storescu sends, refuses only conflicts."""
    echo = subprocess.run([dcmtk("echoscu"), "127.0.0.1", str(hub.dicom_port)], timeout=30)
    assert echo.returncode == 0
    sent = [o for o in ORIGINALS if o.transfer_syntax_uid != HTJ2K]  # unknown to dcmtk 3.6.7
    log = ""
    for syntax, files in by_syntax(sent).items():
        result = subprocess.run(
            [
                *(dcmtk("storescu"), "-v", "-nh", "-aec", hub.ae_title, "-R"),
                *("-" + DCMTK_SYNTAX[syntax], "127.0.0.1", str(hub.dicom_port)),
                *(str(f.path) for f in files),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        log += result.stdout + result.stderr
    assert indexed_uids(hub) == {o.sop_instance_uid for o in sent}
    answers = storescu_answers(log)
    assert set(answers) == {str(o.path) for o in sent}
    failed = {path for path, answer in answers.items() if answer != "Success"}
    assert failed == {str(DATA / r) for r in REFUSED if r in {o.relative for o in sent}}
    assert {answers[path] for path in failed} == {"Error: DataSetDoesNotMatchSOPClass"}
