"""Storage Commitment Push Model SCU (PS3.4 J): ask a restored PACS to commit.

After a restore, the hub asks the PACS to take responsibility for what it sent: one
N-ACTION Request Storage Commitment (Action Type ID 1, J.3.2) per :data:`BATCH`
instances, on the well-known SOP Instance 1.2.840.10008.1.20.1.1, each with its own
Transaction UID. The PACS answers each with an N-EVENT-REPORT (J.3.3: Event Type 1,
all committed; 2, some failed with a Failure Reason), which J.3.3 lets it send

* on the *same* association: the association is kept open while waiting, and the
  report is handled on it;
* on a *new* association to the requester's AE title (Orthanc does this): it reaches
  the hub's DICOM gateway, whose EVT_N_EVENT_REPORT handler
  (:func:`handle_n_event_report`, bound in :mod:`pacs_hub.gateway.server`) records it.

Both go through :func:`receive`: a report is accepted only for a Transaction UID this
hub asked (``DATA_DIR/backup/commitment/<uid>.pending``, written before the N-ACTION)
and only from the node it was asked of; it is written to ``<uid>.json`` (atomically),
which the waiting restore reads, in this process or another one. The caller policy of
the gateway (:mod:`pacs_hub.gateway.callers`) admits the association as any other.

A PACS that rejects the presentation context (the SOP class) does not support storage
commitment; one that accepts it but refuses or drops the N-ACTION (Orthanc does so
when the hub is not in its DicomModalities) declines it; in both cases the restore's
verdict rests on the C-FIND counts and the SHA-256 sample. A report that does not come
within ``backup_commitment_timeout`` seconds leaves its instances *not committed*.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from pacs_hub.backup import remote, state
from pacs_hub.config import Settings
from pacs_hub.regional.scu import PacsNode, requestor_ae

LOGGER = logging.getLogger(__name__)
PUSH_MODEL = "1.2.840.10008.1.20.1"
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1
BATCH = 1000
POLL = 0.2
SUCCESS = 0x0000
NO_SUCH_EVENT_TYPE = 0x0113  # PS3.7 C.5.21
INVALID_ARGUMENT = 0x0115  # PS3.7 C.5.13: a Transaction UID this hub did not ask
NO_SUCH_SOP_CLASS = 0x0118
PROCESSING_FAILURE = 0x0110
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


@dataclass(slots=True)
class Commitment:
    """What the PACS committed to, for the restore report."""

    supported: bool
    state: str
    """``answered``, ``not supported``, ``declined`` or ``no report``."""
    detail: str = ""
    committed: set[str] = field(default_factory=set)
    failed: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0

    def as_report(self, asked: int) -> dict[str, Any]:
        """The ``storage_commitment`` part of a restore report."""
        not_committed = asked - len(self.committed) if self.supported else 0
        failures = [
            {"sop_instance_uid": uid, "reason": f"0x{code:04X} {reason(code)}"}
            for uid, code in sorted(self.failed.items())
        ]
        return {
            "supported": self.supported,
            "state": self.state,
            "detail": self.detail,
            "asked": asked if self.supported else 0,
            "committed": len(self.committed),
            "not_committed": not_committed,
            "failed": failures[:100],
            "unanswered": self.unanswered,
        }


def reason(code: int) -> str:
    """The meaning of a Failure Reason (PS3.4 J.3.3.1.1)."""
    return FAILURE_REASONS.get(code, "failed")


def _folder(settings: Settings) -> Path:
    path = state.folder(settings) / "commitment"
    path.mkdir(exist_ok=True)
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(temporary, path)


def receive(settings: Settings, peer: str, event_type: int, info: Dataset) -> int:
    """Record an N-EVENT-REPORT (J.3.3) for a transaction this hub asked; its status."""
    transaction = str(info.get("TransactionUID", "") or "").strip()
    if not transaction or not pydicom.uid.UID(transaction).is_valid:
        return INVALID_ARGUMENT
    folder = _folder(settings)
    try:
        pending = json.loads((folder / f"{transaction}.pending").read_text())
    except FileNotFoundError:
        LOGGER.warning("storage commitment report from %s: unknown transaction", peer)
        return INVALID_ARGUMENT
    if peer.strip() != str(pending["node"]).strip():
        LOGGER.warning("storage commitment report from %s: asked of %s", peer, pending["node"])
        return INVALID_ARGUMENT
    if event_type not in (1, 2):
        return NO_SUCH_EVENT_TYPE
    committed = [
        str(item.get("ReferencedSOPInstanceUID", ""))
        for item in info.get("ReferencedSOPSequence", [])
    ]
    failed = [
        [str(item.get("ReferencedSOPInstanceUID", "")), int(item.get("FailureReason", 0x0110))]
        for item in info.get("FailedSOPSequence", [])
    ]
    _write_json(folder / f"{transaction}.json", {"committed": committed, "failed": failed})
    LOGGER.info(
        "storage commitment report from %s: %d committed, %d failed",
        peer,
        len(committed),
        len(failed),
    )
    return SUCCESS


def _peer(event: Event) -> str:
    user = event.assoc.acceptor if event.assoc.is_requestor else event.assoc.requestor
    return str(user.ae_title)


def handle_n_event_report(event: Event, settings: Settings) -> tuple[int, Dataset | None]:
    """EVT_N_EVENT_REPORT: a Storage Commitment report for a waiting restore."""
    try:
        sop_class = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
        if sop_class != PUSH_MODEL:
            return NO_SUCH_SOP_CLASS, None
        event_type = int(event.event_type or 0)
        return receive(settings, _peer(event), event_type, event.event_information), None
    except Exception:  # the adapter: a report that cannot be read is a processing failure
        LOGGER.exception("storage commitment report from %s unreadable", _peer(event))
        return PROCESSING_FAILURE, None


def _action_information(transaction: str, references: Sequence[tuple[str, str]]) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = DicomSequence(items)
    return info


def _ask(
    settings: Settings, assoc: Association, where: PacsNode, batch: Sequence[tuple[str, str]]
) -> tuple[str, str]:
    """Send one N-ACTION; ``(transaction UID, '')`` or ``('', why it was declined)``."""
    transaction = pydicom.uid.generate_uid()
    pending = _folder(settings) / f"{transaction}.pending"
    _write_json(pending, {"node": where.ae_title, "references": len(batch)})
    info = _action_information(transaction, batch)
    try:
        answer, _ = assoc.send_n_action(info, REQUEST_COMMITMENT, PUSH_MODEL, PUSH_MODEL_INSTANCE)
    except (RuntimeError, OSError):  # the association ended under it
        answer = Dataset()
    code = int(answer.get("Status", -1)) if answer else -1
    if code == SUCCESS:
        return transaction, ""
    pending.unlink(missing_ok=True)
    if code == -1:
        return "", "no N-ACTION response (the PACS aborted or timed out)"
    return "", f"N-ACTION answered 0x{code:04X}"


def _collect(settings: Settings, transactions: dict[str, int], outcome: Commitment) -> None:
    """Wait for the reports of ``transactions`` (UID -> instances asked) and read them."""
    folder = _folder(settings)
    deadline = time.monotonic() + settings.backup_commitment_timeout
    waiting = dict(transactions)
    while waiting and time.monotonic() < deadline:
        for transaction in list(waiting):
            path = folder / f"{transaction}.json"
            if path.exists():
                report = json.loads(path.read_text())
                outcome.committed.update(report["committed"])
                outcome.failed.update({uid: int(code) for uid, code in report["failed"]})
                del waiting[transaction]
        if waiting:
            time.sleep(POLL)
    outcome.unanswered = sum(waiting.values())
    if waiting:
        outcome.state = "no report"
        outcome.detail = (
            f"{len(waiting)} of {len(transactions)} report(s) not received within "
            f"{settings.backup_commitment_timeout:g} s"
        )
    for transaction in transactions:
        (folder / f"{transaction}.pending").unlink(missing_ok=True)
        (folder / f"{transaction}.json").unlink(missing_ok=True)


def _association(settings: Settings, where: PacsNode) -> tuple[Association | None, Commitment]:
    ae: AE = requestor_ae(settings, [PUSH_MODEL])
    assoc = ae.associate(
        where.host,
        where.port,
        ae_title=where.ae_title,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, handle_n_event_report, [settings])],
    )
    accepted = assoc.is_established and any(
        cx.abstract_syntax == PUSH_MODEL for cx in assoc.accepted_contexts
    )
    if accepted:
        return assoc, Commitment(True, "answered")
    if assoc.is_established:
        assoc.release()
    elif not remote.echoes(settings, where):
        return None, Commitment(False, "declined", "the PACS did not answer an association")
    return None, Commitment(
        False, "not supported", "the PACS rejected the Storage Commitment SOP class"
    )


def request_commitment(
    settings: Settings, where: PacsNode, references: Sequence[tuple[str, str]]
) -> Commitment:
    """Ask ``where`` to commit to ``references`` ((SOP Class, SOP Instance) pairs)."""
    assoc, outcome = _association(settings, where)
    if assoc is None:
        return outcome
    transactions: dict[str, int] = {}
    try:
        for start in range(0, len(references), BATCH):
            batch = references[start : start + BATCH]
            transaction, declined = _ask(settings, assoc, where, batch)
            if declined:
                if not transactions:  # the first request refused: the PACS declines
                    return Commitment(False, "declined", declined)
                outcome.unanswered += len(batch)
                outcome.detail = declined
                continue
            transactions[transaction] = len(batch)
        _collect(settings, transactions, outcome)  # the association open meanwhile
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome
