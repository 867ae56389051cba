"""The hub's background work for the region: periodic tasks in the hub process.

Each task is a function of the :class:`WorkerContext`, run every ``interval``
seconds on its own daemon thread until the hub stops (node health C-ECHOs,
the routing queue, prefetch of priors...). A task that raises is logged and run
again at its next turn: one failing peer never stops the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pacs_hub.config import Settings
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What background tasks may use."""

    settings: Settings
    database: Database
    blobs: BlobStore
    stop: threading.Event


@dataclass(frozen=True, slots=True)
class PeriodicTask:
    """A named function run every ``interval`` seconds (``interval`` read from settings)."""

    name: str
    interval: Callable[[Settings], float]
    run: Callable[[WorkerContext], None]


TASKS: list[PeriodicTask] = []
"""Registered tasks; modules of pacs_hub.regional append theirs at import."""


def register(task: PeriodicTask) -> PeriodicTask:
    """Add a task to :data:`TASKS` (once per name)."""
    if all(t.name != task.name for t in TASKS):
        TASKS.append(task)
    return task


@dataclass
class RegionalWorker:
    """Runs every registered task on its own thread until :meth:`stop`."""

    context: WorkerContext
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Start one daemon thread per task whose interval is positive."""
        for task in TASKS:
            interval = task.interval(self.context.settings)
            if interval <= 0:
                continue
            thread = threading.Thread(
                target=self._loop, args=(task, interval), name=f"hub-{task.name}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def _loop(self, task: PeriodicTask, interval: float) -> None:
        while not self.context.stop.is_set():
            try:
                task.run(self.context)
            except Exception:
                LOGGER.exception(
                    "background task %s failed; next run in %.0fs", task.name, interval
                )
            self.context.stop.wait(interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask every task to stop and wait for their threads."""
        self.context.stop.set()
        for thread in self.threads:
            thread.join(timeout)
