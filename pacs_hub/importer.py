"""Importing files from disk: folders, zip archives and DICOMDIR media (PS3.10, PS3.3 F).

Every file takes the one ingest path (:meth:`Ingestor.ingest`). A file's own File
Meta Information is replaced by the hub's (:func:`normalise_part10`), so an imported
instance becomes the same blob, byte for byte, as the same instance received by
C-STORE. Zip archives are read member by member (never extracted as a whole); a
DICOMDIR (Media Storage Directory, PS3.3 F.2) is followed through the Referenced
File IDs of its records and never stored itself.

Files are read and ingested by a small pool of threads (zip members too: zipfile
serialises reads of one archive): the fsync of each blob and index commit dominates
and releases the GIL.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

import pydicom
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from pacs_hub.config import Settings
from pacs_hub.dicom.part10 import normalise_part10, read_file_meta
from pacs_hub.errors import HubError, InvalidInstance
from pacs_hub.ingest import Ingestor
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.index import Outcome

LOGGER = logging.getLogger(__name__)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
"""Media Storage Directory Storage SOP Class: the DICOMDIR (PS3.4 Annex I, PS3.3 F)."""
DICOMDIR_NAME = "DICOMDIR"
PREFIX_LENGTH = 132


class Verdict(StrEnum):
    """What importing one file did."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # already stored with the same bytes: skipped
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Source:
    """One file to import: a label for the report and a way to read its bytes."""

    label: str
    read: Callable[[], bytes]


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """The verdict on one file, with the reason when it was rejected."""

    label: str
    verdict: Verdict
    reason: str = ""


@dataclass(slots=True)
class ImportReport:
    """Counts and the per-file outcome of one import."""

    outcomes: list[FileOutcome] = field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        """How many files got ``verdict``."""
        return sum(1 for o in self.outcomes if o.verdict is verdict)

    @property
    def rejected(self) -> list[FileOutcome]:
        """The rejected files, in the order they were found."""
        return [o for o in self.outcomes if o.verdict is Verdict.REJECTED]


def _read_disk_file(path: Path) -> bytes:
    """The file's bytes; a file without the Part 10 prefix is refused unread."""
    with path.open("rb") as fp:
        head = fp.read(PREFIX_LENGTH)
        if len(head) < PREFIX_LENGTH or head[128:] != b"DICM":
            raise InvalidInstance("not a DICOM Part 10 file: no 'DICM' prefix at byte 128")
        return head + fp.read()


def _is_dicomdir(data: bytes) -> bool:
    try:
        return read_file_meta(data).sop_class_uid == MEDIA_STORAGE_DIRECTORY
    except InvalidInstance:
        return False


