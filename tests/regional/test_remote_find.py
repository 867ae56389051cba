"""The federated C-FIND SCU (remote_find, find_association) against real C-FIND SCPs.

The peers are pynetdicom Query/Retrieve SCPs on loopback, each answering from its own
handler, so that a test can count associations, slow an answer, fail one, abort an
idle association or shrink the maximum PDU. Orthanc as the PACS is exercised by
tests/regional/test_federation.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from pacs_hub.config import Settings
from pacs_hub.regional import find_association
from pacs_hub.regional.federation import Merger, unique_key
from pacs_hub.regional.remote_find import Answered, Finished, LinkPool, MultiFind
from pacs_hub.regional.scu import PacsNode
from pacs_hub.storage.query import Level
from tests.conftest import free_port, wait_until

Handler = Callable[[Dataset], Iterator[tuple[int | Dataset, Dataset | None]]]


def studies(*ids: str) -> Handler:
    """A handler answering one study per Patient ID in ``ids`` whatever the request."""

    def handle(request: Dataset) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        for number, patient in enumerate(ids):
            answer = Dataset()
            answer.QueryRetrieveLevel = "STUDY"
            answer.PatientID = patient
            answer.StudyInstanceUID = f"1.2.3.{number + 1}"
            answer.PatientComments = request.get("PatientComments", "")
            yield 0xFF00, answer

    return handle


@dataclass
class Peer:
    """A C-FIND SCP and what it saw."""

    node: PacsNode
    server: Any
    handler: Handler
    requests: list[Dataset] = field(default_factory=list)
    associations: int = 0
    released: int = 0
    aborted: int = 0

    def on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        self.requests.append(event.identifier)
        yield from self.handler(event.identifier)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(
        title: str, handler: Handler, *, max_pdu: int = 16384, require_called: bool = False
    ) -> Peer:
        ae = AE(ae_title=title)
        ae.add_supported_context(FIND)
        ae.maximum_pdu_size = max_pdu
        ae.require_called_aet = require_called
        port = free_port()
        peer = Peer(PacsNode(len(started) + 1, title, "127.0.0.1", port), None, handler)

        def count(attribute: str) -> Callable[[evt.Event], None]:
            def bump(_event: evt.Event) -> None:
                setattr(peer, attribute, getattr(peer, attribute) + 1)

            return bump

        handlers = [
            (evt.EVT_C_FIND, peer.on_find),
            (evt.EVT_ACCEPTED, count("associations")),
            (evt.EVT_RELEASED, count("released")),
            (evt.EVT_ABORTED, count("aborted")),
        ]
        peer.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def request(patient: str = "*", comments: str | None = None) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient
    identifier.StudyInstanceUID = ""
    if comments is not None:
        identifier.PatientComments = comments
    return identifier


def run(finds: MultiFind, timeout: float = 10.0) -> list[Answered | Finished]:
    """Poll until every PACS finished (or ``timeout``); every event, in order."""
    events: list[Answered | Finished] = []
    deadline = time.monotonic() + timeout
    while sum(isinstance(e, Finished) for e in events) < len(finds.titles):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        events += finds.poll(left)
    return events


SETTINGS = Settings(ae_title="PACS_HUB")


def test_every_pacs_answers_as_its_answers_arrive(peers: Callable[..., Peer]) -> None:
    a, b = peers("PACS_A", studies("A1", "A2", "A3")), peers("PACS_B", studies("B1"))
    finds = MultiFind(SETTINGS, [(a.node, [request()]), (b.node, [request()])], 5.0)
    events = run(finds)
    finds.close()
    answered = {(e.ae_title, e.identifier.PatientID) for e in events if isinstance(e, Answered)}
    assert answered == {("PACS_A", "A1"), ("PACS_A", "A2"), ("PACS_A", "A3"), ("PACS_B", "B1")}
    finished = sorted((e for e in events if isinstance(e, Finished)), key=lambda e: e.ae_title)
    assert finished == [Finished("PACS_A"), Finished("PACS_B")]  # no reason: done
    for title in ("PACS_A", "PACS_B"):  # each PACS's answers before its Finished
        mine = [e for e in events if e.ae_title == title]
        assert isinstance(mine[-1], Finished) and len(mine) > 1
    assert a.requests[0].PatientID == "*" and a.requests[0].QueryRetrieveLevel == "STUDY"
    wait_until(lambda: a.released == 1 and b.released == 1, 5, what="A-RELEASE without a pool")


def test_several_requests_go_one_after_another_on_one_association(
    peers: Callable[..., Peer],
) -> None:
    a = peers("PACS_A", studies("X"))
    finds = MultiFind(SETTINGS, [(a.node, [request("P1"), request("P2"), request("P3")])], 5.0)
    events = run(finds)
    finds.close()
    assert [e.identifier.PatientID for e in events if isinstance(e, Answered)] == ["X"] * 3
    assert [r.PatientID for r in a.requests] == ["P1", "P2", "P3"]
    assert events[-1] == Finished("PACS_A") and a.associations == 1


def test_one_request_to_several_pacs_is_encoded_once(
    peers: Callable[..., Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[int] = []
    original = find_association.encode

    def counting(ds: Dataset, *args: Any) -> bytes | None:
        encoded.append(id(ds))
        return original(ds, *args)

    monkeypatch.setattr(find_association, "encode", counting)
    a, b = peers("PACS_A", studies("A1")), peers("PACS_B", studies("B1"))
    c = peers("PACS_C", studies("C1"))
    wire, other = request(), request("P2")
    plans = [(a.node, [wire]), (b.node, [wire]), (c.node, [wire, other])]
    finds = MultiFind(SETTINGS, plans, 5.0)
    events = run(finds)
    finds.close()
    assert len([e for e in events if isinstance(e, Answered)]) == 4
    assert sorted(encoded) == sorted([id(wire), id(other)])  # both syntaxes alike here
    assert [r.PatientID for r in a.requests + b.requests + c.requests] == ["*", "*", "*", "P2"]


def test_a_pooled_association_serves_the_next_query_then_is_released_idle(
    peers: Callable[..., Peer],
) -> None:
    a = peers("PACS_A", studies("A1"))
    pool = LinkPool()
    for _ in range(3):
        finds = MultiFind(SETTINGS, [(a.node, [request()])], 1.0, pool)
        assert [e for e in run(finds) if isinstance(e, Finished)] == [Finished("PACS_A")]
        finds.close()
    assert a.associations == 1 and len(a.requests) == 3
    wait_until(lambda: a.released == 1, 5, what="the idle association released")  # after 0.5 s


def test_an_association_the_pacs_dropped_while_idle_is_replaced(
    peers: Callable[..., Peer],
) -> None:
    a = peers("PACS_A", studies("A1"))
    pool = LinkPool()
    finds = MultiFind(SETTINGS, [(a.node, [request()])], 20.0, pool)
    run(finds)
    finds.close()
    for assoc in list(a.server.active_associations):
        assoc.abort()  # the PACS drops the pooled association
    wait_until(lambda: a.aborted == 1, 5, what="the PACS's abort")
    finds = MultiFind(SETTINGS, [(a.node, [request()])], 20.0, pool)
    events = run(finds)
    finds.close()
    assert [e.identifier.PatientID for e in events if isinstance(e, Answered)] == ["A1"]
    assert events[-1] == Finished("PACS_A") and a.associations == 2


def test_failures_are_reported_with_their_reason(peers: Callable[..., Peer]) -> None:
    def fail(_request: Dataset) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        status = Dataset()
        status.Status = 0xA700
        status.ErrorComment = "out of resources"
        yield status, None

    failing = peers("FAILING", fail)
    picky = peers("PICKY", studies("Z"), require_called=True)
    wrong_title = PacsNode(9, "NOT_PICKY", "127.0.0.1", picky.node.port)
    closed = PacsNode(10, "CLOSED", "127.0.0.1", free_port())
    plans = [(node, [request()]) for node in (failing.node, wrong_title, closed)]
    finds = MultiFind(SETTINGS, plans, 5.0)
    events = run(finds)
    finds.close()
    reasons = {e.ae_title: e.reason for e in events if isinstance(e, Finished)}
    assert reasons["FAILING"] == "FAILING: C-FIND status 0xA700 out of resources"
    assert reasons["NOT_PICKY"].startswith("NOT_PICKY: association rejected")
    assert reasons["CLOSED"].startswith("CLOSED: no association")
    assert not [e for e in events if isinstance(e, Answered)]


def test_closing_aborts_a_pacs_still_answering(peers: Callable[..., Peer]) -> None:
    gate = threading.Event()

    def slow(_request: Dataset) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        gate.wait(10)
        yield from studies("LATE")(_request)

    a = peers("SLOW", slow)
    finds = MultiFind(SETTINGS, [(a.node, [request()])], 5.0, LinkPool())
    assert run(finds, timeout=0.5) == []
    finds.close()  # the deadline passed: abort, never pooled
    gate.set()
    wait_until(lambda: a.aborted == 1, 5, what="A-ABORT at the PACS")


def test_identifiers_larger_than_a_pdu_cross_in_fragments(peers: Callable[..., Peer]) -> None:
    a = peers("SMALL_PDU", studies("A1", "A2"), max_pdu=1024)  # PS3.8 9.3.5: PDV fragments
    comments = "x" * 6000  # the request and each answer span several PDUs both ways
    finds = MultiFind(SETTINGS, [(a.node, [request(comments=comments)])], 5.0)
    events = run(finds)
    finds.close()
    answers = [e.identifier for e in events if isinstance(e, Answered)]
    assert [answer.PatientID for answer in answers] == ["A1", "A2"]
    assert all(answer.PatientComments == comments for answer in answers)
    assert a.requests[0].PatientComments == comments


def test_the_merge_key_is_read_from_the_answer_as_received() -> None:
    answer = Dataset()
    answer.StudyInstanceUID = "1.2.3.45"  # odd length: padded with NUL on the wire
    answer.PatientID = "P1"
    for implicit in (True, False):
        received = decode(BytesIO(encode(answer, implicit, True) or b""), implicit, True)
        assert unique_key(received, Tag("StudyInstanceUID")) == "1.2.3.45"
        assert unique_key(received, Tag("SeriesInstanceUID")) == ""
    assert unique_key(answer, Tag("StudyInstanceUID")) == "1.2.3.45"  # converted already
    merger = Merger(Level.STUDY, "PACS_HUB")
    assert merger.add_remote("PACS_A", received) == "1.2.3.45"
    assert merger.add_remote("PACS_B", answer) == "1.2.3.45"
    assert merger.match("1.2.3.45").locations == ("PACS_A", "PACS_B")
