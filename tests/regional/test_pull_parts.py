"""A large study is pulled in parts, over several C-MOVE associations at once.

The pull runs in this process (:func:`pacs_hub.regional.pull.pull_study`, the hub's
settings and index), the PACS sends to the hub's gateway, a ``pacs-hub serve``
process; :data:`~pacs_hub.regional.pull_parts.SPLIT_MIN` is lowered so that a study
of a dozen instances counts as large. The PACS is Debian's Orthanc (it must move an
IMAGE-level list of SOP Instance UIDs) and a pynetdicom Query/Retrieve SCP that
records each C-MOVE, how many ran at once, and can fail one.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs_hub.config import Settings
from pacs_hub.dicom.part10 import dataset_offset
from pacs_hub.regional import pull_parts
from pacs_hub.regional.pull import get_job, pull_study
from pacs_hub.storage.database import Database
from tests.blobs import blob_of, study_blob_keys
from tests.conftest import HUB_AE, Hub, free_port, start_hub
from tests.peers import OrthancPeer, start_orthanc
from tests.regional.study_factory import study_datasets

SERIES = 2
PER_SERIES = 6


def two_series(patient: str) -> tuple[str, list[Dataset]]:
    """A CT study of SERIES series of PER_SERIES instances each."""
    study, first = study_datasets(patient_id=patient, count=PER_SERIES)
    _, second = study_datasets(patient_id=patient, count=PER_SERIES, study_uid=study)
    return study, first + second


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass
class ListingPacs:
    """A PACS answering SERIES and IMAGE level C-FIND and IMAGE level C-MOVE to the hub."""

    hub_port: int
    studies: dict[str, list[Dataset]] = field(default_factory=dict)
    moves: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    fail_with: str = ""  # a SOP Instance UID: the C-MOVE naming it fails (0xA702)
    lists: bool = True  # False: answers no IMAGE level C-FIND
    running: int = 0
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        level = str(query.QueryRetrieveLevel)
        datasets = self.studies.get(str(query.get("StudyInstanceUID", "")), [])
        if level == "SERIES":
            for uid in dict.fromkeys(str(ds.SeriesInstanceUID) for ds in datasets):
                answer = Dataset()
                answer.QueryRetrieveLevel = "SERIES"
                answer.SeriesInstanceUID = uid
                yield 0xFF00, answer
        elif level == "IMAGE" and self.lists:
            for ds in datasets:
                if ds.SeriesInstanceUID == query.SeriesInstanceUID:
                    answer = Dataset()
                    answer.QueryRetrieveLevel = "IMAGE"
                    answer.SeriesInstanceUID = ds.SeriesInstanceUID
                    answer.SOPInstanceUID = ds.SOPInstanceUID
                    yield 0xFF00, answer
        yield 0x0000, None

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        identifier = event.identifier
        level = str(identifier.QueryRetrieveLevel)
        datasets = self.studies.get(str(identifier.StudyInstanceUID), [])
        if level == "IMAGE":
            value = identifier.SOPInstanceUID
            wanted = {str(v) for v in ([value] if isinstance(value, str) else value)}
            datasets = [ds for ds in datasets if ds.SOPInstanceUID in wanted]
            named = tuple(sorted(wanted))
        else:
            named = ()
        self.moves.append((level, named))
        context = build_context(CTImageStorage, ExplicitVRLittleEndian)
        yield "127.0.0.1", self.hub_port, {"contexts": [context]}
        yield len(datasets)
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            for ds in datasets:
                if self.fail_with and ds.SOPInstanceUID == self.fail_with:
                    yield 0xA702, None
                    return
                time.sleep(0.05)  # slow enough for the parts to overlap
                yield 0xFF00, ds
        finally:
            with self.lock:
                self.running -= 1


@dataclass
class Setup:
    hub: Hub
    settings: Settings
    database: Database
    pacs: ListingPacs
    orthanc: OrthancPeer


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("pull-parts")
    hub = start_hub(root / "data", processes=2)
    listing = ListingPacs(hub.dicom_port)
    ae = AE(ae_title="LISTPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    handlers = [(evt.EVT_C_FIND, listing.on_find), (evt.EVT_C_MOVE, listing.on_move)]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    orthanc = start_orthanc(
        root / "orthanc", aet="ORTH_P", modalities={"HUB": (HUB_AE, "127.0.0.1", hub.dicom_port)}
    )
    try:
        hub.cli("nodes", "add", "LISTPACS", "127.0.0.1", str(port), "--role", "pacs")
        hub.cli("nodes", "add", "ORTH_P", "127.0.0.1", str(orthanc.dicom_port), "--role", "pacs")
        env = {
            k[len("PACS_HUB_") :].lower(): v
            for k, v in hub.env.items()
            if k.startswith("PACS_HUB_")
        }
        settings = Settings(**{**env, "pull_associations": 3})  # type: ignore[arg-type]
        database = Database(settings.index_url)
        try:
            yield Setup(hub, settings, database, listing, orthanc)
        finally:
            database.dispose()
    finally:
        orthanc.stop()
        server.shutdown()
        hub.stop()


@pytest.fixture(autouse=True)
def small_is_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pull_parts, "SPLIT_MIN", 4)


def held(hub: Hub, study: str) -> dict[str, bytes]:
    """SOP Instance UID -> stored Part 10 bytes of every instance of ``study``."""
    keys = study_blob_keys(hub.data_dir, study)
    return {uid: blob_of(hub.data_dir, key).read_bytes() for uid, key in keys.items()}


def test_split_makes_parts_of_one_series_each_none_too_large() -> None:
    listing = {"s1": [f"a{n}" for n in range(10)], "s2": [f"b{n}" for n in range(3)]}
    parts = pull_parts.split(listing, 3)
    assert [(p.series, len(p.instances)) for p in parts] == [
        ("s1", 5),
        ("s1", 5),
        ("s2", 3),
    ]
    assert [uid for p in parts for uid in p.instances] == listing["s1"] + listing["s2"]
    assert [len(p.instances) for p in pull_parts.split({"s": list("abcdef")}, 3)] == [2, 2, 2]
    even = pull_parts.split({"s": list("abcdef"), "t": list("ghijkl")}, 3)
    assert [len(p.instances) for p in even] == [3, 3, 3, 3]  # 4 per part: 6 cut in 3 + 3
    many = pull_parts.split({"s": [str(n) for n in range(1000)]}, 2)
    assert [len(p.instances) for p in many] == [250] * 4  # PART_MAX


def test_orthanc_moves_a_study_in_parts_and_every_instance_arrives(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    study, datasets = two_series("PULL-PARTS-ORTHANC")
    files = {str(ds.SOPInstanceUID): part10(ds) for ds in datasets}
    for data in files.values():
        setup.orthanc.api.upload(data)
    caplog.set_level("INFO", logger="pacs_hub.regional.pull_parts")
    job = get_job(setup.database, pull_study(setup.settings, setup.database, "ORTH_P", study))
    assert job is not None
    assert (job.state, job.received, job.expected, job.error) == ("done", 12, 12, "")
    assert f"pulling 12 instance(s) of study {study} from ORTH_P in 4 part(s)" in caplog.text
    stored = held(setup.hub, study)
    assert stored.keys() == files.keys()
    for uid, data in stored.items():  # the dataset as sent, after the File Meta group
        assert data.endswith(files[uid][dataset_offset(io.BytesIO(files[uid])) :])


def test_parts_name_each_instance_once_and_run_at_once(setup: Setup) -> None:
    pacs = setup.pacs
    study, datasets = two_series("PULL-PARTS-LIST")
    pacs.studies[study], pacs.moves[:], pacs.most_at_once = datasets, [], 0
    job = get_job(setup.database, pull_study(setup.settings, setup.database, "LISTPACS", study))
    assert job is not None and (job.state, job.received, job.expected) == ("done", 12, 12)
    assert [level for level, _ in pacs.moves] == ["IMAGE"] * 4  # 3 + 3 of each series
    named = [uid for _, uids in pacs.moves for uid in uids]
    assert sorted(named) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert pacs.most_at_once >= 2
    assert held(setup.hub, study).keys() == set(named)


def test_a_failed_part_is_counted_failed_and_the_others_are_stored(setup: Setup) -> None:
    pacs = setup.pacs
    study, datasets = two_series("PULL-PARTS-FAIL")
    pacs.studies[study], pacs.moves[:] = datasets, []
    pacs.fail_with = str(datasets[0].SOPInstanceUID)  # the first part (3) sends nothing
    try:
        job_id = pull_study(setup.settings, setup.database, "LISTPACS", study)
    finally:
        pacs.fail_with = ""
    job = get_job(setup.database, job_id)
    assert job is not None
    assert (job.state, job.received, job.expected) == ("failed", 9, 12)
    assert "0xB000" in job.error and "3 sub-operation(s) failed" in job.error
    assert len(held(setup.hub, study)) == 9


def test_prefetch_and_backfill_pull_a_study_over_one_association(setup: Setup) -> None:
    pacs = setup.pacs
    for kind in ("prefetch", "backfill"):
        study, datasets = two_series(f"PULL-PARTS-{kind.upper()}")
        pacs.studies[study], pacs.moves[:] = datasets, []
        job_id = pull_study(setup.settings, setup.database, "LISTPACS", study, kind=kind)
        job = get_job(setup.database, job_id)
        assert job is not None and (job.state, job.received, job.kind) == ("done", 12, kind)
        assert pacs.moves == [("STUDY", ())]


def test_a_pacs_that_lists_nothing_gets_one_study_level_move(setup: Setup) -> None:
    pacs = setup.pacs
    study, datasets = two_series("PULL-PARTS-WHOLE")
    pacs.studies[study], pacs.moves[:], pacs.lists = datasets, [], False
    try:
        job_id = pull_study(setup.settings, setup.database, "LISTPACS", study)
    finally:
        pacs.lists = True
    job = get_job(setup.database, job_id)
    assert job is not None and (job.state, job.received) == ("done", 12)
    assert pacs.moves == [("STUDY", ())]
