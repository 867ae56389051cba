"""C-FIND SCP (PS3.4 C.4.1): dcmtk findscu and pynetdicom against a real hub process.

Expected answers are computed from the stored files' own headers (read with pydicom),
not copied from the hub. The last tests drive ``handle_find`` in-process for what a
network peer cannot make deterministic (C-CANCEL timing, paging).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacs_hub.config import Settings
from pacs_hub.gateway import find as find_module
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.find import PATIENT_ROOT, STUDY_ROOT, handle_find
from tests.conftest import DATA, Hub, dcmtk, start_hub

CT_DIR = DATA / "volumes" / "ct_philips_ingenuity_head_phantom_axial_5mm"
SINGLE_FILES = [
    "charsets/clunie/chrFren.dcm",
    "charsets/clunie/chrGerm.dcm",
    "modalities/seg_qin_headneck_binary_13frames.dcm",
    "modalities/sr_tid1500_qin_headneck.dcm",
    "modalities/rwvm_qin_headneck.dcm",
    "modalities/pt_acrin_flt_breast.dcm",
    "modalities/mr_siemens_overlay_icon.dcm",
]
FILES = [DATA / f for f in SINGLE_FILES] + sorted(CT_DIR.iterdir())
FRENCH = "Buc^Jérôme"


@dataclass(frozen=True)
class Stored:
    """What a stored file says about itself."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    series_uid: str
    modality: str
    sop_uid: str
    sop_class: str


def _stored(path: Path) -> Stored:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Stored(
        str(ds.get("PatientID", "")),
        str(ds.get("PatientName", "")),
        ds.StudyInstanceUID,
        str(ds.get("StudyDate", "")),
        ds.SeriesInstanceUID,
        str(ds.get("Modality", "")),
        ds.SOPInstanceUID,
        ds.SOPClassUID,
    )


STORED = [_stored(path) for path in FILES]
CT = next(s for s in STORED if s.patient_id == "PLASTIC")
QIN = next(s for s in STORED if s.modality == "SEG")


def studies_where(predicate: Any) -> set[str]:
    return {s.study_uid for s in STORED if predicate(s)}


@pytest.fixture(scope="module")
def loaded_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One hub for the module, holding FILES (stored with dcmtk's storescu)."""
    hub = start_hub(tmp_path_factory.mktemp("find") / "data")
    try:
        subprocess.run(
            [dcmtk("storescu"), "-R", "-aec", hub.ae_title, "127.0.0.1", str(hub.dicom_port)]
            + [str(p) for p in FILES],
            check=True,
            timeout=120,
            capture_output=True,
        )
        yield hub
    finally:
        hub.stop()


def findscu(hub: Hub, root: str, *keys: str, out: Path) -> list[Dataset]:
    """Run dcmtk's findscu (``-P`` or ``-S``) and read back every answer it saved."""
    out.mkdir(parents=True, exist_ok=True)
    args = [dcmtk("findscu"), root, "-aec", hub.ae_title, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(hub.dicom_port)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def findscu_debug(hub: Hub, root: str, *keys: str) -> str:
    """findscu -d: its debug log, which shows the final status and Error Comment."""
    args = [dcmtk("findscu"), "-d", root, "-aec", hub.ae_title]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(hub.dicom_port)], capture_output=True, text=True, timeout=60
    )
    return result.stdout + result.stderr


