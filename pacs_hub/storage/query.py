"""Searching the index: PS3.4 C.2.2.2 matching translated to SQL, shared by C-FIND and QIDO-RS.

A :class:`Query` maps DICOM keywords to parsed :class:`~pacs_hub.dicom.matching.Condition`.
``find_patients`` / ``find_studies`` / ``find_series`` / ``find_instances`` run it at
one level of the information model (PS3.3 A.1.2; PS3.4 C.6.1.1 Patient Root,
C.6.2.1 Study Root) and return typed rows that carry their parents, in primary-key
order, a page at a time (``limit``/``offset``). Every condition becomes a SQL
predicate on an indexed column where one exists, so nothing is filtered in Python:

* Single Value (C.2.2.2.1) and List of UID (C.2.2.2.2): ``=`` / ``IN``;
* Wildcard (C.2.2.2.4): ``LIKE`` with ``%`` and ``_`` escaped (case-sensitive: the
  SQLite index sets ``case_sensitive_like``, so a prefix pattern uses the B-tree);
* Range (C.2.2.2.5): ``>=`` / ``<=`` on the DA/TM string forms;
* Person Names match their upper-cased ``*_match`` columns (case-insensitive);
* Modalities in Study (a study-level key, C.6.1.1.3) matches when any series of the study matches.

The computed attributes (Number of ... Related ..., PS3.4 C.3.4) are the
counters kept by :mod:`pacs_hub.storage.index`; they are returned, never matched.

Access (issue 4, one access policy): a :class:`Query` may carry an :class:`Access`,
the access policy's predicate (:meth:`pacs_hub.trust.policy.Policy.visible_studies`,
built by :func:`pacs_hub.trust.access.query_access`). It is part of the SQL of every
level, so pages and totals (:func:`count_matches`) never include a study the caller
may not see: at STUDY, SERIES and IMAGE level only the rows of visible studies match;
at PATIENT level only patients with a visible study, and their Number of Patient
Related Studies / Series / Instances count the visible studies only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select
from sqlalchemy.orm import DeclarativeBase, Session, aliased

from pacs_hub.dicom.ins import INS_ISSUERS
from pacs_hub.dicom.matching import (
    LIKE_ESCAPE,
    Condition,
    MatchKind,
    Term,
    fuzzy_name,
    like_pattern,
    parse_condition,
)
from pacs_hub.storage.models import Instance, Patient, RegionalPatient, Series, Study


class Level(StrEnum):
    """Query/Retrieve Levels of PS3.4 C.6, top down."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """0 for PATIENT ... 3 for IMAGE."""
        return list(Level).index(self)


MODELS: dict[Level, type[DeclarativeBase]] = {
    Level.PATIENT: Patient,
    Level.STUDY: Study,
    Level.SERIES: Series,
    Level.IMAGE: Instance,
}
UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True, slots=True)
class Attribute:
    """A query key the index knows: its level, VR, row field and matched column.

    ``match`` names the model column a condition compares (``None``: return only).
    """

    keyword: str
    level: Level
    vr: str
    field: str
    match: str | None

    @property
    def fuzzy(self) -> str | None:
        """The column of the fuzzy form (:func:`fuzzy_name`) of a Person Name."""
        return f"{self.field}_fuzzy" if self.vr == "PN" else None


def _attrs(level: Level, *specs: tuple[str, str, str, str | None]) -> list[Attribute]:
    return [Attribute(keyword, level, vr, fld, match) for keyword, vr, fld, match in specs]


ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in [
        *_attrs(
            Level.PATIENT,
            ("PatientName", "PN", "patient_name", "patient_name_match"),
            ("PatientID", "LO", "patient_id", "patient_id"),
            ("IssuerOfPatientID", "LO", "issuer_of_patient_id", "issuer_of_patient_id"),
            ("PatientBirthDate", "DA", "patient_birth_date", "patient_birth_date"),
            ("PatientSex", "CS", "patient_sex", "patient_sex"),
            ("NumberOfPatientRelatedStudies", "IS", "num_studies", None),
            ("NumberOfPatientRelatedSeries", "IS", "num_series", None),
            ("NumberOfPatientRelatedInstances", "IS", "num_instances", None),
        ),
        *_attrs(
            Level.STUDY,
            ("StudyInstanceUID", "UI", "study_instance_uid", "study_instance_uid"),
            ("StudyDate", "DA", "study_date", "study_date"),
            ("StudyTime", "TM", "study_time", "study_time"),
            ("AccessionNumber", "SH", "accession_number", "accession_number"),
            ("StudyID", "SH", "study_id", "study_id"),
            ("StudyDescription", "LO", "study_description", "study_description"),
            (
                "ReferringPhysicianName",
                "PN",
                "referring_physician_name",
                "referring_physician_name_match",
            ),
            ("ModalitiesInStudy", "CS", "modalities_in_study", "modality"),
            ("NumberOfStudyRelatedSeries", "IS", "num_series", None),
            ("NumberOfStudyRelatedInstances", "IS", "num_instances", None),
        ),
        *_attrs(
            Level.SERIES,
            ("SeriesInstanceUID", "UI", "series_instance_uid", "series_instance_uid"),
            ("Modality", "CS", "modality", "modality"),
            ("SeriesNumber", "IS", "series_number", "series_number"),
            ("SeriesDescription", "LO", "series_description", "series_description"),
            ("BodyPartExamined", "CS", "body_part_examined", "body_part_examined"),
            ("SeriesDate", "DA", "series_date", "series_date"),
            ("SeriesTime", "TM", "series_time", "series_time"),
            ("StationName", "SH", "station_name", "station_name"),
            ("NumberOfSeriesRelatedInstances", "IS", "num_instances", None),
        ),
        *_attrs(
            Level.IMAGE,
            ("SOPInstanceUID", "UI", "sop_instance_uid", "sop_instance_uid"),
            ("SOPClassUID", "UI", "sop_class_uid", "sop_class_uid"),
            ("InstanceNumber", "IS", "instance_number", "instance_number"),
            ("AvailableTransferSyntaxUID", "UI", "transfer_syntax_uid", "transfer_syntax_uid"),
            ("Rows", "US", "rows", None),
            ("Columns", "US", "columns", None),
            ("NumberOfFrames", "IS", "number_of_frames", None),
        ),
    ]
}


@dataclass(frozen=True, slots=True)
class Access:
    """What a caller may see, as SQL: the access policy applied to a query.

    ``studies`` is true for a visible study (a predicate on :class:`Study` and
    :class:`Patient`, joined); ``patients`` is true for a patient with at least one
    visible study (on :class:`Patient` alone). Build it with :func:`access_from`.
    """

    studies: ColumnElement[bool]
    patients: ColumnElement[bool]


def access_from(visible: Callable[[Any, Any], ColumnElement[bool] | None]) -> Access | None:
    """An :class:`Access` from a predicate factory ``visible(study, patient)`` (entities
    or aliases); None when the factory says everything is visible (returns None)."""
    studies = visible(Study, Patient)
    if studies is None:
        return None
    study, patient = aliased(Study), aliased(Patient)
    inner = visible(study, patient)
    if inner is None:
        return None
    patients = Patient.id.in_(
        select(study.patient_pk).join(patient, patient.id == study.patient_pk).where(inner)
    )
    return Access(studies, patients)


@dataclass(frozen=True, slots=True)
class Query:
    """Matching keys by DICOM keyword; keys without a condition match everything.

    With ``fuzzy``, Person Name conditions hold :func:`fuzzy_name` patterns and match
    the ``*_fuzzy`` columns (QIDO-RS ``fuzzymatching=true``, PS3.18 8.3.4.1).
    """

    conditions: Mapping[str, Condition]
    fuzzy: bool = False
    linked: LinkedPatients | None = None
    """Set when PatientID names a regional patient or an INS (see :func:`parse_query`)."""
    access: Access | None = None
    """The access policy's restriction (None: no restriction, e.g. the policy is off)."""

    def restricted(self, access: Access | None) -> Query:
        """The same query, matching only what ``access`` lets its caller see."""
        return replace(self, access=access)


