"""The archive checking itself: a sweep that reads every stored instance back, again
and again, while the hub runs.

A disk that rots does not say so until someone reads what it holds; an archive kept
for decades must find a damaged copy while its sender or a backup still has a good
one. The ``archive-integrity`` background task of ``pacs-hub serve`` reads each
indexed instance's blob and checks it against its recorded size and SHA-256
(:meth:`BlobStore.problem <pacs_hub.storage.blobs.BlobStore.problem>`), in index
order, at most ``PACS_HUB_INTEGRITY_RATE`` MB/s so that it never competes with
viewers and modalities. One pass over the whole archive is a *cycle*; a new cycle
starts ``PACS_HUB_INTEGRITY_CYCLE_DAYS`` after the previous one started (at once when
a cycle took longer).

Its progress is kept in ``DATA_DIR/archive/integrity.json`` (written atomically every
few seconds), so a restarted hub resumes where it stopped: the current cycle (when it
started, the last instance checked, instances and bytes checked, damaged ones found
so far, at most :data:`DAMAGED_KEPT`) and the last cycle completed. ``pacs-hub archive
status`` and ``GET /api/archive/integrity`` show it; each damaged instance is also
logged at ERROR with its UIDs and blob (no patient data). A whole check on demand is
``pacs-hub archive verify``.

Each hub sweeps what its index names: hubs sharing one PostgreSQL index and one blob
store (replicas) would each read it all, so all but one of them run with
``PACS_HUB_INTEGRITY_RATE=0``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pacs_hub.archive.integrity import Indexed, indexed, log_damage, still_indexed
from pacs_hub.config import Settings
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage.durable import read_json, write_json

LOGGER = logging.getLogger(__name__)
DAMAGED_KEPT = 1000
TURN_SECONDS = 10.0
"""The longest one turn of the task checks before it saves its progress."""
TURN_INTERVAL = 1.0
"""Seconds between turns (while a cycle runs, or to see whether the next one is due)."""
State = dict[str, Any]


def state_path(settings: Settings) -> Path:
    """``DATA_DIR/archive/integrity.json``."""
    return settings.data_dir / "archive" / "integrity.json"


def load(settings: Settings) -> State:
    """The sweep's saved progress ({} before its first turn)."""
    return read_json(state_path(settings))


def save(settings: Settings, state: State) -> None:
    """Write ``state`` atomically."""
    write_json(state_path(settings), state, indent=1)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def next_cycle_at(settings: Settings, state: State) -> datetime | None:
    """When the next cycle starts (None while one runs, or before the first)."""
    if state.get("current") or not state.get("last"):
        return None
    started = _parse(state["last"]["started"])
    return started + timedelta(days=settings.integrity_cycle_days)


class Sweep:
    """The ``archive-integrity`` task: one turn checks for up to :data:`TURN_SECONDS`."""

    def __init__(self) -> None:
        self.states: dict[Path, State] = {}
        """Each data folder's state (one in a hub; tests run several)."""

    def run(self, ctx: WorkerContext) -> None:
        """Check the next instances of the current cycle (starting one when due)."""
        settings = ctx.settings
        state = self.states.setdefault(state_path(settings), load(settings))
        if not state.get("current"):
            due = next_cycle_at(settings, state)
            if due is not None and _now() < due:
                return
            state["current"] = {
                "started": _iso(_now()),
                "position": 0,
                "checked": 0,
                "bytes": 0,
                "damaged": [],
                "damaged_count": 0,
            }
        rate = settings.integrity_rate * 1e6
        turn_started = time.monotonic()
        current = state["current"]
        done_bytes = 0
        finished = True
        for item in indexed(ctx.database, after=current["position"]):
            if ctx.stop.is_set():
                finished = False
                break
            problem = ctx.blobs.problem(item.blob_key, item.sha256, item.size)
            current["position"] = item.id
            current["checked"] += 1
            current["bytes"] += item.size
            done_bytes += item.size
            if problem is not None and still_indexed(ctx.database, item):
                self._damaged(current, item, problem)
            # At most ``rate`` bytes a second, averaged over the turn.
            ahead = done_bytes / rate - (time.monotonic() - turn_started)
            if ahead > 0:
                ctx.stop.wait(ahead)
            if time.monotonic() - turn_started >= TURN_SECONDS:
                finished = False  # saved now; the next turn goes on (or closes the cycle)
                break
        if finished:
            self._close_cycle(state)
        save(settings, state)

    @staticmethod
    def _damaged(current: State, item: Indexed, problem: str) -> None:
        current["damaged_count"] += 1
        if len(current["damaged"]) < DAMAGED_KEPT:
            current["damaged"].append(
                {
                    "study_instance_uid": item.study_instance_uid,
                    "series_instance_uid": item.series_instance_uid,
                    "sop_instance_uid": item.sop_instance_uid,
                    "blob": item.blob_key,
                    "problem": problem,
                    "found": _iso(_now()),
                }
            )
        log_damage(item, problem, "integrity sweep")

    @staticmethod
    def _close_cycle(state: State) -> None:
        current = state.pop("current")
        last = {key: value for key, value in current.items() if key != "position"}
        last["finished"] = _iso(_now())
        state["last"] = last
        state["cycles"] = int(state.get("cycles", 0)) + 1
        LOGGER.info(
            "integrity sweep: cycle %d done, %d instance(s) (%.1f MB) checked, %d damaged",
            state["cycles"],
            last["checked"],
            last["bytes"] / 1e6,
            last["damaged_count"],
        )


SWEEP = Sweep()
register(
    PeriodicTask(
        "archive-integrity",
        interval=lambda s: TURN_INTERVAL if s.integrity_rate > 0 else 0.0,
        run=SWEEP.run,
    )
)


def describe(settings: Settings) -> dict[str, Any]:
    """The sweep's state for ``pacs-hub archive status`` and the API."""
    state = load(settings)
    due = next_cycle_at(settings, state)
    return {
        "enabled": settings.integrity_rate > 0,
        "rate_mb_per_s": settings.integrity_rate,
        "cycle_days": settings.integrity_cycle_days,
        "cycles_completed": int(state.get("cycles", 0)),
        "current": state.get("current"),
        "last": state.get("last"),
        "next_cycle": _iso(due) if due is not None else None,
    }
