"""Where a job stands: its state and progress, kept in Celery's result backend.

The task id of a job is its key (:func:`job_key`, a hash of the inputs), so anybody with
the key reads the same record: the hub's API and CLI, the worker running it. The states
are the hub's own (Celery's FAILURE and REVOKED carry exceptions; ours carry a message):

==========  ==============================================================================
QUEUED      submitted, waiting for a worker (written by the submitter)
PROGRESS    running: percent, stage, heartbeat (seconds since the epoch), worker, attempt
RETRY       a transient error (OSError, index unavailable): Celery runs it again later
SUCCESS     done: the result series and counts
FAILED      the input cannot be processed as asked (ProcessingError): message; nothing written
CANCELLED   cancelled by a user before its results were stored; nothing written
FAILURE     an unexpected error (a bug): Celery's record with the exception
==========  ==============================================================================

Cancellation is a second record under ``<key>.cancel`` that the running task polls (the
embedded broker cannot broadcast Celery's ``revoke``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

ACTIVE = ("QUEUED", "PROGRESS", "RETRY")
DONE = ("SUCCESS",)
PUBLIC = {
    "QUEUED": "queued",
    "PROGRESS": "running",
    "RETRY": "retrying",
    "SUCCESS": "succeeded",
    "FAILED": "failed",
    "FAILURE": "failed",
    "CANCELLED": "cancelled",
    "REVOKED": "cancelled",
}


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a job computes: one series, the steps, their parameters, the exact inputs."""

    study_uid: str
    series_uid: str
    steps: tuple[str, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    instances: tuple[str, ...] = ()
    """SOP Instance UIDs of the input (sorted): new slices make a new job."""

    @property
    def key(self) -> str:
        return job_key(self.series_uid, self.steps, self.parameters, self.instances)

    def to_json(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "steps": list(self.steps),
            "parameters": dict(self.parameters),
            "instances": list(self.instances),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        return cls(
            str(data["study_uid"]),
            str(data["series_uid"]),
            tuple(str(s) for s in data["steps"]),
            dict(data.get("parameters") or {}),
            tuple(str(u) for u in data.get("instances") or ()),
        )


def job_key(
    series_uid: str, steps: Sequence[str], parameters: Mapping[str, Any], instances: Sequence[str]
) -> str:
    """The job's id: SHA-256 of (series, steps, parameters, input instances), 32 hex digits.

    Steps are kept in the order given (it is the order of the outputs); parameters are
    canonical JSON (sorted keys), so the same request gives the same key anywhere.
    """
    body = json.dumps(
        {
            "series": series_uid,
            "steps": list(steps),
            "parameters": dict(parameters),
            "instances": sorted(instances),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class JobState:
    """One read of a job's record."""

    key: str
    raw: str
    """Backend state: PENDING (no record), QUEUED, PROGRESS, RETRY, SUCCESS, FAILED..."""
    percent: float = 0.0
    stage: str = ""
    error: str = ""
    heartbeat: float = 0.0
    attempt: int = 0
    worker: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """queued, running, retrying, succeeded, failed, cancelled; unknown without record."""
        return PUBLIC.get(self.raw, "unknown")

    @property
    def active(self) -> bool:
        return self.raw in ACTIVE

    def stale(self, after: float, now: float | None = None) -> bool:
        """Running, with no heartbeat for ``after`` seconds (its worker died)."""
        return self.raw == "PROGRESS" and (now or time.time()) - self.heartbeat > after


class Board:
    """Reads and writes job records in the result backend of ``app``."""

    def __init__(self, app: Celery) -> None:
        self.backend = app.backend

    def read(self, key: str) -> JobState:
        meta = self.backend.get_task_meta(key, cache=False)
        raw = str(meta.get("status", "PENDING"))
        info = meta.get("result")
        if raw == "FAILURE" or not isinstance(info, dict):
            error = str(info) if raw in ("FAILURE", "RETRY") and info is not None else ""
            return JobState(key, raw, 100.0 if raw == "FAILURE" else 0.0, "", error)
        return JobState(
            key,
            raw,
            percent=float(info.get("percent", 100.0 if raw in DONE else 0.0)),
            stage=str(info.get("stage", "")),
            error=str(info.get("error", "")),
            heartbeat=float(info.get("heartbeat", 0.0)),
            attempt=int(info.get("attempt", 0)),
            worker=str(info.get("worker", "")),
            result=info,
        )

    def write(self, key: str, raw: str, **meta: Any) -> None:
        self.backend.store_result(key, dict(meta), raw)

    # -- cancellation --------------------------------------------------------------------

    def request_cancel(self, key: str) -> None:
        self.backend.store_result(f"{key}.cancel", {"at": time.time()}, "CANCELLED")

    def clear_cancel(self, key: str) -> None:
        self.backend.store_result(f"{key}.cancel", {}, "CLEARED")

    def cancel_requested(self, key: str) -> bool:
        meta = self.backend.get_task_meta(f"{key}.cancel", cache=False)
        return meta.get("status") == "CANCELLED"