@dataclass(frozen=True, slots=True)
class LinkedPatients:
    """Every local identity linked to regional patients named by their regional id
    or by their INS (matricule and OIDs): replaces PatientID / IssuerOfPatientID
    matching (france.md 3-4; :mod:`pacs_hub.regional.identity`)."""

    regional_ids: tuple[str, ...] = ()
    ins: tuple[str, ...] = ()
    ins_oids: tuple[str, ...] = ()


def _linked(conditions: Mapping[str, Condition], regional_issuer: str) -> LinkedPatients | None:
    """IssuerOfPatientID = the regional issuer or an INS issuer, with single PatientIDs."""
    issuer = conditions.get("IssuerOfPatientID")
    patient = conditions.get("PatientID")
    if issuer is None or patient is None or not issuer.is_single_value:
        return None
    if any(t.kind is not MatchKind.SINGLE for t in patient.terms):
        return None
    values = tuple(t.value for t in patient.terms)
    name = issuer.terms[0].value
    if regional_issuer and name == regional_issuer:
        return LinkedPatients(regional_ids=values)
    if name in INS_ISSUERS:
        return LinkedPatients(
            ins=tuple(v.upper() for v in values), ins_oids=tuple(sorted(INS_ISSUERS[name]))
        )
    return None


def _linked_clause(linked: LinkedPatients) -> ColumnElement[bool]:
    """Patients linked to the named regional patients (or to the one they were merged into)."""
    regional = RegionalPatient
    if linked.regional_ids:
        named = regional.regional_id.in_(linked.regional_ids)
        merged_into = select(regional.merged_into_pk).where(named)
        return Patient.regional_patient_pk.in_(
            select(regional.id).where(or_(named, regional.id.in_(merged_into)))
        )
    holders = select(regional.id).where(
        regional.ins.in_(linked.ins), regional.ins_oid.in_(linked.ins_oids), regional.active
    )
    return or_(
        Patient.regional_patient_pk.in_(holders),
        and_(Patient.ins.in_(linked.ins), Patient.ins_oid.in_(linked.ins_oids)),
    )


