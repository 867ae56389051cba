"""Backfill: copy the history of an establishment PACS into the hub, resumably.

1. *Inventory*: the PACS's studies, Study Date window by window (C-FIND STUDY level with
   Number of Study Related Instances, :mod:`pacs_hub.backup.remote`; a PACS that leaves
   it empty is asked at SERIES level and the series' counts are summed), recorded in the
   establishment's state file; a study the hub already holds with at least as many
   instances is safe from the start.
2. *Pull*: every other study by :func:`pacs_hub.regional.pull.pull_study` (C-MOVE to
   the hub, C-GET when the PACS cannot move; one RetrieveJob row each, kind
   ``backfill``, single flight with on-demand retrieves), ``backup_associations`` at
   once and no faster than ``backup_rate_limit`` instances per second, so a production
   PACS keeps serving its users. After each study the hub's count is read back from the
   index and the study is marked safe (or its error kept) in the state file.

Each study's outcome is appended to the establishment's journal (one line, fsynced,
:func:`pacs_hub.backup.state.record`), not a rewrite of the state: after a crash or a
kill -9 the next run (the hub's ``backup-backfill`` task, or ``pacs-hub backup backfill``) skips
what is safe and pulls the rest. Pulls are idempotent (the ingest stores a SOP Instance
once), so a study interrupted half-way is simply pulled again. One backfill per
establishment runs at a time (a non-blocking lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update

from pacs_hub.backup import inventory, remote, state
from pacs_hub.config import Settings
from pacs_hub.errors import HubError, StudyDestroyed
from pacs_hub.regional.pull import ACTIVE, _now, get_job, pull_study
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import RetrieveJob

LOGGER = logging.getLogger(__name__)
KIND = "backfill"


@dataclass(frozen=True, slots=True)
class Progress:
    """A backfill's progress as the CLI and the API show it."""

    establishment: str
    state: str
    phase: str
    studies_done: int
    studies_total: int
    instances_done: int
    instances_total: int
    bytes_done: int
    bytes_total: int
    """Estimated from the bytes per instance pulled so far."""
    eta_seconds: float | None
    failed: int
    error: str

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {name: getattr(self, name) for name in self.__slots__}


