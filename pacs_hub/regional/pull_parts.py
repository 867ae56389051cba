"""A large study pulled in parts, over several C-MOVE associations at once.

A C-MOVE (PS3.4 C.4.2) sends its sub-operations one after the other on one
association: the PACS waits for each C-STORE response before the next C-STORE, and
the hub answers only once the instance is durable (ARCHITECTURE.md, invariant 2), so
one association pulls at the pace of one instance's round trip. A study of at least
:data:`SPLIT_MIN` instances is therefore listed first, by Study Root C-FIND at SERIES
then IMAGE level (C.6.2.1, on the federated query's non-blocking associations,
:mod:`pacs_hub.regional.remote_find`), and moved as IMAGE-level C-MOVEs whose
Identifier names one series and a list of SOP Instance UIDs (C.4.2.2.1: one or more
unique keys at the retrieve level), at most ``Settings.pull_associations`` at a time:
each association takes the next part when its own is done. The PACS opens a store
association to the hub per C-MOVE, which the hub's gateway processes share, so the
parts are stored in parallel.

A PACS that does not list the study (the C-FIND fails or names no instance) gets the
whole-study C-MOVE instead (:func:`pacs_hub.regional.pull.move_study`); one that stays
silent for the ACSE timeout fails the pull at once, as the C-MOVE would after as long.
Instances the PACS receives after the listing are not part of this pull, as those it
receives after building its own sub-operation list are not part of a study-level
C-MOVE.

The parts' Pending responses add up to one progress (instances stored of those
listed); their final responses add up to one
(:class:`~pacs_hub.regional.move_scu.MoveResult`): Success when every part succeeded,
else the first failure's status when nothing was stored, else 0xB000 (sub-operations
complete, one or more failures), the instances of parts no association could move
counted as failed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from pacs_hub.config import Settings
from pacs_hub.errors import HubError
from pacs_hub.regional.move_scu import MODEL, MoveResult, send_move
from pacs_hub.regional.remote_find import Answered, Finished, MultiFind
from pacs_hub.regional.scu import PacsNode, SourceUnavailable, associate, requestor_ae

LOGGER = logging.getLogger(__name__)
Progress = Callable[[int, int | None], None]
SPLIT_MIN = 64
"""Fewest instances for which a study is listed and moved in parts."""
PART_MAX = 250
"""Most SOP Instance UIDs one C-MOVE names (a 16 KB Identifier)."""


@dataclass(frozen=True, slots=True)
class MovePart:
    """Instances of one series moved by one IMAGE-level C-MOVE."""

    series: str
    instances: tuple[str, ...]


class PacsSilent(SourceUnavailable):
    """The PACS did not answer the listing at all: a C-MOVE would wait as long."""


def _ask(settings: Settings, node: PacsNode, requests: list[Dataset]) -> list[Dataset]:
    """The Identifiers the PACS answers to ``requests`` (one association, in order);
    :class:`~pacs_hub.regional.scu.SourceUnavailable` when it fails or stays silent for
    the ACSE timeout."""
    silent_for = settings.acse_timeout
    find = MultiFind(settings, [(node, requests)], silent_for)
    answers: list[Dataset] = []
    try:
        deadline = time.monotonic() + silent_for
        while time.monotonic() < deadline:
            events = find.poll(deadline - time.monotonic())
            if events:
                deadline = time.monotonic() + silent_for
            for event in events:
                if isinstance(event, Answered):
                    answers.append(event.identifier)
                elif isinstance(event, Finished):
                    if event.reason:
                        raise SourceUnavailable(event.reason)
                    return answers
        raise PacsSilent(f"{node.ae_title}: no C-FIND answer in {silent_for:g} s")
    finally:
        find.close()


def _query(level: str, study: str, **keys: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = level
    query.StudyInstanceUID = study
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def list_study(settings: Settings, node: PacsNode, study: str) -> dict[str, list[str]]:
    """The SOP Instance UIDs of ``study`` on ``node`` by series (C-FIND, PS3.4 C.6.2.1);
    raises :class:`~pacs_hub.errors.HubError` when the PACS does not answer."""
    found = _ask(settings, node, [_query("SERIES", study, SeriesInstanceUID="")])
    series = list(dict.fromkeys(str(s.get("SeriesInstanceUID", "") or "") for s in found))
    requests = [
        _query("IMAGE", study, SeriesInstanceUID=uid, SOPInstanceUID="") for uid in series if uid
    ]
    listing: dict[str, list[str]] = {uid: [] for uid in series if uid}
    if not requests:
        return listing
    for answer in _ask(settings, node, requests):
        uid = str(answer.get("SeriesInstanceUID", "") or "")
        sop = str(answer.get("SOPInstanceUID", "") or "")
        if uid in listing and sop:
            listing[uid].append(sop)
    return {uid: list(dict.fromkeys(sops)) for uid, sops in listing.items() if sops}


def split(listing: dict[str, list[str]], associations: int) -> list[MovePart]:
    """Parts of one series each, as many as the associations at least when the study
    allows, none above PART_MAX instances, a series cut into parts of equal size."""
    total = sum(len(sops) for sops in listing.values())
    size = min(PART_MAX, max(1, math.ceil(total / max(1, associations))))
    parts = []
    for series, sops in listing.items():
        length = math.ceil(len(sops) / math.ceil(len(sops) / size))
        parts += [
            MovePart(series, tuple(sops[start : start + length]))
            for start in range(0, len(sops), length)
        ]
    return parts


class PartMover:
    """Moves parts from a shared queue over up to ``associations`` associations."""

    def __init__(
        self, settings: Settings, node: PacsNode, study: str, parts: list[MovePart]
    ) -> None:
        self.settings, self.node, self.study = settings, node, study
        self.queue = deque(parts)
        self.total = sum(len(part.instances) for part in parts)
        self.lock = threading.Lock()
        self.running: dict[int, int] = {}  # thread id -> stored by its current part
        self.results: list[MoveResult] = []
        self.stored = 0  # by finished parts
        self.refused: list[str] = []  # associations that could not be opened or broke

    def _take(self) -> MovePart | None:
        with self.lock:
            return self.queue.popleft() if self.queue else None

    def _identifier(self, part: MovePart) -> Dataset:
        identifier = _query("IMAGE", self.study, SeriesInstanceUID=part.series)
        identifier.SOPInstanceUID = list(part.instances)
        return identifier

    def _progress(self, report: Progress, stored: int | None) -> None:
        with self.lock:
            if stored is not None:
                self.running[threading.get_ident()] = stored
            received = self.stored + sum(self.running.values())
            report(received, self.total)

    def _move(self, assoc: Association, part: MovePart, report: Progress) -> MoveResult:
        def pending(stored: int, _total: int) -> None:
            self._progress(report, stored)

        identifier = self._identifier(part)
        return send_move(assoc, self.node, identifier, self.settings.ae_title, pending)

    def _worker(self, report: Progress) -> None:
        try:
            assoc = associate(requestor_ae(self.settings, [MODEL]), self.node)
        except HubError as exc:
            with self.lock:
                self.refused.append(exc.message)
            return
        try:
            while (part := self._take()) is not None:
                try:
                    result = self._move(assoc, part, report)
                except HubError as exc:
                    with self.lock:
                        stored = self.running.pop(threading.get_ident(), 0)
                        self.stored += stored
                        lost = len(part.instances) - stored
                        self.results.append(MoveResult(0xA702, stored, lost, 0, exc.message))
                        self.refused.append(exc.message)
                    return
                with self.lock:
                    self.running.pop(threading.get_ident(), None)
                    self.stored += result.completed + result.warning
                    self.results.append(result)
                self._progress(report, None)
        finally:
            if assoc.is_established:
                assoc.release()

    def run(self, associations: int, report: Progress) -> MoveResult:
        """Move every part; the parts' results as one."""
        count = max(1, min(associations, len(self.queue)))
        threads = [
            threading.Thread(target=self._worker, args=(report,), name=f"pull-part-{n}")
            for n in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        left = sum(len(part.instances) for part in self.queue)
        completed = sum(r.completed for r in self.results)
        warning = sum(r.warning for r in self.results)
        failed = sum(r.failed for r in self.results) + left
        failures = [r for r in self.results if r.status not in (0x0000, 0xB000)]
        if not self.results and self.refused:
            raise SourceUnavailable(self.refused[0])
        comment = failures[0].comment if failures else (self.refused[0] if left else "")
        if not failed:
            return MoveResult(0x0000, completed, 0, warning, "")
        if completed + warning == 0:
            status = failures[0].status if failures else 0xA702
            return MoveResult(status, completed, failed, warning, comment)
        return MoveResult(0xB000, completed, failed, warning, comment)


def move_in_parts(
    settings: Settings, node: PacsNode, study: str, report: Progress
) -> MoveResult | None:
    """Pull ``study`` from ``node`` in parts; None when it is not worth it or cannot be
    listed (then the caller moves it whole)."""
    if settings.pull_associations < 2:
        return None
    try:
        listing = list_study(settings, node, study)
    except PacsSilent:
        raise
    except HubError as exc:
        LOGGER.info("study %s not listed by %s (%s): moved whole", study, node.ae_title, exc)
        return None
    total = sum(len(sops) for sops in listing.values())
    if total < SPLIT_MIN:
        return None
    parts = split(listing, settings.pull_associations)
    LOGGER.info(
        "pulling %d instance(s) of study %s from %s in %d part(s)",
        total,
        study,
        node.ae_title,
        len(parts),
    )
    report(0, total)
    return PartMover(settings, node, study, parts).run(settings.pull_associations, report)
