"""Progress and cancellation hooks, given by the caller (a Celery task, a CLI, a test).

Every long function of the pipeline takes an optional :class:`Monitor`; it reports
``(percent, stage)`` and checks for cancellation between units of work (a slice, a plane,
an angle), raising :class:`~workers.processing.errors.ProcessingCancelled`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workers.processing.errors import ProcessingCancelled

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class Monitor:
    """Where progress goes and how cancellation is asked; both optional.

    ``start``/``span`` map a sub-step's own 0-100 % onto the caller's range, so a pipeline
    of several steps reports one monotonic percentage.
    """

    progress: ProgressCallback | None = None
    cancelled: CancelCheck | None = None
    start: float = 0.0
    span: float = 100.0

    def report(self, fraction: float, stage: str) -> None:
        """Report ``fraction`` (0..1) of this step done; raise if cancelled."""
        self.check()
        if self.progress is not None:
            clipped = min(max(fraction, 0.0), 1.0)
            self.progress(round(self.start + self.span * clipped, 2), stage)

    def check(self) -> None:
        """Raise ProcessingCancelled when the caller asked to stop."""
        if self.cancelled is not None and self.cancelled():
            raise ProcessingCancelled("processing cancelled by the caller")

    def sub(self, start: float, end: float) -> Monitor:
        """A monitor for a sub-step covering ``start..end`` (0..1) of this one."""
        return Monitor(
            self.progress,
            self.cancelled,
            self.start + self.span * start,
            self.span * (end - start),
        )


SILENT = Monitor()