def _dicomdir_sources(path: Path) -> Iterator[Source]:
    """The files referenced by the records of a DICOMDIR (PS3.3 F.3.2.2, (0004,1500))."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        records = list(ds.get("DirectoryRecordSequence", []))
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidInstance(f"cannot read DICOMDIR: {exc}") from exc
    root = path.parent
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        referenced = root.joinpath(*(str(p) for p in parts))
        yield Source(str(referenced), functools.partial(_read_disk_file, referenced))


def _zip_sources(archive: zipfile.ZipFile, label: str) -> Iterator[Source]:
    """Members of a zip archive, read one at a time; a DICOMDIR member is skipped."""
    for info in archive.infolist():
        if info.is_dir() or PurePosixPath(info.filename).name.upper() == DICOMDIR_NAME:
            continue
        yield Source(f"{label}:{info.filename}", functools.partial(archive.read, info))


def _folder_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def collect_sources(paths: Sequence[Path], stack: contextlib.ExitStack) -> list[Source]:
    """Every file to import under ``paths``; zip archives stay open on ``stack``.

    In a folder, a DICOMDIR is skipped (the files it references are in the folder
    too); a DICOMDIR given by name is followed.
    """
    sources: list[Source] = []
    for path in paths:
        files = _folder_files(path) if path.is_dir() else iter([path])
        for file in files:
            sources.extend(_sources_of(file, stack, given=file == path))
    return sources


def _sources_of(path: Path, stack: contextlib.ExitStack, given: bool) -> Iterator[Source]:
    if zipfile.is_zipfile(path):
        yield from _zip_sources(stack.enter_context(zipfile.ZipFile(path)), str(path))
    elif path.name.upper() == DICOMDIR_NAME or (given and _has_dicomdir_meta(path)):
        if given:
            yield from _dicomdir_sources(path)
    else:
        yield Source(str(path), functools.partial(_read_disk_file, path))


def _has_dicomdir_meta(path: Path) -> bool:
    with path.open("rb") as fp:
        return _is_dicomdir(fp.read(4096))


def import_one(ingestor: Ingestor, source: Source, received_from: str) -> FileOutcome:
    """Read, normalise and ingest one file; every failure becomes a rejection."""
    try:
        data = source.read()
        if _is_dicomdir(data):
            raise InvalidInstance("a DICOMDIR is a media index, not an instance")
        result = ingestor.ingest(normalise_part10(data), received_from_ae=received_from)
    except HubError as exc:
        return FileOutcome(source.label, Verdict.REJECTED, exc.message)
    except OSError as exc:
        return FileOutcome(source.label, Verdict.REJECTED, f"cannot read: {exc.strerror}")
    except Exception as exc:  # the task wrapper: one bad file never stops an import
        LOGGER.exception("import of %s failed", source.label)
        return FileOutcome(source.label, Verdict.REJECTED, f"internal error: {exc}")
    if result.outcome is Outcome.DUPLICATE:
        return FileOutcome(source.label, Verdict.DUPLICATE)
    return FileOutcome(source.label, Verdict.STORED)


def import_sources(
    ingestor: Ingestor,
    sources: Sequence[Source],
    *,
    received_from: str = "",
    workers: int = 4,
    on_done: Callable[[FileOutcome], None] | None = None,
) -> ImportReport:
    """Ingest ``sources`` with ``workers`` threads; outcomes keep the sources' order.

    At most ``2 * workers`` files are held in memory at once.
    """
    results: dict[int, FileOutcome] = {}
    pending: dict[Future[FileOutcome], int] = {}

    def drain(block_until: int) -> None:
        while len(pending) > block_until:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = outcome = future.result()
                if on_done is not None:
                    on_done(outcome)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="import") as pool:
        for index, source in enumerate(sources):
            drain(2 * max(1, workers) - 1)
            pending[pool.submit(import_one, ingestor, source, received_from)] = index
        drain(0)
    return ImportReport([results[i] for i in range(len(sources))])


def run_import(
    settings: Settings,
    paths: Sequence[Path],
    *,
    received_from: str = "",
    workers: int = 4,
    console: Console | None = None,
) -> ImportReport:
    """The ``pacs-hub import`` command: import ``paths`` with a progress bar, print a report."""
    console = console or Console()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.index_url)
    ingestor = Ingestor(database, BlobStore(settings.data_dir), settings.duplicate_policy, "import")
    try:
        with contextlib.ExitStack() as stack:
            sources = collect_sources(paths, stack)
            with Progress(
                *Progress.get_default_columns(), MofNCompleteColumn(), console=console
            ) as progress:
                task = progress.add_task("importing", total=len(sources))
                report = import_sources(
                    ingestor,
                    sources,
                    received_from=received_from,
                    workers=workers,
                    on_done=lambda _outcome: progress.advance(task),
                )
    finally:
        database.dispose()
    print_report(report, console)
    return report


def print_report(report: ImportReport, console: Console) -> None:
    """One line per rejected file with its reason, then the counts per verdict."""
    for outcome in report.rejected:
        console.print(
            f"rejected {outcome.label}: {outcome.reason}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"{report.count(Verdict.STORED)} stored, "
        f"{report.count(Verdict.DUPLICATE)} duplicate (already stored, skipped), "
        f"{report.count(Verdict.REJECTED)} rejected"
    )