def pynetdicom_find(
    hub: Hub, identifier: Dataset, model: str = StudyRootQueryRetrieveInformationModelFind
) -> list[tuple[Dataset, Dataset | None]]:
    """C-FIND with pynetdicom as SCU: every (status, identifier) received."""
    ae = AE(ae_title="FIND_SCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title=hub.ae_title)
    assert assoc.is_established
    try:
        return list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()


# ---- Patient Root ----------------------------------------------------------------------


def test_patient_root_patient_level_computed_attributes(loaded_hub: Hub, tmp_path: Path) -> None:
    (answer,) = findscu(
        loaded_hub,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        f"PatientID={CT.patient_id}",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
        out=tmp_path,
    )
    assert answer.PatientName == CT.patient_name
    assert answer.NumberOfPatientRelatedStudies == 1
    assert answer.NumberOfPatientRelatedSeries == 1
    assert answer.NumberOfPatientRelatedInstances == len(list(CT_DIR.iterdir())) == 28
    assert answer.QueryRetrieveLevel == "PATIENT"
    assert answer.RetrieveAETitle == loaded_hub.ae_title


def test_patient_root_study_level_modalities_and_counts(loaded_hub: Hub, tmp_path: Path) -> None:
    answers = findscu(
        loaded_hub,
        "-P",
        "QueryRetrieveLevel=STUDY",
        f"PatientID={QIN.patient_id}",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "StudyDescription",
        out=tmp_path,
    )
    qin = [s for s in STORED if s.study_uid == QIN.study_uid]
    (answer,) = answers
    assert answer.StudyInstanceUID == QIN.study_uid
    assert sorted(answer.ModalitiesInStudy) == sorted({s.modality for s in qin})
    assert answer.NumberOfStudyRelatedSeries == len({s.series_uid for s in qin})
    assert answer.NumberOfStudyRelatedInstances == len(qin)
    assert "StudyDescription" in answer  # requested keys always come back


def test_patient_root_series_and_image_levels(loaded_hub: Hub, tmp_path: Path) -> None:
    (series,) = findscu(
        loaded_hub,
        "-P",
        "QueryRetrieveLevel=SERIES",
        f"PatientID={CT.patient_id}",
        f"StudyInstanceUID={CT.study_uid}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        out=tmp_path / "series",
    )
    assert (series.SeriesInstanceUID, series.Modality) == (CT.series_uid, "CT")
    assert series.NumberOfSeriesRelatedInstances == 28
    images = findscu(
        loaded_hub,
        "-P",
        "QueryRetrieveLevel=IMAGE",
        f"PatientID={CT.patient_id}",
        f"StudyInstanceUID={CT.study_uid}",
        f"SeriesInstanceUID={CT.series_uid}",
        out=tmp_path / "images",
    )
    expected = {s.sop_uid for s in STORED if s.series_uid == CT.series_uid}
    assert {a.SOPInstanceUID for a in images} == expected
    assert all(a.SOPClassUID == CT.sop_class and a.InstanceNumber for a in images)
    assert {a.QueryRetrieveLevel for a in images} == {"IMAGE"}


# ---- Study Root ------------------------------------------------------------------------


def test_study_root_wildcard_is_case_insensitive_for_names(loaded_hub: Hub, tmp_path: Path) -> None:
    answers = findscu(
        loaded_hub,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "PatientName=qin-head*",
        "StudyInstanceUID",
        "PatientID",
        out=tmp_path,
    )
    assert {a.StudyInstanceUID for a in answers} == {QIN.study_uid}
    assert {a.PatientID for a in answers} == {QIN.patient_id}


@pytest.mark.parametrize("dates", ["19600101-19991231", "20050101-", "-20041231"])
def test_study_root_date_range(loaded_hub: Hub, tmp_path: Path, dates: str) -> None:
    low, high = dates.split("-")
    answers = findscu(
        loaded_hub, "-S", "QueryRetrieveLevel=STUDY", f"StudyDate={dates}", out=tmp_path
    )
    expected = studies_where(
        lambda s: s.study_date and (s.study_date >= low) and (not high or s.study_date <= high)
    )
    assert expected
    assert {a.StudyInstanceUID for a in answers} == expected


def test_study_root_uid_list(loaded_hub: Hub, tmp_path: Path) -> None:
    answers = findscu(
        loaded_hub,
        "-S",
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={CT.study_uid}\\{QIN.study_uid}\\1.2.3.4.404",
        out=tmp_path,
    )
    assert sorted(a.StudyInstanceUID for a in answers) == sorted([CT.study_uid, QIN.study_uid])


def test_study_root_modalities_in_study_matches_any(loaded_hub: Hub, tmp_path: Path) -> None:
    answers = findscu(
        loaded_hub,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "ModalitiesInStudy=SEG\\CT",
        "NumberOfStudyRelatedInstances",
        out=tmp_path,
    )
    assert {a.StudyInstanceUID for a in answers} == studies_where(
        lambda s: s.modality in ("SEG", "CT")
    )


def test_study_root_series_level(loaded_hub: Hub, tmp_path: Path) -> None:
    answers = findscu(
        loaded_hub,
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={QIN.study_uid}",
        "Modality=S*",
        "SeriesInstanceUID",
        out=tmp_path,
    )
    expected = {
        s.series_uid for s in STORED if s.study_uid == QIN.study_uid and s.modality[0] == "S"
    }
    assert len(expected) == 2  # SEG and SR, not RWV
    assert {a.SeriesInstanceUID for a in answers} == expected


# ---- Specific Character Set ------------------------------------------------------------


def test_french_name_found_by_utf8_query_and_returned_in_utf8(
    loaded_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "LOG_RESPONSE_IDENTIFIERS", False)  # keep raw bytes
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = FRENCH
    query.PatientID = ""
    results = pynetdicom_find(loaded_hub, query)
    answers = [ds for status, ds in results if status.Status == 0xFF00]
    assert results[-1][0].Status == 0x0000
    (answer,) = answers
    assert answer is not None
    assert answer.get_item("PatientName").value == FRENCH.encode("utf-8")
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert answer.PatientName == FRENCH
    assert answer.PatientID == "SCSFREN"


@pytest.mark.parametrize(
    ("charset", "name", "answer_charset", "encoding"),
    [
        (None, "BUC*", "ISO_IR 192", "utf-8"),  # the default repertoire cannot hold é
        ("ISO_IR 192", "BUC*", "ISO_IR 192", "utf-8"),
        ("ISO_IR 100", "buc^jérôme", "ISO_IR 100", "latin-1"),
    ],
)
def test_answer_uses_query_charset_when_it_can(
    loaded_hub: Hub,
    monkeypatch: pytest.MonkeyPatch,
    charset: str | None,
    name: str,
    answer_charset: str,
    encoding: str,
) -> None:
    monkeypatch.setattr(_config, "LOG_RESPONSE_IDENTIFIERS", False)
    query = Dataset()
    if charset:
        query.SpecificCharacterSet = charset
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = name
    answers = [ds for status, ds in pynetdicom_find(loaded_hub, query) if status.Status == 0xFF00]
    (answer,) = answers
    assert answer is not None
    assert answer.SpecificCharacterSet == answer_charset
    assert answer.get_item("PatientName").value == FRENCH.encode(encoding)


def test_findscu_wildcard_finds_the_french_name(loaded_hub: Hub, tmp_path: Path) -> None:
    (answer,) = findscu(
        loaded_hub, "-S", "QueryRetrieveLevel=STUDY", "PatientName=BUC*", out=tmp_path
    )
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert answer.PatientName == FRENCH


def test_ascii_answers_declare_no_charset(loaded_hub: Hub, tmp_path: Path) -> None:
    (answer,) = findscu(
        loaded_hub, "-S", "QueryRetrieveLevel=STUDY", f"PatientID={CT.patient_id}", out=tmp_path
    )
    assert "SpecificCharacterSet" not in answer


# ---- bad queries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "keys", "comment"),
    [
        ("-S", ["QueryRetrieveLevel=PATIENT"], "QueryRetrieveLevel PATIENT: expected STUDY/SER"),
        ("-P", ["QueryRetrieveLevel=FRAME"], "QueryRetrieveLevel FRAME: expected PATIENT/STUDY"),
        ("-S", ["PatientName=X*"], "QueryRetrieveLevel missing"),
        ("-S", ["QueryRetrieveLevel=SERIES"], "SERIES query needs one StudyInstanceUID"),
        ("-P", ["QueryRetrieveLevel=STUDY"], "STUDY query needs one PatientID"),
        (
            "-S",
            ["QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2*"],
            "StudyInstanceUID '1.2*': expected no wildcard",
        ),
        (
            "-S",
            ["QueryRetrieveLevel=STUDY", "StudyDate=20201231-20200101"],
            "StudyDate '20201231-20200101': expected a range whose start",
        ),
    ],
)
def test_bad_query_gets_failure_with_comment(
    loaded_hub: Hub, root: str, keys: list[str], comment: str
) -> None:
    log = findscu_debug(loaded_hub, root, *keys)
    assert "0xa900" in log.lower()
    assert comment in log


