"""One C-MOVE from the hub as SCU, to its final response (PS3.4 C.4.2.1, C.4.2.2).

Used by a pull of a whole study (:func:`pacs_hub.regional.pull.move_study`) and of its
parts (:mod:`pacs_hub.regional.pull_parts`): the Pending responses report the
sub-operations done and to come (C.4.2.1.5), the final one becomes a
:class:`MoveResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import sop_class as sc
from pynetdicom.association import Association

from pacs_hub.regional.scu import PENDING, PacsNode, SourceUnavailable

MODEL = sc.StudyRootQueryRetrieveInformationModelMove
MOVE_STATUS = {
    0xA701: "out of resources: unable to calculate number of matches",
    0xA702: "out of resources: unable to perform sub-operations",
    0xA801: "move destination unknown (the PACS does not know the hub's AE title)",
    0xA900: "identifier does not match SOP class",
    0xB000: "sub-operations complete, one or more failures",
    0xFE00: "cancelled",
}


@dataclass(frozen=True, slots=True)
class MoveResult:
    """The final C-MOVE response: status, sub-operation counts, Error Comment."""

    status: int
    completed: int
    failed: int
    warning: int
    comment: str

    @property
    def received(self) -> int:
        """Instances the hub stored (Completed + Warning sub-operations)."""
        return self.completed + self.warning

    def error(self) -> str:
        """Why the pull failed, or '' when it succeeded."""
        if self.status == 0x0000 and self.failed == 0:
            if self.received == 0:
                return "the PACS sent no instance of this study (not held there?)"
            return ""
        meaning = MOVE_STATUS.get(self.status, "unable to process")
        text_ = f"retrieve status 0x{self.status:04X} ({meaning})"
        if self.failed:
            text_ += f", {self.failed} sub-operation(s) failed"
        return text_ + (f": {self.comment}" if self.comment else "")


def _count(status: Dataset, keyword: str) -> int:
    value = status.get(keyword)
    return int(value) if value not in (None, "") else 0


def send_move(
    assoc: Association,
    node: PacsNode,
    identifier: Dataset,
    destination: str,
    pending: Callable[[int, int], None],
) -> MoveResult:
    """C-MOVE ``identifier`` to ``destination`` on ``assoc``; block until the final
    response. ``pending(stored, total)`` at each Pending response (stored: Completed +
    Warning). :class:`~pacs_hub.regional.scu.SourceUnavailable` when the PACS stops
    answering."""
    for status, _identifier in assoc.send_c_move(identifier, destination, MODEL):
        if not status:
            raise SourceUnavailable(f"{node.ae_title}: no C-MOVE response (timeout or abort)")
        code = int(status.Status)
        done = _count(status, "NumberOfCompletedSuboperations")
        warned = _count(status, "NumberOfWarningSuboperations")
        failed = _count(status, "NumberOfFailedSuboperations")
        if code in PENDING:
            remaining = _count(status, "NumberOfRemainingSuboperations")
            pending(done + warned, done + warned + failed + remaining)
            continue
        comment = str(status.get("ErrorComment", "") or "")
        return MoveResult(code, done, failed, warned, comment)
    raise SourceUnavailable(f"{node.ae_title}: C-MOVE ended without a final response")