def _fuzzy_condition(raw: str) -> Condition:
    """Accent- and case-insensitive: a name word starts with the value (or its pattern)."""
    terms: list[Term] = []
    for part in raw.split("\\"):
        value = fuzzy_name(part)
        if not value or value == "*":
            return Condition("PN")
        value = value if value.endswith("*") else value + "*"
        terms += [Term(MatchKind.WILDCARD, value), Term(MatchKind.WILDCARD, "* " + value)]
    return Condition("PN", tuple(terms))


def parse_query(
    keys: Mapping[str, str], *, fuzzy: bool = False, regional_issuer: str = ""
) -> Query:
    """Parse ``keyword -> raw value`` pairs (PS3.4 C.2.2.2); raise InvalidQuery.

    Keys the index cannot match (unknown or return-only) are left out: an SCP
    ignores the optional keys it does not support (PS3.4 C.2.2.1). When
    IssuerOfPatientID is ``regional_issuer`` (or an INS issuer: ``ASIP-SANTE-INS-NIR``,
    an INS OID) the PatientIDs are regional ids (or INS) and every linked local
    identity matches (:class:`LinkedPatients`).
    """
    conditions = {}
    for keyword, raw in keys.items():
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.match is None:
            continue
        if fuzzy and attribute.fuzzy:
            condition = _fuzzy_condition(raw)
        else:
            condition = parse_condition(keyword, attribute.vr, raw)
        if not condition.is_universal:
            conditions[keyword] = condition
    return Query(conditions, fuzzy, _linked(conditions, regional_issuer))


