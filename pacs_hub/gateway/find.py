"""C-FIND SCP: Query/Retrieve FIND of PS3.4 C.4.1, Patient Root and Study Root (C.6).

The request Identifier is read once into a :class:`FindRequest` (level, parsed
:class:`~pacs_hub.storage.query.Query`, the keys to return, the request's
character set); matching runs in SQL (:mod:`pacs_hub.storage.query`), a page at a
time, each page in its own short read transaction. Every match is answered with
Pending (0xFF00) and an Identifier holding every requested key, filled or empty
(C.4.1.1.3), plus Query/Retrieve Level and Retrieve AE Title. A C-CANCEL stops
the answers with Cancel (0xFE00). A request the SCP cannot honour gets a failure
status with an Error Comment: 0xA900 (Identifier does not match SOP class) for
an invalid identifier, 0xC000 (Unable to process) for anything else.

Access policy (:mod:`pacs_hub.gateway.access`): a caller without the query
permission gets 0x0124 (Refused: Not Authorized); any other caller's query is
restricted in SQL to the studies it may see, so a study it may not see is neither
answered nor counted (patients only through a visible study).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event

from pacs_hub.dicom.charset import answer_charset, charset_terms
from pacs_hub.errors import HubError, InvalidQuery
from pacs_hub.gateway import access
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import CANCEL, PENDING, error_status, status
from pacs_hub.storage.query import (
    ATTRIBUTES,
    UNIQUE_KEYS,
    Level,
    Query,
    Row,
    attribute_value,
    find,
    parse_query,
)

LOGGER = logging.getLogger(__name__)
PAGE_SIZE = 500
UNABLE_TO_PROCESS = 0xC000
PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
MODEL_LEVELS: dict[str, tuple[Level, ...]] = {
    PATIENT_ROOT: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),  # C.6.1.1
    STUDY_ROOT: (Level.STUDY, Level.SERIES, Level.IMAGE),  # C.6.2.1
}
# Not query keys: set by the SCP on every answer.
CONTROL_KEYWORDS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"})
# Always returned at IMAGE level (C.6.1.1.5), even when not requested.
IMAGE_KEYS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber")


@dataclass(frozen=True, slots=True)
class ReturnKey:
    """A key of the request Identifier, returned in every answer."""

    tag: int
    vr: str
    keyword: str


@dataclass(frozen=True, slots=True)
class FindRequest:
    """What a C-FIND request asks, read once from its Identifier."""

    levels: tuple[Level, ...]
    level: Level
    query: Query
    keys: tuple[ReturnKey, ...]
    charset: tuple[str, ...]


def _text(elem: DataElement) -> str:
    """The value of a request key as one string (multiple values joined by ``\\``)."""
    value: Any = elem.value
    if value is None or elem.VR == "SQ":
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _level(identifier: Dataset, levels: tuple[Level, ...]) -> Level:
    """Query/Retrieve Level (0008,0052), one of the model's levels (C.4.1.2.1)."""
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    expected = "/".join(levels)
    if not raw:
        raise InvalidQuery(f"QueryRetrieveLevel missing: expected {expected}")
    if raw not in {lv.value for lv in levels}:
        raise InvalidQuery(f"QueryRetrieveLevel {raw[:16]}: expected {expected}")
    return Level(raw)


def _check_unique_keys(request: FindRequest) -> None:
    """Hierarchical search (PS3.4 C.4.1.3.1.1): one value per unique key above the level."""
    for level in request.levels:
        if level.depth >= request.level.depth:
            return
        keyword = UNIQUE_KEYS[level]
        condition = request.query.conditions.get(keyword)
        if condition is None or not condition.is_single_value:
            raise InvalidQuery(f"{request.level} query needs one {keyword} value (hierarchical)")


