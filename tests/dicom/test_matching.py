"""Attribute matching of PS3.4 C.2.2.2: parsing, the Python predicate, LIKE translation."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacs_hub.dicom.matching import (
    Condition,
    MatchKind,
    Term,
    like_pattern,
    matches,
    normalise_name,
    parse_condition,
)
from pacs_hub.errors import InvalidQuery


def glob_oracle(pattern: str, text: str) -> bool:
    """Naive recursive wildcard matcher: ``*`` any run, ``?`` one character."""
    if not pattern:
        return not text
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(glob_oracle(rest, text[i:]) for i in range(len(text) + 1))
    if not text:
        return False
    return (head == "?" or head == text[0]) and glob_oracle(rest, text[1:])


def like_oracle(pattern: str, text: str) -> bool:
    """SQL LIKE semantics of ``like_pattern`` output, decoded by hand (escape ``\\``)."""
    regex, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += ".*" if char == "%" else "." if char == "_" else re.escape(char)
        i += 1
    return re.fullmatch(regex, text, re.DOTALL) is not None


LETTERS = st.sampled_from(list("abAB%_.^ é-"))
TEXT = st.text(LETTERS, max_size=8)
PATTERN = st.text(st.sampled_from(list("abAB%_.^é*?\\-")), min_size=1, max_size=8)


# ---- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "   ", "*", "CT\\*", "\\"])
def test_universal_matching(raw: str) -> None:
    condition = parse_condition("Modality", "CS", raw)
    assert condition.is_universal
    assert matches(condition, "anything")


def test_single_value_and_wildcard_terms() -> None:
    assert parse_condition("StudyID", "SH", " 42 ").terms == (Term(MatchKind.SINGLE, "42"),)
    assert parse_condition("StudyID", "SH", "4?*").terms == (Term(MatchKind.WILDCARD, "4?*"),)


def test_uid_list_is_alternatives() -> None:
    condition = parse_condition("StudyInstanceUID", "UI", "1.2.3\\1.2.4")
    assert [t.value for t in condition.terms] == ["1.2.3", "1.2.4"]
    assert matches(condition, "1.2.4")
    assert not matches(condition, "1.2.5")
    assert not condition.is_single_value


@pytest.mark.parametrize(
    ("raw", "low", "high"),
    [
        ("20200101-20201231", "20200101", "20201231"),
        ("-20201231", "", "20201231"),
        ("20200101-", "20200101", ""),
    ],
)
def test_date_ranges(raw: str, low: str, high: str) -> None:
    assert parse_condition("StudyDate", "DA", raw).terms == (Term(MatchKind.RANGE, "", low, high),)


@pytest.mark.parametrize(
    ("keyword", "vr", "raw", "message"),
    [
        ("StudyDate", "DA", "2020-01-01", "expected YYYYMMDD"),
        ("StudyDate", "DA", "-2020", "expected YYYYMMDD"),
        ("StudyDate", "DA", "20201231-20200101", "start is not after its end"),
        ("StudyDate", "DA", "-", "at least one bound"),
        ("StudyDate", "DA", "2020*", "expected YYYYMMDD"),
        ("StudyTime", "TM", "25h", "expected HHMMSS"),
        ("StudyInstanceUID", "UI", "1.2.*", "no wildcard for VR UI"),
        ("InstanceNumber", "IS", "1?", "no wildcard for VR IS"),
    ],
)
def test_invalid_values_are_refused(keyword: str, vr: str, raw: str, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message) as caught:
        parse_condition(keyword, vr, raw)
    assert keyword in caught.value.message
    assert len(caught.value.comment) <= 64


def test_time_range_accepts_partial_and_legacy_times() -> None:
    condition = parse_condition("StudyTime", "TM", "10:30-12")
    assert condition.terms == (Term(MatchKind.RANGE, "", "1030", "12"),)
    assert matches(condition, "125959.999")
    assert matches(condition, "103000")
    assert not matches(condition, "102959")
    assert not matches(condition, "130000")
    assert not matches(condition, "")


def test_person_names_match_case_insensitively() -> None:
    condition = parse_condition("PatientName", "PN", "buc^jérôme")
    assert condition.terms[0].value == "BUC^JÉRÔME"
    assert matches(condition, "Buc^Jérôme")
    assert matches(parse_condition("PatientName", "PN", "BUC*"), "Buc^Jérôme")
    assert not matches(parse_condition("PatientName", "PN", "BUC"), "Buc^Jérôme")


def test_other_strings_match_case_sensitively() -> None:
    assert not matches(parse_condition("StudyDescription", "LO", "head*"), "HEAD CT")
    assert matches(parse_condition("StudyDescription", "LO", "HEAD*"), "HEAD CT")


def test_multi_valued_stored_value_matches_any() -> None:
    condition = parse_condition("ModalitiesInStudy", "CS", "MR\\PT")
    assert matches(condition, "CT\\PT")
    assert not matches(condition, "CT\\SR")


def test_normalise_name_folds_spaces_and_case() -> None:
    assert normalise_name("  van  der Berg^Jan ") == "VAN DER BERG^JAN"


def test_like_pattern_escapes_sql_wildcards() -> None:
    assert like_pattern("50%_a\\b*?") == "50\\%\\_a\\\\b%_"


# ---- properties against naive oracles -----------------------------------------------


@given(pattern=PATTERN, text=TEXT)
def test_wildcard_predicate_matches_oracle(pattern: str, text: str) -> None:
    condition = Condition("LO", (Term(MatchKind.WILDCARD, pattern),))
    assert matches(condition, text) == glob_oracle(pattern, text)


@given(pattern=PATTERN, text=TEXT)
def test_like_translation_matches_oracle(pattern: str, text: str) -> None:
    assert like_oracle(like_pattern(pattern), text) == glob_oracle(pattern, text)


DAYS = st.integers(min_value=0, max_value=365 * 60).map(lambda n: date(1970, 1, 1) + timedelta(n))


@given(stored=DAYS, low=st.none() | DAYS, high=st.none() | DAYS)
def test_date_range_predicate_matches_calendar_oracle(
    stored: date, low: date | None, high: date | None
) -> None:
    if low is None and high is None:
        return
    if low is not None and high is not None and low > high:
        low, high = high, low
    raw = f"{low:%Y%m%d}" if low else ""
    raw += "-" + (f"{high:%Y%m%d}" if high else "")
    expected = (low is None or low <= stored) and (high is None or stored <= high)
    assert matches(parse_condition("StudyDate", "DA", raw), f"{stored:%Y%m%d}") == expected
