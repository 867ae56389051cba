"""Submitting, reading, cancelling and recovering processing jobs (the hub's side).

Where job records live (no migration of the index): the *state and progress* of a job
are in Celery's result backend under the job's deterministic id
(:func:`workers.board.job_key`: a hash of series, steps, parameters and input
instances); the *list of submitted jobs* (what, by whom, when) is a small SQLite ledger
of the hub in ``<data dir>/jobs/ledger.sqlite3``, written only by the hub's API, CLI
and rules, read to list jobs and to recover those whose worker died.

Idempotent: :func:`submit` checks and sends inside one ledger write transaction
(``BEGIN IMMEDIATE``: submissions on one data folder are serialised), so the same job
submitted twice, even at once, is sent once. A job that succeeded, or is queued or
running, is returned as it is; one that failed or was cancelled runs again when
submitted again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import KombuError
from sqlalchemy import select

from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Series, Study
from workers.board import Board, JobSpec, JobState
from workers.celery_app import PROCESS_TASK, HubCelery, jobs_dir
from workers.tasks import pipeline_options, read_series

LOGGER = logging.getLogger(__name__)

RECOVERY_WINDOW = 7 * 86400.0
"""Jobs submitted this recently (s) are watched for a silent worker."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    submissions INTEGER NOT NULL DEFAULT 1,
    sends INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True, slots=True)
class Job:
    """A submitted job and where it stands."""

    key: str
    spec: JobSpec
    submitted_by: str
    submitted_at: float
    submissions: int
    sends: int
    state: JobState


