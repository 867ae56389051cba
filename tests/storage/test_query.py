"""Index search (pacs_hub.storage.query) on a real SQLite index, against naive oracles."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection

from pacs_hub.dicom.header import InstanceHeader
from pacs_hub.errors import InvalidQuery
from pacs_hub.storage.database import Database
from pacs_hub.storage.index import StoredBlob, add_instance
from pacs_hub.storage.query import (
    Level,
    Query,
    _statement,
    attribute_value,
    count_matches,
    find,
    find_instances,
    find_patients,
    find_series,
    find_studies,
    parse_query,
)
from tests.dicom.test_matching import glob_oracle

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BASE = InstanceHeader(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
    sop_instance_uid="",
    study_instance_uid="",
    series_instance_uid="",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    specific_character_set="ISO_IR 192",
    patient_id="",
    issuer_of_patient_id="",
    patient_name="",
    patient_birth_date="",
    patient_sex="",
    study_date="",
    study_time="",
    accession_number="",
    study_id="",
    study_description="",
    referring_physician_name="",
    modality="OT",
    series_number="1",
    series_description="",
    body_part_examined="",
    series_date="",
    series_time="",
    station_name="",
    instance_number="1",
    rows=None,
    columns=None,
    number_of_frames=None,
)
# One patient and study per entry: name, accession number, study date.
CORPUS = [
    ("Buc^Jérôme", "ACC-1", "20200101"),
    ("BUC^JEROME", "acc-1", "20200615"),
    ("buc^jérôme", "ACC_1", "20191231"),
    ("Bucket^Ann", "ACC%1", "19991231"),
    ("O'Neil^Pat", "A.B", "20000101"),
    ("50%^Off", "AB", "20201231"),
    ("a_b^c", "a_b", "20210101"),
    ("Smith", "", ""),
    ("", "X", "19700101"),
    ("Äneas^Rüdiger", "ÄB", "20240229"),
    ("de la Cruz^Ana", "Ab?c*", "20180704"),
    ("Wang^XiaoDong=王^小東", "王", "20100510"),
]


def header(**fields: str | int | None) -> InstanceHeader:
    """A synthetic instance header: BASE with ``fields`` replaced."""
    return dataclasses.replace(BASE, **fields)  # type: ignore[arg-type]


def store(conn: Connection, h: InstanceHeader) -> None:
    add_instance(conn, h, StoredBlob(h.sop_instance_uid, "0" * 64, 10), "TEST", NOW)


@pytest.fixture(scope="module")
def corpus_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """An index holding one study per CORPUS entry."""
    path: Path = tmp_path_factory.mktemp("query") / "index.sqlite3"
    database = Database(f"sqlite:///{path}")
    with database.engine.begin() as conn:
        for n, (name, accession, study_date) in enumerate(CORPUS):
            store(
                conn,
                header(
                    patient_id=f"P{n}",
                    patient_name=name,
                    accession_number=accession,
                    study_date=study_date,
                    study_instance_uid=f"1.2.{n}",
                    series_instance_uid=f"1.2.{n}.1",
                    sop_instance_uid=f"1.2.{n}.1.1",
                ),
            )
    yield database
    database.dispose()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """Two patients: P1 with a CT+MR study and a PT study, P2 with one CT study."""
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    layout = [
        ("P1", "1.1", "20200101", "1.1.1", "CT", 2),
        ("P1", "1.1", "20200101", "1.1.2", "MR", 1),
        ("P1", "1.2", "20210505", "1.2.1", "PT", 1),
        ("P2", "2.1", "20190303", "2.1.1", "CT", 3),
    ]
    with database.engine.begin() as conn:
        for patient, study, day, series, modality, count in layout:
            for i in range(count):
                store(
                    conn,
                    header(
                        patient_id=patient,
                        patient_name=f"Doe^{patient}",
                        study_instance_uid=f"9.{study}",
                        study_date=day,
                        series_instance_uid=f"9.{series}",
                        modality=modality,
                        sop_instance_uid=f"9.{series}.{i}",
                        instance_number=str(i + 1),
                    ),
                )
    yield database
    database.dispose()


def patient_ids(database: Database, keys: dict[str, str]) -> set[str]:
    with database.reader() as session:
        return {row.patient_id for row in find_patients(session, parse_query(keys))}


def study_numbers(database: Database, keys: dict[str, str]) -> set[int]:
    with database.reader() as session:
        rows = find_studies(session, parse_query(keys))
    return {int(row.study_instance_uid.rsplit(".", 1)[1]) for row in rows}


# ---- properties: SQL matching against naive oracles ---------------------------------

PN_CHARS = list("BUCJÉRÔMEbucjérôme^%_'*?A")
CS_CHARS = list("ACab_%.-1?*Ä")


def _mutations(source: str, chars: list[str]) -> st.SearchStrategy[str]:
    """Patterns near a corpus value: characters replaced by wildcards or others."""
    if not source:
        return st.text(st.sampled_from(chars), min_size=1, max_size=6)
    return st.lists(
        st.sampled_from(["keep", "?", "*", "drop", *chars]),
        min_size=len(source),
        max_size=len(source),
    ).map(
        lambda ops: "".join(
            c if op == "keep" else "" if op == "drop" else op
            for c, op in zip(source, ops, strict=True)
        )
    )


def patterns(values: list[str], chars: list[str]) -> st.SearchStrategy[str]:
    near = st.sampled_from(values).flatmap(lambda v: _mutations(v, chars))
    anywhere = st.text(st.sampled_from(chars), min_size=1, max_size=8)
    return (near | anywhere).filter(lambda p: p.strip() == p and p != "")


@settings(max_examples=300, deadline=None)
@given(pattern=patterns([name for name, _, _ in CORPUS], PN_CHARS))
def test_person_name_sql_matches_case_insensitive_oracle(corpus_db: Database, pattern: str) -> None:
    expected = {
        f"P{n}"
        for n, (name, _, _) in enumerate(CORPUS)
        if glob_oracle(pattern.upper(), name.upper())
    }
    assert patient_ids(corpus_db, {"PatientName": pattern}) == expected


@settings(max_examples=300, deadline=None)
@given(pattern=patterns([acc for _, acc, _ in CORPUS], CS_CHARS))
def test_string_sql_matches_case_sensitive_oracle(corpus_db: Database, pattern: str) -> None:
    expected = {n for n, (_, acc, _) in enumerate(CORPUS) if glob_oracle(pattern, acc)}
    assert study_numbers(corpus_db, {"AccessionNumber": pattern}) == expected


DAYS = st.dates(min_value=date(1960, 1, 1), max_value=date(2030, 12, 31))


@settings(max_examples=200, deadline=None)
@given(low=st.none() | DAYS, high=st.none() | DAYS)
def test_date_range_sql_matches_calendar_oracle(
    corpus_db: Database, low: date | None, high: date | None
) -> None:
    if low is None and high is None:
        return
    if low and high and low > high:
        low, high = high, low
    raw = (f"{low:%Y%m%d}" if low else "") + "-" + (f"{high:%Y%m%d}" if high else "")
    expected = set()
    for n, (_, _, day) in enumerate(CORPUS):
        stored = datetime.strptime(day, "%Y%m%d").date() if day else None
        if stored and (low is None or low <= stored) and (high is None or stored <= high):
            expected.add(n)
    assert study_numbers(corpus_db, {"StudyDate": raw}) == expected


# ---- examples -------------------------------------------------------------------------


def test_single_value_person_name_is_exact_but_case_insensitive(corpus_db: Database) -> None:
    assert patient_ids(corpus_db, {"PatientName": "buc^JÉRÔME"}) == {"P0", "P2"}
    assert patient_ids(corpus_db, {"PatientName": "Buc"}) == set()


def test_like_wildcards_in_values_are_literal(corpus_db: Database) -> None:
    assert study_numbers(corpus_db, {"AccessionNumber": "ACC%1"}) == {3}
    assert study_numbers(corpus_db, {"AccessionNumber": "ACC_*"}) == {2}
    assert study_numbers(corpus_db, {"AccessionNumber": "a_b"}) == {6}


def test_computed_attributes(db: Database) -> None:
    with db.reader() as session:
        (p1,) = find_patients(session, parse_query({"PatientID": "P1"}))
        studies = find_studies(session, parse_query({"PatientID": "P1"}))
    assert (p1.num_studies, p1.num_series, p1.num_instances) == (2, 3, 4)
    by_uid = {s.study_instance_uid: s for s in studies}
    assert by_uid["9.1.1"].modalities_in_study == "CT\\MR"
    assert (by_uid["9.1.1"].num_series, by_uid["9.1.1"].num_instances) == (2, 3)
    assert attribute_value(by_uid["9.1.1"], "NumberOfPatientRelatedStudies") == 2
    assert attribute_value(by_uid["9.1.1"], "NumberOfStudyRelatedInstances") == 3


@pytest.mark.parametrize(
    ("modalities", "expected"),
    [("MR", {"9.1.1"}), ("PT\\MR", {"9.1.1", "9.1.2"}), ("C?", {"9.1.1", "9.2.1"}), ("SR", set())],
)
def test_modalities_in_study_matches_any_series(
    db: Database, modalities: str, expected: set[str]
) -> None:
    with db.reader() as session:
        rows = find_studies(session, parse_query({"ModalitiesInStudy": modalities}))
    assert {r.study_instance_uid for r in rows} == expected


def test_uid_list_and_hierarchy(db: Database) -> None:
    with db.reader() as session:
        series = find_series(session, parse_query({"SeriesInstanceUID": "9.1.1.2\\9.2.1.1"}))
        instances = find_instances(
            session, parse_query({"StudyInstanceUID": "9.1.1", "Modality": "CT"})
        )
    assert sorted(s.series_instance_uid for s in series) == ["9.1.1.2", "9.2.1.1"]
    assert [s.study.patient.patient_id for s in series] == ["P1", "P2"]
    assert [attribute_value(i, "SOPInstanceUID") for i in instances] == ["9.1.1.1.0", "9.1.1.1.1"]
    first = instances[0]
    assert attribute_value(first, "PatientName") == "Doe^P1"
    assert attribute_value(first, "Modality") == "CT"
    assert attribute_value(first, "InstanceNumber") == "1"
    assert attribute_value(first.series, "SOPInstanceUID") is None
    assert attribute_value(first, "NoSuchKeyword") is None


def test_paging_covers_every_match_once(db: Database) -> None:
    query = Query({})
    with db.reader() as session:
        total = count_matches(session, Level.IMAGE, query)
        pages = [find(session, Level.IMAGE, query, limit=3, offset=o) for o in range(0, 9, 3)]
    uids = [attribute_value(row, "SOPInstanceUID") for page in pages for row in page]
    assert total == 7
    assert len(uids) == len(set(uids)) == 7


def test_parse_query_skips_unknown_and_return_only_keys() -> None:
    query = parse_query(
        {"InstitutionName": "X*", "NumberOfStudyRelatedInstances": "5", "Modality": ""}
    )
    assert query.conditions == {}
    with pytest.raises(InvalidQuery, match="StudyDate"):
        parse_query({"StudyDate": "20200101-2019"})


def _plan(db: Database, level: Level, keys: dict[str, str]) -> str:
    stmt = _statement(level, parse_query(keys))
    compiled = stmt.compile(db.engine, compile_kwargs={"render_postcompile": True})
    params = tuple(compiled.params[name] for name in compiled.positiontup or [])
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
    return " | ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize(
    ("level", "keys", "index"),
    [
        (Level.PATIENT, {"PatientName": "BUC*"}, "ix_patients_patient_name_match"),
        (Level.STUDY, {"StudyDate": "20200101-20201231"}, "ix_studies_study_date"),
        (Level.STUDY, {"AccessionNumber": "ACC*"}, "ix_studies_accession_number"),
        (Level.IMAGE, {"SOPInstanceUID": "9.1.1.1.0"}, "sqlite_autoindex_instances"),
        (Level.STUDY, {"ModalitiesInStudy": "CT\\MR"}, "ix_series_modality"),
    ],
)
def test_matching_uses_an_index(
    db: Database, level: Level, keys: dict[str, str], index: str
) -> None:
    assert index in _plan(db, level, keys)
