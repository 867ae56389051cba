"""Keeping the hub's gateway and HTTP processes running.

``pacs-hub serve`` runs the DICOM gateways and the HTTP application in processes of
their own (:mod:`pacs_hub.service`). When one dies (a crash, the OOM killer, a
``kill`` by mistake), the hub process starts another in its place, so the DICOM and
HTTP ports keep their full capacity: the listening sockets stay open in the hub
process meanwhile, so connections wait in the backlog for a process to accept them
and are never refused.

A process that keeps dying soon after its start (a broken disk, a bad setting) is
started again with back-off: at once after a process that ran at least
:data:`STABLE_SECONDS`, then after 1, 2, 4, ... seconds, at most :data:`MAX_BACKOFF`,
each exit logged at ERROR with the delay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

LOGGER = logging.getLogger(__name__)

STABLE_SECONDS = 30.0
"""A process that ran this long before it exited is started again at once."""
MAX_BACKOFF = 60.0
"""Longest delay (seconds) before starting again a process that keeps exiting."""


def backoff(quick_exits: int) -> float:
    """Seconds to wait before a new start after ``quick_exits`` exits in a row that
    each came less than :data:`STABLE_SECONDS` after their start: 0, 1, 2, 4, ..."""
    if quick_exits <= 0:
        return 0.0
    return min(2.0 ** (quick_exits - 1), MAX_BACKOFF)


@dataclass
class _Slot:
    kind: str
    start: Callable[[], BaseProcess]
    process: BaseProcess
    started: float
    quick_exits: int = 0
    due: float | None = None
    """When the next start is due (None: the process runs)."""


class Supervisor:
    """Processes of the hub, each started by its ``start`` function and started again
    when it dies; :meth:`check` is called every second or so by the hub's main loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots: list[_Slot] = []

    def add(self, kind: str, start: Callable[[], BaseProcess]) -> BaseProcess:
        """Start a process with ``start`` and keep one running; ``kind`` names it in logs."""
        process = start()
        self._slots.append(_Slot(kind, start, process, self._clock()))
        return process

    def processes(self) -> list[BaseProcess]:
        """The processes started last, one per slot (running or not)."""
        return [slot.process for slot in self._slots]

    def check(self) -> None:
        """Schedule a new start for each process found dead, and make the starts due."""
        now = self._clock()
        for slot in self._slots:
            if slot.due is None:
                if slot.process.is_alive():
                    continue
                ran = now - slot.started
                slot.quick_exits = slot.quick_exits + 1 if ran < STABLE_SECONDS else 0
                delay = backoff(slot.quick_exits)
                slot.due = now + delay
                LOGGER.error(
                    "%s process %s exited with %s after %.0f s: starting another %s",
                    slot.kind,
                    slot.process.pid,
                    slot.process.exitcode,
                    ran,
                    f"in {delay:.0f} s" if delay else "now",
                )
            if now >= slot.due:
                slot.process = slot.start()
                slot.started, slot.due = now, None