@dataclass(frozen=True, slots=True)
class PatientRow:
    """A matching patient with its computed attributes (PS3.4 C.6.1.1.2)."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    num_studies: int
    num_series: int
    num_instances: int


@dataclass(frozen=True, slots=True)
class StudyRow:
    """A matching study and its patient (PS3.4 C.6.1.1.3)."""

    patient: PatientRow
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    modalities_in_study: str
    num_series: int
    num_instances: int


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """A matching series and its study (PS3.4 C.6.1.1.4)."""

    study: StudyRow
    series_instance_uid: str
    modality: str
    series_number: str
    series_description: str
    body_part_examined: str
    series_date: str
    series_time: str
    station_name: str
    num_instances: int


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """A matching instance and its series (PS3.4 C.6.1.1.5)."""

    series: SeriesRow
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: str
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None


Row = PatientRow | StudyRow | SeriesRow | InstanceRow
R = TypeVar("R", PatientRow, StudyRow, SeriesRow, InstanceRow)
ROW_LEVELS: dict[type[Any], Level] = {
    PatientRow: Level.PATIENT,
    StudyRow: Level.STUDY,
    SeriesRow: Level.SERIES,
    InstanceRow: Level.IMAGE,
}


def _parent(row: Row) -> Row:
    if isinstance(row, InstanceRow):
        return row.series
    if isinstance(row, SeriesRow):
        return row.study
    if isinstance(row, StudyRow):
        return row.patient
    raise ValueError("a patient row has no parent")


def row_level(row: Row) -> Level:
    """The level a row was found at."""
    return ROW_LEVELS[type(row)]


def attribute_value(row: Row, keyword: str) -> str | int | None:
    """The value of ``keyword`` for ``row`` or its parents (``None``: not known here).

    Values are decoded Unicode strings as stored; multi-valued ones are joined by
    backslashes (Modalities in Study). Attributes below the row's level are ``None``.
    """
    attribute = ATTRIBUTES.get(keyword)
    if attribute is None or attribute.level.depth > row_level(row).depth:
        return None
    while row_level(row) is not attribute.level:
        row = _parent(row)
    value: str | int | None = getattr(row, attribute.field)
    return value


def _from_model(cls: type[R], model: Any, **parent: Row) -> R:
    values: dict[str, Any] = {
        f.name: getattr(model, f.name) for f in fields(cls) if f.name not in parent
    }
    values.update(parent)
    return cls(**values)


def _term_clause(column: Any, term: Term, vr: str) -> ColumnElement[bool]:
    if term.kind is MatchKind.SINGLE:
        return column == term.value  # type: ignore[no-any-return]
    if term.kind is MatchKind.WILDCARD:
        return column.like(like_pattern(term.value), escape=LIKE_ESCAPE)  # type: ignore[no-any-return]
    bounds: list[ColumnElement[bool]] = [column != ""]
    if term.low:
        bounds.append(column >= term.low)
    if term.high:
        stored = column if vr == "DA" else func.substr(column, 1, len(term.high))
        bounds.append(stored <= term.high)
    return and_(*bounds)


def condition_clause(column: Any, condition: Condition) -> ColumnElement[bool] | None:
    """The SQL predicate of a condition on ``column`` (``None`` for universal)."""
    if condition.is_universal:
        return None
    singles = [t.value for t in condition.terms if t.kind is MatchKind.SINGLE]
    clauses: list[ColumnElement[bool]] = []
    if len(singles) > 1:
        clauses.append(column.in_(singles))
    elif singles:
        clauses.append(column == singles[0])
    clauses += [
        _term_clause(column, t, condition.vr)
        for t in condition.terms
        if t.kind is not MatchKind.SINGLE
    ]
    return or_(*clauses) if len(clauses) > 1 else clauses[0]


def _modalities_clause(condition: Condition) -> ColumnElement[bool] | None:
    """Modalities in Study: some series of the study has a matching Modality."""
    other = aliased(Series)
    clause = condition_clause(other.modality, condition)
    if clause is None:
        return None
    return Study.id.in_(select(other.study_pk).where(clause))


def _where(query: Query, level: Level) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if level is Level.PATIENT:  # an identity whose studies were all destroyed is no match
        clauses.append(exists().where(Study.patient_pk == Patient.id))
    for keyword, condition in query.conditions.items():
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.match is None or attribute.level.depth > level.depth:
            continue
        if query.linked and keyword in ("PatientID", "IssuerOfPatientID"):
            continue
        column = attribute.fuzzy if query.fuzzy and attribute.fuzzy else attribute.match
        if keyword == "ModalitiesInStudy":
            clause = _modalities_clause(condition)
        else:
            clause = condition_clause(getattr(MODELS[attribute.level], column), condition)
        if clause is not None:
            clauses.append(clause)
    if query.linked:
        clauses.append(_linked_clause(query.linked))
    if query.access is not None:
        access = query.access
        clauses.append(access.patients if level is Level.PATIENT else access.studies)
    return clauses


def _statement(level: Level, query: Query) -> Select[Any]:
    models: list[Any] = [MODELS[lv] for lv in Level if lv.depth <= level.depth]
    stmt: Select[Any] = select(*models)
    if level.depth >= 1:
        stmt = stmt.join_from(Study, Patient, Study.patient_pk == Patient.id)
    if level.depth >= 2:
        stmt = stmt.join(Series, Series.study_pk == Study.id)
    if level.depth >= 3:
        stmt = stmt.join(Instance, Instance.series_pk == Series.id)
    return stmt.where(*_where(query, level))


def _page(
    session: Session, level: Level, query: Query, limit: int | None, offset: int
) -> Sequence[Any]:
    leaf = MODELS[level]
    stmt = _statement(level, query).order_by(leaf.id).offset(offset)  # type: ignore[attr-defined]
    if limit is not None:
        stmt = stmt.limit(limit)
    return session.execute(stmt).all()


def count_matches(session: Session, level: Level, query: Query) -> int:
    """How many entities of ``level`` match (for paging and QIDO-RS totals)."""
    stmt = select(func.count()).select_from(_statement(level, query).subquery())
    return int(session.execute(stmt).scalar_one())


def find_patients(
    session: Session, query: Query, *, limit: int | None = None, offset: int = 0
) -> list[PatientRow]:
    """Patients matching ``query`` (PATIENT level, PS3.4 C.6.1.1.2)."""
    rows = _page(session, Level.PATIENT, query, limit, offset)
    found = [_from_model(PatientRow, p) for (p,) in rows]
    if query.access is None or not found:
        return found
    counts = _visible_counts(session, query.access, [p.id for (p,) in rows])
    out = []
    for row, (p,) in zip(found, rows, strict=True):
        studies, series, instances = counts.get(p.id, (0, 0, 0))
        out.append(replace(row, num_studies=studies, num_series=series, num_instances=instances))
    return out


def _visible_counts(
    session: Session, access: Access, patient_pks: list[int]
) -> dict[int, tuple[int, int, int]]:
    """Number of Patient Related Studies / Series / Instances counting visible studies only."""
    stmt = (
        select(
            Study.patient_pk,
            func.count(Study.id),
            func.coalesce(func.sum(Study.num_series), 0),
            func.coalesce(func.sum(Study.num_instances), 0),
        )
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Study.patient_pk.in_(patient_pks), access.studies)
        .group_by(Study.patient_pk)
    )
    return {int(pk): (int(a), int(b), int(c)) for pk, a, b, c in session.execute(stmt)}


def find_studies(
    session: Session, query: Query, *, limit: int | None = None, offset: int = 0
) -> list[StudyRow]:
    """Studies matching ``query``; patient keys match too (STUDY level, PS3.4 C.6.1.1.3)."""
    rows = _page(session, Level.STUDY, query, limit, offset)
    return [_study(p, s) for p, s in rows]


def find_series(
    session: Session, query: Query, *, limit: int | None = None, offset: int = 0
) -> list[SeriesRow]:
    """Series matching ``query`` (SERIES level, PS3.4 C.6.1.1.4)."""
    rows = _page(session, Level.SERIES, query, limit, offset)
    return [_from_model(SeriesRow, se, study=_study(p, s)) for p, s, se in rows]


def find_instances(
    session: Session, query: Query, *, limit: int | None = None, offset: int = 0
) -> list[InstanceRow]:
    """Instances matching ``query`` (IMAGE level, PS3.4 C.6.1.1.5)."""
    rows = _page(session, Level.IMAGE, query, limit, offset)
    return [
        _from_model(InstanceRow, i, series=_from_model(SeriesRow, se, study=_study(p, s)))
        for p, s, se, i in rows
    ]


def find(
    session: Session, level: Level, query: Query, *, limit: int | None = None, offset: int = 0
) -> Sequence[Row]:
    """Entities of ``level`` matching ``query``: one of the ``find_*`` by level."""
    if level is Level.PATIENT:
        return find_patients(session, query, limit=limit, offset=offset)
    if level is Level.STUDY:
        return find_studies(session, query, limit=limit, offset=offset)
    if level is Level.SERIES:
        return find_series(session, query, limit=limit, offset=offset)
    return find_instances(session, query, limit=limit, offset=offset)


def _study(patient: Patient, study: Study) -> StudyRow:
    return _from_model(StudyRow, study, patient=_from_model(PatientRow, patient))