class RateLimit:
    """At most ``rate`` instances per second on average (0: no limit), shared by threads."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self, instances: int) -> None:
        """Wait until ``instances`` more may be pulled."""
        if self.rate <= 0:
            return
        with self.lock:
            start = max(self.next, time.monotonic())
            self.next = start + max(instances, 1) / self.rate
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def progress_of(code: str, current: state.State) -> Progress:
    """The progress recorded in ``current`` (an establishment's state)."""
    run: dict[str, Any] = current.get("backfill") or {}
    studies: dict[str, dict[str, Any]] = run.get("studies") or {}
    done = [s for s in studies.values() if s.get("done")]
    total_instances = sum(int(s.get("n") or 0) for s in studies.values())
    done_instances = sum(int(s.get("n") or 0) for s in done)
    done_bytes = sum(int(s.get("bytes") or 0) for s in done)
    per_instance = done_bytes / done_instances if done_instances else 0.0
    eta: float | None = None
    pulled = int(run.get("pulled") or 0)
    started = run.get("run_started")
    if run.get("state") == "running" and pulled and started:
        elapsed = max(time.time() - float(started), 1e-3)
        eta = (total_instances - done_instances) / (pulled / elapsed)
    return Progress(
        code,
        str(run.get("state", "never")),
        str(run.get("phase", "")),
        len(done),
        len(studies),
        done_instances,
        total_instances,
        done_bytes,
        int(per_instance * total_instances),
        eta,
        sum(1 for s in studies.values() if s.get("error") and not s.get("done")),
        str(run.get("error", "")),
    )


def request(settings: Settings, code: str, since: str = "", until: str = "") -> None:
    """Ask for a new backfill of ``code`` (the hub's task, or a foreground run, does it)."""

    def change(current: state.State) -> None:
        current["backfill"] = {
            "state": "requested",
            "phase": "inventory",
            "since": since or settings.backup_since,
            "until": until or datetime.now(UTC).strftime("%Y%m%d"),
            "requested_at": state.now_iso(),
        }

    state.update(settings, code, change)


def series_total(settings: Settings, client: inventory.Client, study: str) -> int | None:
    """Instances of ``study`` on the PACS from its SERIES-level counts (None if unknown)."""
    counts = [s.instances for s in remote.find_series(settings, client.node, study)]
    if not counts or any(c is None for c in counts):
        return None
    return sum(c for c in counts if c is not None)


def _inventory(settings: Settings, database: Database, client: inventory.Client) -> None:
    run = state.load(settings, client.code)["backfill"]
    found = remote.find_all_studies(settings, client.node, run["since"], run["until"])
    held = inventory.study_counts(database, found)
    studies: dict[str, dict[str, Any]] = {}
    for uid, study in found.items():
        count, size = held.get(uid, (0, 0))
        expected = study.instances
        if expected is None:  # no study-level count: the sum of the series' counts
            expected = series_total(settings, client, uid)
        safe = expected is not None and count >= expected
        studies[uid] = {
            "d": study.study_date,
            "t": study.study_time,
            "n": expected if expected is not None else count,
            "done": safe,
            "bytes": size if safe else 0,
        }

    def change(current: state.State) -> None:
        current["backfill"].update(studies=studies, phase="pull")

    state.update(settings, client.code, change)
    LOGGER.info(
        "backfill %s: %d studies on the PACS, %d to pull",
        client.code,
        len(found),
        sum(1 for s in studies.values() if not s["done"]),
    )


def _pull_one(
    settings: Settings, database: Database, client: inventory.Client, uid: str, expected: int
) -> dict[str, Any]:
    try:
        job = get_job(
            database, pull_study(settings, database, client.node.ae_title, uid, kind=KIND)
        )
        error = job.error if job is not None else "job vanished"
    except StudyDestroyed:  # its retention ended here: settled, never pulled back
        LOGGER.info(
            "backfill %s: study %s was destroyed at the end of its retention", client.code, uid
        )
        return {"done": True, "bytes": 0, "error": "", "got": 0}
    except HubError as exc:
        error = exc.message
    count, size = inventory.study_counts(database, [uid]).get(uid, (0, 0))
    done = count >= expected and count > 0
    if done:
        error = ""
    elif not error:
        error = f"hub holds {count} of {expected} instances"
    return {"done": done, "bytes": size, "error": error[:200], "got": count}


def _record(settings: Settings, code: str, uid: str, outcome: dict[str, Any]) -> None:
    values = {k: outcome[k] for k in ("done", "bytes", "error")}
    state.record(settings, code, KIND, uid, values, {"pulled": int(outcome["got"])})


def _pull(
    settings: Settings,
    database: Database,
    client: inventory.Client,
    report: Callable[[Progress], None] | None,
    stop: threading.Event | None,
) -> None:
    run = state.load(settings, client.code)["backfill"]
    pending = sorted(
        (u for u, s in run["studies"].items() if not s.get("done")),
        key=lambda u: (run["studies"][u].get("d", ""), u),
        reverse=True,  # newest first: the studies most likely to be needed again
    )
    limit = RateLimit(settings.backup_rate_limit)
    lock = threading.Lock()

    def one(uid: str) -> None:
        if stop is not None and stop.is_set():
            return
        expected = int(run["studies"][uid].get("n") or 0)
        limit.acquire(expected)
        outcome = _pull_one(settings, database, client, uid, expected)
        _record(settings, client.code, uid, outcome)
        with lock:  # this run's copy, for the progress (no re-read of the state)
            run["studies"][uid].update({k: outcome[k] for k in ("done", "bytes", "error")})
            run["pulled"] = int(run.get("pulled") or 0) + int(outcome["got"])
            progress = progress_of(client.code, {"backfill": run})
        if report is not None:
            report(progress)

    with ThreadPoolExecutor(settings.backup_associations, "backfill") as pool:
        for _ in pool.map(one, pending):
            pass


def _set(settings: Settings, code: str, **values: Any) -> None:
    def change(current: state.State) -> None:
        current.setdefault("backfill", {}).update(values)

    state.update(settings, code, change)


def abandon_orphans(database: Database, node_pk: int) -> int:
    """Fail the active backfill jobs of ``node_pk`` left by a run that died (kill -9).

    Called with the establishment's backfill lock held: no live backfill owns them, so
    waiting for them to go stale (:func:`pacs_hub.regional.pull.stale_after`) is useless.
    """
    with database.session() as session:
        result = session.execute(
            update(RetrieveJob)
            .where(
                RetrieveJob.kind == KIND,
                RetrieveJob.source_node_pk == node_pk,
                RetrieveJob.state.in_(ACTIVE),
            )
            .values(state="failed", error="abandoned: backfill restarted", finished_at=_now())
        )
        return int(getattr(result, "rowcount", 0) or 0)


def run_backfill(
    settings: Settings,
    database: Database,
    code: str,
    *,
    report: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> Progress | None:
    """Run (or resume) the requested backfill of ``code``; None when another runs it."""
    client = inventory.client(settings, database, code)
    with state.exclusive(settings, code, "backfill") as mine:
        if not mine:
            return None
        current = state.load(settings, code).get("backfill")
        if not current or current.get("state") not in ("requested", "running"):
            return progress_of(code, state.load(settings, code))
        if abandon_orphans(database, client.node.pk):
            LOGGER.info("backfill %s: jobs of an interrupted run abandoned", code)
        _set(settings, code, state="running", run_started=time.time(), pulled=0, error="")
        try:
            if current.get("phase") != "pull":
                _inventory(settings, database, client)
            _pull(settings, database, client, report, stop)
        except HubError as exc:
            LOGGER.warning("backfill %s interrupted: %s", code, exc.message)
            _set(settings, code, state="running", error=exc.message)
            return progress_of(code, state.load(settings, code))
        final = progress_of(code, state.load(settings, code))
        if stop is None or not stop.is_set():
            finished = final.studies_done == final.studies_total
            _set(
                settings,
                code,
                state="done" if finished else "failed",
                finished_at=state.now_iso(),
                error="" if finished else f"{final.failed} stud(ies) could not be pulled",
            )
        return progress_of(code, state.load(settings, code))


def resume_all(settings: Settings, database: Database, stop: threading.Event) -> None:
    """Run every requested or interrupted backfill (the hub's background task)."""
    for code in state.enrolled(settings):
        if stop.is_set():
            return
        try:
            run = state.load(settings, code).get("backfill") or {}
            if run.get("state") in ("requested", "running"):
                run_backfill(settings, database, code, stop=stop)
        except HubError as exc:
            LOGGER.warning("backfill %s: %s", code, exc.message)
