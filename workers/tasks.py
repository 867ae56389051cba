"""The processing task: a series in the archive → result series through the ingest path.

The task takes identifiers (a :class:`~workers.board.JobSpec`), reads the series' stored
blobs through the storage layer (:func:`pacs_hub.storage.retrieval.select_instances`),
runs :func:`workers.processing.run_pipeline` and stores every output with
:meth:`pacs_hub.ingest.Ingestor.ingest` (sender ``PROCESSING``), so the results are
indexed, audited, shareable and retrievable like any received series.

All or nothing, as far as a per-instance ingest allows:

* every output is computed (in memory) and validated before the first one is stored:
  a bad input, a cancellation or a worker killed while computing leaves nothing;
* a worker killed while storing leaves the first outputs stored: the job runs again
  (the message is redelivered, or the hub's recovery resubmits it, :mod:`workers.rules`)
  and, the outputs' UIDs being fixed by the inputs and options, stores the rest while
  the ones already there are duplicates (stored once). The result series is complete
  when the job says ``succeeded``;
* a cancellation is honoured until storing starts, not after (so no series is left half
  written by a cancel).

Retried only on transient errors (OSError: disk, network; the index unavailable), with
exponential backoff; :class:`~workers.processing.ProcessingError` fails at once with its
message (state FAILED).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore
from pydicom.uid import UID
from sqlalchemy.exc import OperationalError

from pacs_hub.errors import DuplicateConflict, IndexUnavailable
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.index import Outcome
from pacs_hub.storage.query import Level
from pacs_hub.storage.retrieval import RetrieveItem, RetrieveRequest, select_instances
from workers.board import Board, JobSpec, JobState
from workers.celery_app import PROCESS_TASK, HubCelery

if TYPE_CHECKING:  # the library (scipy, scikit-image) is imported where a job runs
    from workers.processing import PipelineOptions

LOGGER = logging.getLogger(__name__)
SENDER = "PROCESSING"
"""The sender recorded for results (Instance.received_from_ae)."""
COMPUTE_SHARE = 90.0
"""Percent of the progress bar given to computing; the rest is storing."""
TRANSIENT = (OSError, IndexUnavailable, OperationalError)


def read_series(database: Database, blobs: BlobStore, series_uid: str) -> list[RetrieveItem]:
    """The stored instances of a series (storage order); ProcessingError when none."""
    from workers.processing import ProcessingError

    request = RetrieveRequest(Level.SERIES, {Level.SERIES: (series_uid,)})
    with database.reader() as session:
        items = select_instances(session, blobs, request)
    if not items:
        raise ProcessingError(f"series {series_uid}: no stored instance, expected an image series")
    return items


def pipeline_options(steps: tuple[str, ...], parameters: Mapping[str, Any]) -> PipelineOptions:
    """The library's options from a job's steps and parameters; ProcessingError if unknown."""
    from workers.processing import PipelineOptions, ProcessingError

    known = {f.name for f in fields(PipelineOptions)} - {"steps"}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ProcessingError(f"parameters {unknown} unknown, expected some of {sorted(known)}")
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in parameters.items()}
    try:
        return PipelineOptions(steps=steps, **given)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ProcessingError(f"parameters {dict(parameters)}: {exc}") from exc


class Reporter:
    """Progress and heartbeat of a running job into its record; the cancel check."""

    def __init__(self, board: Board, key: str, attempt: int, heartbeat: float) -> None:
        self.board, self.key, self.attempt = board, key, attempt
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.percent, self.stage = 0.0, "starting"
        self.interval = heartbeat
        self._written = 0.0
        self._checked = 0.0
        self._cancelled = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)

    def __enter__(self) -> Reporter:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()

    def _write(self) -> None:
        with self._lock:
            self._written = time.monotonic()
            self.board.write(
                self.key,
                "PROGRESS",
                percent=round(self.percent, 1),
                stage=self.stage,
                heartbeat=time.time(),
                worker=self.worker,
                attempt=self.attempt,
            )

    def report(self, percent: float, stage: str) -> None:
        """Record progress (at most a write every 0.2 s, or when the stage changes)."""
        changed = stage != self.stage
        self.percent, self.stage = percent, stage
        if changed or time.monotonic() - self._written > 0.2:
            self._write()

    def computing(self, percent: float, stage: str) -> None:
        """The library's progress callback: its 0-100 % onto 0-COMPUTE_SHARE %."""
        self.report(percent * COMPUTE_SHARE / 100.0, stage)

    def cancelled(self) -> bool:
        """The library's cancel check (reads the cancel record at most once a second)."""
        now = time.monotonic()
        if not self._cancelled and now - self._checked >= 1.0:
            self._checked = now
            self._cancelled = self.board.cancel_requested(self.key)
        return self._cancelled