class Ledger:
    """The hub's list of submitted jobs (SQLite file in the data folder)."""

    def __init__(self, app: HubCelery) -> None:
        self.path = jobs_dir(app.hub_settings) / "ledger.sqlite3"

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: one submitter at a time)."""
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as conn:
            conn.execute(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def rows(
        self, where: str = "", args: Sequence[Any] = (), limit: int = 1000
    ) -> list[tuple[Any, ...]]:
        """Ledger rows (key, spec, by, at, submissions, sends), newest first."""
        with closing(sqlite3.connect(self.path, timeout=30)) as conn:
            conn.execute(SCHEMA)
            columns = "key, spec, submitted_by, submitted_at, submissions, sends"
            sql = f"SELECT {columns} FROM jobs {where} ORDER BY submitted_at DESC LIMIT ?"
            return list(conn.execute(sql, (*args, limit)))


def describe(
    database: Database,
    app: HubCelery,
    series_uid: str,
    steps: Sequence[str],
    parameters: dict[str, Any],
) -> JobSpec:
    """The job for ``series_uid``: checked steps and parameters, the study, the inputs.

    ProcessingError (422) for unknown steps or parameters, or a series with no instance.
    """
    from workers.processing import ProcessingError
    from workers.processing.pipeline import STEPS

    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise ProcessingError(f"pipeline {list(steps)}: expected some of {list(STEPS)}")
    pipeline_options(tuple(steps), parameters)
    items = read_series(database, app.blobs, series_uid)
    with database.reader() as session:
        study_uid = session.scalars(
            select(Study.study_instance_uid)
            .join(Series, Series.study_pk == Study.id)
            .where(Series.series_instance_uid == series_uid)
        ).one()
    instances = tuple(sorted(item.sop_instance_uid for item in items))
    return JobSpec(str(study_uid), series_uid, tuple(steps), dict(parameters), instances)


SEND_TRIES = 3


def _send(app: HubCelery, board: Board, spec: JobSpec, attempt: int) -> None:
    board.clear_cancel(spec.key)
    board.write(
        spec.key, "QUEUED", percent=0.0, stage="queued", attempt=attempt, heartbeat=time.time()
    )
    _publish(app, spec)


def _publish(app: HubCelery, spec: JobSpec) -> None:
    """Send the job's message, on a connection of its own, up to :data:`SEND_TRIES` times.

    kombu's own retry of a failed publish revives the connection, which closes the
    producer's channel, and then publishes on that closed channel (AttributeError:
    'NoneType' object has no attribute 'client'; seen once in a full test run when the
    first job of a hub met the embedded worker creating the SQLite broker's tables).
    So kombu does not retry here: a failed try is given up with its connection and the
    next one starts afresh.
    """
    for tries in range(1, SEND_TRIES + 1):
        try:
            with app.connection_for_write() as connection:
                app.send_task(
                    PROCESS_TASK,
                    args=[spec.to_json()],
                    task_id=spec.key,
                    queue=app.hub_settings.processing_queue,
                    connection=connection,
                    retry=False,
                )
            return
        except (AttributeError, OSError, KombuError) as exc:
            if tries == SEND_TRIES:
                raise
            LOGGER.warning("job %s: sending failed (%s), trying again", spec.key, exc)
            time.sleep(0.2 * tries)


def submit(app: HubCelery, spec: JobSpec, submitted_by: str) -> tuple[Job, bool]:
    """Send ``spec`` unless the same job is queued, running or done; (job, sent now?)."""
    board = Board(app)
    ledger = Ledger(app)
    with ledger.transaction() as conn:
        state = board.read(spec.key)
        send = not (state.active or state.raw == "SUCCESS")
        conn.execute(
            "INSERT INTO jobs (key, spec, series_uid, study_uid, submitted_by, submitted_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE"
            " SET submissions = submissions + 1",
            (
                spec.key,
                json.dumps(spec.to_json()),
                spec.series_uid,
                spec.study_uid,
                submitted_by,
                time.time(),
            ),
        )
        if send:
            _send(app, board, spec, state.attempt)
            conn.execute("UPDATE jobs SET sends = sends + 1 WHERE key = ?", (spec.key,))
    job = get(app, spec.key)
    assert job is not None
    return job, send


def _job(board: Board, row: tuple[Any, ...]) -> Job:
    key, spec, by, at, submissions, sends = row
    return Job(
        key, JobSpec.from_json(json.loads(spec)), by, at, submissions, sends, board.read(key)
    )


def get(app: HubCelery, key: str) -> Job | None:
    """The job ``key`` (None when this hub never had it submitted)."""
    rows = Ledger(app).rows("WHERE key = ?", (key,))
    return _job(Board(app), rows[0]) if rows else None


def jobs(app: HubCelery, series_uid: str = "", limit: int = 100, study_uid: str = "") -> list[Job]:
    """Submitted jobs, newest first; of one series, or of one study, when given."""
    given = (("series_uid", series_uid), ("study_uid", study_uid))
    tests = [(f"{column} = ?", value) for column, value in given if value]
    where = ("WHERE " + " AND ".join(t for t, _ in tests)) if tests else ""
    rows = Ledger(app).rows(where, [v for _, v in tests], limit)
    board = Board(app)
    return [_job(board, row) for row in rows]


def cancel(app: HubCelery, key: str) -> Job | None:
    """Ask the job to stop: honoured while it waits or computes (not once storing began)."""
    job = get(app, key)
    if job is None:
        return None
    board = Board(app)
    if job.state.active:
        board.request_cancel(key)
        if job.state.raw == "QUEUED":
            board.write(key, "CANCELLED", stage="cancelled", percent=0.0)
        if not app.embedded:
            app.control.revoke(key)
    return get(app, key)


def recover(app: HubCelery) -> list[str]:
    """Send again the running jobs whose worker went silent (killed); their keys."""
    ledger = Ledger(app)
    if not ledger.path.exists():
        return []  # no job was ever submitted here
    board = Board(app)
    again = []
    recent = time.time() - RECOVERY_WINDOW
    for row in ledger.rows("WHERE submitted_at > ?", (recent,), 200):
        job = _job(board, row)
        if not job.state.stale(app.hub_settings.processing_stale_after):
            continue
        with ledger.transaction() as conn:
            if board.read(job.key).stale(app.hub_settings.processing_stale_after):
                _send(app, board, job.spec, job.state.attempt)
                conn.execute("UPDATE jobs SET sends = sends + 1 WHERE key = ?", (job.key,))
                again.append(job.key)
    return again
