"""QIDO-RS requests and answers (PS3.18 10.6), on the matching code C-FIND uses.

:func:`parse_search` reads the query parameters of PS3.18 8.3.4 (``{attributeID}=
{value}`` by keyword or tag, ``includefield``, ``fuzzymatching``, ``limit``,
``offset``) into a :class:`Search`; matching itself is
:mod:`pacs_hub.storage.query`, the same SQL as C-FIND. :func:`row_json` renders one
match in the DICOM JSON Model (PS3.18 F.2) with the default return attributes of
PS3.18 10.6.3.3 (Tables 10.6.3-3 to -5), the matching keys and the included fields.

Decisions where the standard leaves room:

* no match is ``200`` with ``[]`` (CP-2473; OHIF expects it);
* a matching key the index cannot match (a known attribute, but not one of
  :data:`~pacs_hub.storage.query.ATTRIBUTES`, or a sequence path) is ignored, and
  the response carries ``Warning: 299 ...`` naming it (PS3.18 8.3.4.1, 8.6.2);
* an unknown attribute or parameter, or a ``limit`` above ``PACS_HUB_QIDO_MAX_LIMIT``,
  is a 400 with problem+json;
* UID lists may be separated by commas or backslashes;
* included fields outside the index are read from the stored metadata of one
  instance of the matched entity (the first one received).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from pacs_hub.dicom.header import is_valid_uid
from pacs_hub.errors import InvalidQuery
from pacs_hub.storage.query import (
    ATTRIBUTES,
    UNIQUE_KEYS,
    Level,
    Query,
    Row,
    attribute_value,
    parse_query,
)

# includeremote: the hub's own parameter (federated search, pacs_hub.dicomweb.federated).
CONTROL_PARAMETERS = frozenset(
    {"includefield", "fuzzymatching", "limit", "offset", "includeremote"}
)
UTF8 = "ISO_IR 192"
# PS3.18 Table 10.6.3-3 (study), -4 (series), -5 (instance): default return attributes.
DEFAULT_KEYS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ),
    Level.IMAGE: (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
    ),
}


@dataclass(frozen=True, slots=True)
class Search:
    """One QIDO-RS request, parsed."""

    level: Level
    query: Query
    keys: tuple[str, ...]
    """Keywords returned for every match (defaults, matching keys, included fields)."""
    extra_tags: tuple[int, ...]
    """Included tags the index does not hold (read from stored metadata)."""
    limit: int
    offset: int
    ignored: tuple[str, ...] = field(default=())
    """Matching keys that were not applied (named in a Warning header)."""


def _keyword(attribute_id: str) -> str:
    """A keyword from a keyword or an 8-hex-digit tag; raise InvalidQuery if unknown."""
    if len(attribute_id) == 8 and all(c in "0123456789abcdefABCDEF" for c in attribute_id):
        keyword = keyword_for_tag(int(attribute_id, 16))
        if keyword:
            return keyword
        raise InvalidQuery(f"attribute {attribute_id} is not in the DICOM dictionary")
    if tag_for_keyword(attribute_id) is None:
        raise InvalidQuery(f"unknown query parameter or attribute {attribute_id[:64]!r}")
    return attribute_id


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidQuery(f"{name}={raw[:20]!r}: not an integer") from None
    if not low <= value <= high:
        raise InvalidQuery(f"{name}={raw[:20]}: must be between {low} and {high}")
    return value


def _included(values: Sequence[str], level: Level) -> tuple[list[str], list[int]]:
    """Keywords (from the index) and other tags named by ``includefield``."""
    keywords: list[str] = []
    extra: list[int] = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            if item == "all":
                keywords += [k for k, a in ATTRIBUTES.items() if a.level.depth <= level.depth]
                continue
            if "." in item:
                raise InvalidQuery(f"includefield {item[:40]!r}: sequence paths not supported")
            keyword = _keyword(item)
            attribute = ATTRIBUTES.get(keyword)
            if attribute is not None and attribute.level.depth <= level.depth:
                keywords.append(keyword)
            elif attribute is None:
                extra.append(int(tag_for_keyword(keyword) or 0))
    return keywords, extra


def _matching(
    params: Sequence[tuple[str, str]], fixed: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    keys: dict[str, str] = {}
    ignored: list[str] = []
    for name, value in params:
        if name in CONTROL_PARAMETERS:
            continue
        if "." in name:
            ignored.append(name)  # sequence matching (PS3.18 8.3.4.1): not indexed
            continue
        keyword = _keyword(name)
        if keyword in keys:
            raise InvalidQuery(f"matching key {keyword} given twice")
        if dictionary_VR(keyword) == "UI":
            value = value.replace(",", "\\")
            for uid in filter(None, (v.strip() for v in value.split("\\"))):
                if uid != "*" and not is_valid_uid(uid):
                    raise InvalidQuery(f"{keyword} {uid[:64]!r} is not a valid UID")
        keys[keyword] = value
    for keyword, value in fixed.items():
        if keys.get(keyword, value) != value:
            raise InvalidQuery(f"{keyword} in the query differs from the one in the path")
        keys[keyword] = value
    return keys, ignored


def parse_search(
    level: Level,
    params: Sequence[tuple[str, str]],
    fixed: Mapping[str, str],
    max_limit: int,
    regional_issuer: str = "",
) -> Search:
    """Read QIDO-RS query parameters; ``fixed`` are the UIDs given in the path.

    ``PatientID=<regional id or INS>&IssuerOfPatientID=<regional issuer or INS
    issuer/OID>`` matches every linked local identity (:func:`parse_query`).
    """
    for name, _value in params:
        if name.lower() in CONTROL_PARAMETERS and name not in CONTROL_PARAMETERS:
            raise InvalidQuery(f"parameter {name!r}: QIDO-RS parameters are lower case")
    control: dict[str, list[str]] = {}
    for name, value in params:
        if name in CONTROL_PARAMETERS:
            control.setdefault(name, []).append(value)
    fuzzy_raw = (control.get("fuzzymatching") or ["false"])[-1].lower()
    if fuzzy_raw not in {"true", "false"}:
        raise InvalidQuery(f"fuzzymatching={fuzzy_raw[:10]!r}: expected true or false")
    limit = _int("limit", control["limit"][-1], 1, max_limit) if "limit" in control else max_limit
    offset = _int("offset", control["offset"][-1], 0, 2**31) if "offset" in control else 0
    keys, ignored = _matching(params, fixed)
    query = parse_query(keys, fuzzy=fuzzy_raw == "true", regional_issuer=regional_issuer)
    ignored += [k for k in keys if ATTRIBUTES.get(k) is None or ATTRIBUTES[k].match is None]
    included, extra = _included(control.get("includefield", []), level)
    returned = list(_default_keys(level, fixed))
    returned += [k for k in keys if k in ATTRIBUTES and ATTRIBUTES[k].level.depth <= level.depth]
    returned += included
    return Search(
        level=level,
        query=query,
        keys=tuple(dict.fromkeys(returned)),
        extra_tags=tuple(dict.fromkeys(extra)),
        limit=limit,
        offset=offset,
        ignored=tuple(ignored),
    )


def _default_keys(level: Level, fixed: Mapping[str, str]) -> list[str]:
    """Defaults of the level, plus the parents' unique keys and, when not scoped to a
    parent, the parent's defaults (PS3.18 10.6.3.3)."""
    keys = list(DEFAULT_KEYS[level])
    if level is Level.SERIES:
        keys.append("StudyInstanceUID")
        if "StudyInstanceUID" not in fixed:
            keys += DEFAULT_KEYS[Level.STUDY]
    if level is Level.IMAGE:
        keys += ["StudyInstanceUID", "SeriesInstanceUID"]
        if "SeriesInstanceUID" not in fixed:
            keys += DEFAULT_KEYS[Level.SERIES]
        if "StudyInstanceUID" not in fixed:
            keys += DEFAULT_KEYS[Level.STUDY]
    return keys


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def element_json(keyword: str, value: str | int | None) -> dict[str, Any]:
    """One attribute in the DICOM JSON Model (PS3.18 F.2.2-F.2.3)."""
    vr = ATTRIBUTES[keyword].vr if keyword in ATTRIBUTES else dictionary_VR(keyword)
    out: dict[str, Any] = {"vr": vr}
    if value is None or value == "":
        return out
    if vr == "PN":
        groups = str(value).split("=")
        names = ("Alphabetic", "Ideographic", "Phonetic")
        out["Value"] = [{n: g for n, g in zip(names, groups, strict=False) if g}]
    elif vr in {"IS", "US", "UL", "SS", "SL"}:
        out["Value"] = [int(v) for v in str(value).split("\\") if v.strip()]
    else:
        out["Value"] = str(value).split("\\")
    return out


def retrieve_url(base: str, row: Row) -> str:
    """RetrieveURL (0008,1190) of a matched study, series or instance (PS3.18 10.6.3.3)."""
    parts = [("studies", "StudyInstanceUID"), ("series", "SeriesInstanceUID")]
    parts.append(("instances", "SOPInstanceUID"))
    url = base
    for segment, keyword in parts:
        value = attribute_value(row, keyword)
        if value is None:
            break
        url += f"/{segment}/{value}"
    return url


def row_json(search: Search, row: Row, base: str) -> dict[str, Any]:
    """One match as a DICOM JSON object, tags in ascending order."""
    out: dict[str, Any] = {
        _tag("SpecificCharacterSet"): {"vr": "CS", "Value": [UTF8]},
        _tag("InstanceAvailability"): {"vr": "CS", "Value": ["ONLINE"]},
        _tag("RetrieveURL"): {"vr": "UR", "Value": [retrieve_url(base, row)]},
    }
    for keyword in search.keys:
        out[_tag(keyword)] = element_json(keyword, attribute_value(row, keyword))
    return dict(sorted(out.items()))


def unique_key(level: Level) -> str:
    """The unique key of a level (for messages)."""
    return UNIQUE_KEYS[level]