def _store(app: HubCelery, files: list[bytes], reporter: Reporter) -> int:
    """Ingest every output; return how many were new (the others were already stored)."""
    stored = 0
    for number, part10 in enumerate(files):
        reporter.report(COMPUTE_SHARE + (100 - COMPUTE_SHARE) * number / len(files), "storing")
        try:
            result = app.ingestor.ingest(part10, received_from_ae=SENDER)
        except DuplicateConflict:
            continue  # stored by an earlier attempt (same UID; creation times differ)
        stored += result.outcome is Outcome.STORED
    return stored


def _running_elsewhere(state: JobState, stale_after: float) -> bool:
    """Another live worker runs this job (a message sent twice): on this host, its
    process exists; elsewhere, its heartbeat is recent."""
    if state.raw != "PROGRESS" or state.stale(stale_after):
        return False
    host, _, pid = state.worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False  # killed: we take over
    except PermissionError:
        return True
    return True


def run_job(task: Task[Any, Any], spec_json: dict[str, Any]) -> dict[str, Any]:
    """Body of the processing task (see the module docstring)."""
    from workers.processing import ProcessingCancelled, ProcessingError, run_pipeline

    app = task.app
    assert isinstance(app, HubCelery)
    spec = JobSpec.from_json(spec_json)
    board = Board(app)
    key = spec.key
    before = board.read(key)
    if before.raw == "SUCCESS":
        return dict(before.result)  # a duplicate message of a finished job
    heartbeat = min(5.0, app.hub_settings.processing_stale_after / 3)
    if _running_elsewhere(before, app.hub_settings.processing_stale_after):
        LOGGER.info("job %s already running on %s: duplicate message dropped", key, before.worker)
        raise Ignore()
    if board.cancel_requested(key):
        board.write(key, "CANCELLED", stage="cancelled before start", percent=0.0)
        raise Ignore()
    reporter = Reporter(board, key, before.attempt + 1, heartbeat)
    try:
        with reporter:
            options = pipeline_options(spec.steps, spec.parameters)
            items = read_series(app.database, app.blobs, spec.series_uid)
            result = run_pipeline(
                [item.blob for item in items], options, reporter.computing, reporter.cancelled
            )
            series = list(dict.fromkeys(str(d.SeriesInstanceUID) for d in result.datasets))
            stored = _store(app, result.files, reporter)
    except ProcessingCancelled:
        board.write(key, "CANCELLED", stage="cancelled", percent=reporter.percent)
        raise Ignore() from None
    except ProcessingError as exc:
        LOGGER.info("job %s failed: %s", key, exc.message)
        board.write(key, "FAILED", stage="failed", error=exc.message, percent=reporter.percent)
        raise Ignore() from None
    return {
        "percent": 100.0,
        "stage": "done",
        "series": series,
        "instances": len(result.files),
        "stored": stored,
        "attempt": reporter.attempt,
        "sop_classes": sorted({UID(str(d.SOPClassUID)).name for d in result.datasets}),
    }


def register(app: HubCelery) -> None:
    """Register the processing task on ``app`` (queue chosen at submission)."""

    def process_series(self: Task[Any, Any], spec: dict[str, Any]) -> dict[str, Any]:
        return run_job(self, spec)

    app.task(
        bind=True,
        name=PROCESS_TASK,
        autoretry_for=TRANSIENT,
        retry_backoff=2,
        retry_backoff_max=120,
        retry_jitter=True,
        max_retries=5,
        acks_late=True,
        reject_on_worker_lost=True,
    )(process_series)