def read_request(event: Event, regional_issuer: str = "") -> FindRequest:
    """Read the model, level, keys and character set of a C-FIND request.

    With IssuerOfPatientID = ``regional_issuer`` (or an INS issuer), PatientID is a
    regional id (or an INS) and matches every linked local identity.
    """
    request = cast(C_FIND, event.request)
    levels = MODEL_LEVELS.get(str(request.AffectedSOPClassUID))
    if levels is None:
        raise InvalidQuery(f"SOP class {request.AffectedSOPClassUID} is not a FIND model")
    identifier = event.identifier
    level = _level(identifier, levels)
    keys: list[ReturnKey] = []
    values: dict[str, str] = {}
    for elem in identifier:
        if elem.tag.group in (0x0000, 0x0002) or elem.keyword in CONTROL_KEYWORDS:
            continue
        keys.append(ReturnKey(int(elem.tag), elem.VR, elem.keyword))
        if elem.keyword in ATTRIBUTES:
            values[elem.keyword] = _text(elem)
    charset = tuple(charset_terms(identifier.get("SpecificCharacterSet")))
    found = FindRequest(
        levels, level, parse_query(values, regional_issuer=regional_issuer), tuple(keys), charset
    )
    _check_unique_keys(found)
    return found


def _answer_keys(request: FindRequest) -> list[ReturnKey]:
    """Requested keys, plus the unique keys of the model down to the level (C.4.1.1.3)."""
    keys = list(request.keys)
    wanted = [UNIQUE_KEYS[lv] for lv in request.levels if lv.depth <= request.level.depth]
    if request.level is Level.IMAGE:
        wanted += IMAGE_KEYS
    present = {key.keyword for key in keys}
    for keyword in wanted:
        if keyword not in present:
            keys.append(ReturnKey(tag_for_keyword(keyword) or 0, dictionary_VR(keyword), keyword))
    return keys


def build_answer(request: FindRequest, row: Row, ae_title: str) -> Dataset:
    """The Identifier of one Pending answer: every key filled from ``row`` or empty."""
    answer = Dataset()
    texts: list[str] = []
    for key in _answer_keys(request):
        value = attribute_value(row, key.keyword)
        if key.vr == "SQ":
            answer.add(DataElement(key.tag, "SQ", []))
            continue
        if isinstance(value, str):
            texts.append(value)
        answer.add(DataElement(key.tag, key.vr, value if value != "" else None))
    answer.QueryRetrieveLevel = request.level.value
    answer.RetrieveAETitle = ae_title
    charset = answer_charset(request.charset, texts)
    if charset:
        answer.SpecificCharacterSet = charset[0] if len(charset) == 1 else charset
    return answer


def _answers(event: Event, ctx: GatewayContext, request: FindRequest) -> Iterator[tuple[int, Any]]:
    """Pending answers a page at a time; Cancel as soon as the peer asks for it."""
    offset = 0
    while True:
        with ctx.database.reader() as session:
            rows = find(session, request.level, request.query, limit=PAGE_SIZE, offset=offset)
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, build_answer(request, row, ctx.settings.ae_title)
        if len(rows) < PAGE_SIZE:
            LOGGER.debug("C-FIND %s: %d matches", request.level, offset + len(rows))
            return
        offset += PAGE_SIZE


def handle_find(event: Event, ctx: GatewayContext) -> Iterator[tuple[int | Dataset, Any]]:
    """EVT_C_FIND handler: yield (status, identifier) pairs (PS3.4 C.4.1.3)."""
    calling = event.assoc.requestor.ae_title
    try:
        request = read_request(event, ctx.settings.regional_issuer)
    except HubError as exc:
        LOGGER.info("C-FIND from %s refused: %s (0x%04X)", calling, exc.title, exc.dicom_status)
        yield error_status(exc), None
        return
    except Exception as exc:  # pydicom decodes the Identifier lazily and may raise anything
        LOGGER.info("C-FIND from %s: unreadable identifier (%s)", calling, type(exc).__name__)
        yield status(UNABLE_TO_PROCESS, "cannot read the request Identifier"), None
        return
    refusal, restriction = access.find_access(event, ctx, "C-FIND")
    if refusal is not None:
        yield refusal, None
        return
    if restriction is not None:
        request = replace(request, query=request.query.restricted(restriction))
    try:
        yield from _answers(event, ctx, request)
    except HubError as exc:
        LOGGER.info("C-FIND from %s refused: %s (0x%04X)", calling, exc.title, exc.dicom_status)
        yield error_status(exc), None
    except Exception:
        LOGGER.exception("C-FIND from %s: unexpected error", calling)
        yield status(UNABLE_TO_PROCESS, "internal error while searching"), None