def test_bad_query_comment_reaches_pynetdicom(loaded_hub: Hub) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyDate = "2020"
    ((status, identifier),) = pynetdicom_find(
        loaded_hub, query, PatientRootQueryRetrieveInformationModelFind
    )
    assert status.Status == 0xA900
    assert identifier is None
    assert status.ErrorComment == "StudyDate '2020': expected YYYYMMDD"


# ---- in process: cancel, paging, unknown keys ------------------------------------------


class FakeEvent:
    """The parts of a pynetdicom C-FIND event that ``handle_find`` reads."""

    def __init__(self, model: str, identifier: Dataset, cancel_after: int | None = None) -> None:
        self.request = C_FIND()
        self.request.AffectedSOPClassUID = model
        self.identifier = identifier
        self.assoc = type("Assoc", (), {"requestor": type("R", (), {"ae_title": "TEST"})})()
        self.cancel_after = cancel_after
        self.polls = 0

    @property
    def is_cancelled(self) -> bool:
        self.polls += 1
        return self.cancel_after is not None and self.polls > self.cancel_after


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayContext]:
    """A gateway context on a fresh data folder holding the CT series and chrFren."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("ctx"), ae_title="INPROC", auth_required=False
    )
    context = GatewayContext.open(settings, run_migrations=True)
    for path in [*sorted(CT_DIR.iterdir()), DATA / "charsets/clunie/chrFren.dcm"]:
        context.ingestor.ingest(path.read_bytes(), received_from_ae="TEST")
    yield context
    context.database.dispose()


def _image_query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = CT.study_uid
    query.SeriesInstanceUID = CT.series_uid
    query.SOPInstanceUID = ""
    return query


def test_cancel_stops_the_answers(ctx: GatewayContext) -> None:
    event = FakeEvent(STUDY_ROOT, _image_query(), cancel_after=3)
    results = list(handle_find(event, ctx))  # type: ignore[arg-type]
    assert [status for status, _ in results] == [0xFF00] * 3 + [0xFE00]
    assert results[-1][1] is None


def test_paging_returns_every_match_once(
    ctx: GatewayContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(find_module, "PAGE_SIZE", 5)
    results = list(handle_find(FakeEvent(STUDY_ROOT, _image_query()), ctx))  # type: ignore[arg-type]
    uids = [ds.SOPInstanceUID for status, ds in results]
    assert len(uids) == len(set(uids)) == 28
    assert {ds.RetrieveAETitle for _, ds in results} == {"INPROC"}


def test_unknown_and_sequence_keys_come_back_empty(ctx: GatewayContext) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "SCSFREN"
    query.InstitutionName = "X*"  # not indexed: ignored for matching, returned empty
    query.OtherPatientIDsSequence = []
    query.StudyDate = ""  # below the level: returned empty
    query.PatientName = ""
    ((status, answer),) = list(handle_find(FakeEvent(PATIENT_ROOT, query), ctx))  # type: ignore[arg-type]
    assert status == 0xFF00
    assert answer["InstitutionName"].is_empty
    assert answer["OtherPatientIDsSequence"].VR == "SQ"
    assert answer.OtherPatientIDsSequence == []
    assert answer["StudyDate"].is_empty
    assert answer.PatientID == "SCSFREN"
    assert answer.PatientName == FRENCH
    assert answer.SpecificCharacterSet == "ISO_IR 192"


def test_unreadable_identifier_is_unable_to_process(ctx: GatewayContext) -> None:
    class Broken(FakeEvent):
        @property  # type: ignore[override]
        def identifier(self) -> Dataset:
            raise ValueError("corrupt identifier")

        @identifier.setter
        def identifier(self, value: Dataset) -> None:
            pass

    ((status, answer),) = list(handle_find(Broken(STUDY_ROOT, Dataset()), ctx))  # type: ignore[arg-type]
    assert status.Status == 0xC000
    assert status.ErrorComment == "cannot read the request Identifier"
    assert answer is None
