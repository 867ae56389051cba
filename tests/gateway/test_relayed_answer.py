"""A PACS's answer relayed from its own bytes reads exactly as the pydicom-built one.

:func:`pacs_hub.gateway.relayed_answer.relayed_answer` writes a federated C-FIND
answer for a match only a PACS holds straight from the PACS's raw values; pydicom
must read it back to the same elements and values as the answer
:func:`pacs_hub.gateway.federated_find.build_answer` builds the slow way, in both
transfer syntaxes a caller may have, from answers a PACS sent in either. What it
cannot relay as it is must give None (the caller then builds it the slow way).
"""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from pacs_hub.dicomweb.search import DEFAULT_KEYS
from pacs_hub.gateway import find
from pacs_hub.gateway.federated_find import build_answer
from pacs_hub.gateway.relayed_answer import relayed_answer
from pacs_hub.regional.federation import FederatedMatch
from pacs_hub.storage.query import Level, parse_query

# QIDO-RS's default study keys (PS3.18 Table 10.6.3-3), one the hub sets itself, a sequence.
KEYWORDS = [*DEFAULT_KEYS[Level.STUDY], "InstanceAvailability", "ProcedureCodeSequence"]


def request_for(keywords: list[str], charset: tuple[str, ...] = ()) -> find.FindRequest:
    identifier = Dataset()
    for keyword in keywords:
        setattr(identifier, keyword, [] if keyword.endswith("Sequence") else "")
    keys = tuple(
        find.ReturnKey(int(elem.tag), elem.VR, elem.keyword)
        for elem in identifier
        if elem.keyword not in find.CONTROL_KEYWORDS
    )
    levels = find.MODEL_LEVELS[find.STUDY_ROOT]
    return find.FindRequest(levels, Level.STUDY, parse_query({}), keys, charset)


def pacs_answer(implicit: bool, **values: object) -> Dataset:
    """What a PACS sends: encoded in its association's syntax, decoded lazily as the
    hub's C-FIND SCU receives it (raw elements)."""
    answer = Dataset()
    answer.QueryRetrieveLevel = "STUDY"
    answer.RetrieveAETitle = "ORTH_B"
    for keyword, value in values.items():
        setattr(answer, keyword, value)
    data = encode(answer, implicit, True)
    assert data is not None
    return decode(BytesIO(data), implicit, True)


def read(data: bytes, implicit: bool) -> Dataset:
    return decode(BytesIO(data), implicit, True)


def slow(request: find.FindRequest, match: FederatedMatch, implicit: bool) -> bytes:
    answer = build_answer(request, match, find._answer_keys(request))
    data = encode(answer, implicit, True)
    assert data is not None
    return bytes(data)


def values(ds: Dataset) -> dict[str, object]:
    return {elem.keyword: (elem.VR, elem.value) for elem in ds}


@pytest.mark.parametrize("caller_implicit", [True, False])
@pytest.mark.parametrize("pacs_implicit", [True, False])
def test_relayed_answer_reads_as_the_built_one(caller_implicit: bool, pacs_implicit: bool) -> None:
    request = request_for(KEYWORDS)
    remote = pacs_answer(
        pacs_implicit,
        StudyDate="20240301",
        StudyTime="101500.25",  # odd length: padded
        ModalitiesInStudy=["CT", "SR"],
        PatientName="DOE^JOHN",
        PatientID="B-123",
        StudyInstanceUID="1.2.826.0.1.3680043.8.498.1",  # odd length: NUL padded
        NumberOfStudyRelatedInstances="500",
        StudyDescription="",  # empty in the answer
        InstanceAvailability="ONLINE",  # the hub's own value replaces the PACS's
    )
    match = FederatedMatch("1.2.826.0.1.3680043.8.498.1", None, remote, ("ORTH_B", "ORTH_C"))
    keys = find._answer_keys(request)
    relayed = relayed_answer(
        remote,
        keys,
        "STUDY",
        request.charset,
        match.locations,
        match.availability,
        caller_implicit,
    )
    assert relayed is not None
    built = slow(request, match, caller_implicit)
    got = read(relayed.encoded, caller_implicit)
    assert got.get_item(0x0020000D).value == b"1.2.826.0.1.3680043.8.498.1\x00"
    assert got.get_item(0x00080030).value == b"101500.25 "  # PS3.5 6.2: text with a space
    assert values(got) == values(read(built, caller_implicit))
    assert got.RetrieveAETitle == ["ORTH_B", "ORTH_C"]
    assert got.InstanceAvailability == "NEARLINE"
    assert got.ProcedureCodeSequence == Sequence([])
    assert "SpecificCharacterSet" not in got  # an ASCII answer to a request without one
    assert list(got.keys()) == sorted(got.keys())  # ascending tags (PS3.5 7.1)


def test_a_request_charset_is_declared_as_the_built_answer_does() -> None:
    request = request_for(["PatientName", "StudyInstanceUID"], charset=("ISO_IR 100",))
    remote = pacs_answer(True, PatientName="DOE^JANE", StudyInstanceUID="1.2.3")
    match = FederatedMatch("1.2.3", None, remote, ("ORTH_A",))
    keys = find._answer_keys(request)
    relayed = relayed_answer(remote, keys, "STUDY", request.charset, ("ORTH_A",), "NEARLINE", True)
    assert relayed is not None
    got, built = read(relayed.encoded, True), read(slow(request, match, True), True)
    assert got.SpecificCharacterSet == built.SpecificCharacterSet == "ISO_IR 100"
    assert values(got) == values(built)


def test_a_value_already_converted_by_the_merge_is_relayed_too() -> None:
    request = request_for(["PatientID", "StudyInstanceUID"])
    remote = pacs_answer(False, PatientID="X1", StudyInstanceUID="1.2.3.4")
    assert remote.StudyInstanceUID == "1.2.3.4"  # converted, as Merger.add_remote does
    keys = find._answer_keys(request)
    relayed = relayed_answer(remote, keys, "STUDY", (), ("ORTH_A",), "NEARLINE", False)
    assert relayed is not None
    match = FederatedMatch("1.2.3.4", None, remote, ("ORTH_A",))
    got = read(relayed.encoded, False)
    assert got.get_item(0x0020000D).value == b"1.2.3.4\x00"  # PS3.5 6.2: NUL, not space
    assert values(got) == values(read(slow(request, match, False), False))


@pytest.mark.parametrize(
    "case",
    ["latin-1 name", "escape sequence", "a VR the PACS changed", "a multi-valued converted value"],
)
def test_what_is_not_sure_to_relay_as_it_is_gives_none(case: str) -> None:
    request = request_for(["PatientName", "StudyInstanceUID", "ModalitiesInStudy"])
    keys = find._answer_keys(request)
    if case == "latin-1 name":
        remote = pacs_answer(True, SpecificCharacterSet="ISO_IR 100", PatientName="MÜLLER^ANNE")
    elif case == "escape sequence":
        remote = pacs_answer(True, PatientName="X")
        remote.PatientName = "\x1b(BX"
    elif case == "a VR the PACS changed":
        remote = pacs_answer(False, StudyInstanceUID="1.2.3")
        remote.add_new(0x00080061, "LO", "CT")  # ModalitiesInStudy sent as LO, not CS
    else:
        remote = pacs_answer(False, StudyInstanceUID="1.2.3", ModalitiesInStudy=["CT", "MR"])
        assert list(remote.ModalitiesInStudy) == ["CT", "MR"]  # converted: a MultiValue
    assert relayed_answer(remote, keys, "STUDY", (), ("ORTH_A",), "NEARLINE", True) is None
