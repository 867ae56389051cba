"""What an establishment PACS holds, asked by C-FIND (PS3.4 C.4.1, Study Root).

Studies are listed by Study Date windows (a range matching, C.2.2.2.5) so that no
single query asks a production PACS for its whole archive (studies without a Study
Date, which no range matches, are found by one more query,
:func:`find_undated_studies`); each answer carries Number of Study Related Instances
(0020,1208). Series of one study come with Number of Series
Related Instances (0020,1209). Both are optional return keys for the SCP: a PACS that
leaves them empty is counted as holding an unknown number (``None``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom.dataset import Dataset
from pynetdicom import sop_class as sc
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from pacs_hub.config import Settings
from pacs_hub.regional.scu import PacsNode, SourceUnavailable, associate, requestor_ae

FIND = sc.StudyRootQueryRetrieveInformationModelFind


@dataclass(frozen=True, slots=True)
class RemoteStudy:
    """One study as the PACS describes it."""

    study_instance_uid: str
    study_date: str
    study_time: str
    instances: int | None


@dataclass(frozen=True, slots=True)
class RemoteSeries:
    """One series of a study as the PACS describes it."""

    series_instance_uid: str
    instances: int | None


def windows(since: str, until: str, days: int) -> Iterator[tuple[str, str]]:
    """``(first, last)`` Study Date ranges (YYYYMMDD) covering ``since``..``until``."""
    first = date(int(since[:4]), int(since[4:6]), int(since[6:8]))
    end = date(int(until[:4]), int(until[4:6]), int(until[6:8]))
    while first <= end:
        last = min(first + timedelta(days=days - 1), end)
        yield first.strftime("%Y%m%d"), last.strftime("%Y%m%d")
        first = last + timedelta(days=1)


def _count(answer: Dataset, keyword: str) -> int | None:
    value = answer.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _answers(assoc: Association, node: PacsNode, identifier: Dataset) -> Iterator[Dataset]:
    for status, answer in assoc.send_c_find(identifier, FIND):
        if not status:
            raise SourceUnavailable(f"{node.ae_title}: no C-FIND response (timeout or abort)")
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if answer is None:  # never count on a partial answer: say so
                raise SourceUnavailable(f"{node.ae_title}: a C-FIND match could not be decoded")
            yield answer
        elif code != 0x0000:
            raise SourceUnavailable(f"{node.ae_title}: C-FIND failed with 0x{code:04X}")


def _matches(settings: Settings, node: PacsNode, identifier: Dataset) -> Iterator[Dataset]:
    """The matches of one C-FIND, as they arrive (none kept here)."""
    assoc = associate(requestor_ae(settings, [FIND]), node)
    try:
        yield from _answers(assoc, node, identifier)
    finally:
        if assoc.is_established:
            assoc.release()


def _find(settings: Settings, node: PacsNode, identifier: Dataset) -> list[Dataset]:
    return list(_matches(settings, node, identifier))


class SeriesFinder:
    """SERIES-level C-FINDs of many studies, one association each.

    Reusing one association for every study lost a match once in the tests with
    Orthanc 1.10 (a series absent from one study's answers; cause not found yet), so
    each study gets a fresh association, as :func:`find_series` does.
    """

    def __init__(self, settings: Settings, node: PacsNode) -> None:
        self.settings = settings
        self.node = node

    def series(self, study: str) -> list[RemoteSeries]:
        """Series of ``study`` with their instance counts."""
        return find_series(self.settings, self.node, study)

    def close(self) -> None:
        """Nothing held between queries."""


@contextmanager
def series_finder(settings: Settings, node: PacsNode) -> Iterator[SeriesFinder]:
    """A :class:`SeriesFinder`, released at the end."""
    finder = SeriesFinder(settings, node)
    try:
        yield finder
    finally:
        finder.close()


def _study_identifier(study_date: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.StudyDate = study_date
    identifier.StudyTime = ""
    identifier.NumberOfStudyRelatedInstances = ""
    return identifier


def _studies(answers: Iterator[Dataset], undated_only: bool = False) -> Iterator[RemoteStudy]:
    for answer in answers:
        uid = str(answer.get("StudyInstanceUID", "") or "")
        study_date = str(answer.get("StudyDate", "") or "").strip()
        if uid and not (undated_only and study_date):
            yield RemoteStudy(
                uid,
                study_date,
                str(answer.get("StudyTime", "") or ""),
                _count(answer, "NumberOfStudyRelatedInstances"),
            )


def find_studies(settings: Settings, node: PacsNode, first: str, last: str) -> list[RemoteStudy]:
    """Studies whose Study Date is in ``first``-``last`` (PS3.4 C.4.1.2.1, STUDY level)."""
    return list(_studies(iter(_find(settings, node, _study_identifier(f"{first}-{last}")))))


def find_undated_studies(settings: Settings, node: PacsNode) -> list[RemoteStudy]:
    """Studies with no Study Date, which no date range matches (PS3.4 C.2.2.2.5).

    Study Date is asked with universal matching (C.2.2.2.3) and returned; only the
    matches whose Study Date is empty are kept, as they arrive. Empty value matching
    (``""``, C.2.2.2.1) would ask for exactly those, but a PACS that predates it (Orthanc
    1.10) cannot tell it from a malformed date and answers nothing, so the one query
    walks the archive: a few keys per study, once per inventory or reconciliation.
    """
    return list(_studies(_matches(settings, node, _study_identifier("")), undated_only=True))


def find_all_studies(
    settings: Settings, node: PacsNode, since: str, until: str
) -> dict[str, RemoteStudy]:
    """Every study of ``node`` dated ``since``..``until``, window by window, by UID,
    and (``backup_undated``) every study without a Study Date."""
    found: dict[str, RemoteStudy] = {}
    for first, last in windows(since, until, settings.backup_window_days):
        for study in find_studies(settings, node, first, last):
            found[study.study_instance_uid] = study
    if settings.backup_undated:
        for study in find_undated_studies(settings, node):
            found.setdefault(study.study_instance_uid, study)
    return found


def _series_identifier(study: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = ""
    identifier.NumberOfSeriesRelatedInstances = ""
    return identifier


def _series(answers: list[Dataset]) -> list[RemoteSeries]:
    return [
        RemoteSeries(str(a.SeriesInstanceUID), _count(a, "NumberOfSeriesRelatedInstances"))
        for a in answers
        if a.get("SeriesInstanceUID")
    ]


def find_series(settings: Settings, node: PacsNode, study: str) -> list[RemoteSeries]:
    """Series of ``study`` with their instance counts (SERIES level, hierarchical)."""
    return _series(_find(settings, node, _series_identifier(study)))


def echoes(settings: Settings, where: PacsNode) -> bool:
    """True when ``where`` accepts an association for Verification (PS3.4 A.4)."""
    try:
        assoc = associate(requestor_ae(settings, [Verification]), where)
    except SourceUnavailable:
        return False
    try:
        answer = assoc.send_c_echo()
        return bool(answer) and int(answer.get("Status", -1)) == 0
    finally:
        if assoc.is_established:
            assoc.release()
