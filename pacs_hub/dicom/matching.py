"""Attribute matching of PS3.4 C.2.2.2, independent of any database or dataset.

A query key's value is parsed once into a :class:`Condition`: a tuple of
alternative :class:`Term` (empty for Universal Matching, C.2.2.2.3). Each term is
Single Value (C.2.2.2.1), Wildcard (C.2.2.2.4) or Range (C.2.2.2.5) matching; a
List of UID (C.2.2.2.2), or any other backslash-separated value, is several
terms of which one must match. :func:`matches` is the Python predicate;
:mod:`pacs_hub.storage.query` translates the same conditions to SQL, and both
share :func:`like_pattern` / :func:`wildcard_regex`.

Person Names (PN) match case-insensitively on :func:`normalise_name` forms, as
C.2.2.2.1 allows; every other VR matches case-sensitively.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from pacs_hub.errors import InvalidQuery

LIKE_ESCAPE = "\\"
DATE_PATTERN = re.compile(r"^\d{8}$")
TIME_PATTERN = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
RANGE_VRS = frozenset({"DA", "TM"})
# C.2.2.2.4: wildcards are not allowed for these VRs ("*" alone is still universal).
NO_WILDCARD_VRS = frozenset(
    {"DA", "TM", "DT", "UI", "IS", "DS", "SL", "SS", "UL", "US", "FL", "FD", "AS", "AT"}
)


def normalise_name(name: str) -> str:
    """The form of a Person Name (PN) used for matching: upper case, spaces folded.

    PS3.4 C.2.2.2.1 lets PN matching be case-insensitive; the stored name is kept as
    received and answers always return it unchanged.
    """
    return " ".join(name.upper().split())


def fuzzy_name(name: str) -> str:
    """The form of a Person Name for QIDO-RS fuzzy matching (PS3.18 8.3.4.1).

    Accents and case are ignored and the component separators (``^``, ``=``) become
    spaces: "Dupont^Hélène" and "DUPONT HELENE" have the same fuzzy form.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.upper().replace("^", " ").replace("=", " ").split())


class MatchKind(StrEnum):
    """The kinds of matching of one term (PS3.4 C.2.2.2)."""

    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"


@dataclass(frozen=True, slots=True)
class Term:
    """One alternative of a condition: a value, a wildcard pattern or a range.

    For RANGE, ``low`` and ``high`` are inclusive bounds; an empty bound is open.
    Values of PN conditions are already normalised.
    """

    kind: MatchKind
    value: str = ""
    low: str = ""
    high: str = ""


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed query key: the VR it matches under and its alternative terms."""

    vr: str
    terms: tuple[Term, ...] = ()

    @property
    def is_universal(self) -> bool:
        """Universal Matching (C.2.2.2.3): every entity matches."""
        return not self.terms

    @property
    def is_single_value(self) -> bool:
        """Exactly one Single Value term (what a unique key above the level needs)."""
        return len(self.terms) == 1 and self.terms[0].kind is MatchKind.SINGLE


def _invalid(keyword: str, value: str, expected: str) -> InvalidQuery:
    return InvalidQuery(f"{keyword} {value[:24]!r}: expected {expected}")


def _check_date_time(keyword: str, vr: str, value: str) -> None:
    pattern, expected = (
        (DATE_PATTERN, "YYYYMMDD") if vr == "DA" else (TIME_PATTERN, "HHMMSS.FFFFFF")
    )
    if not pattern.match(value):
        raise _invalid(keyword, value, expected)


def _range_term(keyword: str, vr: str, value: str) -> Term:
    """Range Matching (C.2.2.2.5): ``low-high``, ``low-`` or ``-high``."""
    low, _, high = value.partition("-")
    if not low and not high:
        raise _invalid(keyword, value, "a range with at least one bound")
    for bound in (low, high):
        if bound:
            _check_date_time(keyword, vr, bound)
    if low and high and low[: len(high)] > high:
        raise _invalid(keyword, value, "a range whose start is not after its end")
    return Term(MatchKind.RANGE, low=low, high=high)


def _term(keyword: str, vr: str, value: str) -> Term:
    if vr == "TM":
        value = value.replace(":", "")  # ACR-NEMA style HH:MM:SS
    if vr in RANGE_VRS:
        if "-" in value:
            return _range_term(keyword, vr, value)
        _check_date_time(keyword, vr, value)
        return Term(MatchKind.SINGLE, value)
    has_wildcard = "*" in value or "?" in value
    if has_wildcard and vr in NO_WILDCARD_VRS:
        raise _invalid(keyword, value, f"no wildcard for VR {vr}")
    if vr == "PN":
        value = normalise_name(value)
    return Term(MatchKind.WILDCARD if has_wildcard else MatchKind.SINGLE, value)


def parse_condition(keyword: str, vr: str, raw: str) -> Condition:
    """Parse the value of query key ``keyword`` (of VR ``vr``); raise InvalidQuery.

    An empty value, or ``*`` alone, is Universal Matching (C.2.2.2.3, C.2.2.2.4);
    values separated by backslashes are alternatives (C.2.2.2.2 for UIDs).
    """
    parts = [part.strip() for part in raw.split("\\")]
    if all(not part for part in parts) or "*" in parts:
        return Condition(vr)
    return Condition(vr, tuple(_term(keyword, vr, part) for part in parts if part))


def like_pattern(pattern: str) -> str:
    """A SQL LIKE pattern (ESCAPE ``\\``) for a C.2.2.2.4 wildcard pattern."""
    out = []
    for char in pattern:
        if char in "%_\\":
            out.append(LIKE_ESCAPE + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


@lru_cache(maxsize=256)
def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """A compiled regular expression, to ``fullmatch``, for a wildcard pattern."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def term_matches(term: Term, stored: str) -> bool:
    """Whether one stored value (already normalised for PN) matches ``term``."""
    if term.kind is MatchKind.SINGLE:
        return stored == term.value
    if term.kind is MatchKind.WILDCARD:
        return wildcard_regex(term.value).fullmatch(stored) is not None
    if not stored:
        return False
    return (not term.low or stored >= term.low) and (
        not term.high or stored[: len(term.high)] <= term.high
    )


def matches(condition: Condition, stored: str) -> bool:
    """The Python predicate of PS3.4 C.2.2.2: does the stored value match?

    A multi-valued stored value (backslash-separated) matches when any of its
    values matches any term (as Modalities in Study does, C.6.1.1.3).
    """
    if condition.is_universal:
        return True
    values = stored.split("\\") if stored else [""]
    if condition.vr == "PN":
        values = [normalise_name(v) for v in values]
    return any(term_matches(t, v) for t in condition.terms for v in values)
