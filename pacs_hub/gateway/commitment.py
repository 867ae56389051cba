"""Storage Commitment Push Model SCP (PS3.4 J): tell a sender what is safely archived.

An SCU sends N-ACTION (Action Type ID 1, Request Storage Commitment, J.3.2) on the
well-known instance 1.2.840.10008.1.20.1.1 with a Transaction UID and a Referenced
SOP Sequence. The hub answers the N-ACTION at once (Success means "request
accepted", not "committed"), then, in a background thread, checks every referenced
instance and sends one N-EVENT-REPORT (J.3.3) with the same Transaction UID:

* committed: the instance is in the index under that SOP Class and its blob is on
  disk and still hashes to the SHA-256 recorded at ingest (``BlobStore.verify``);
* failed (Failed SOP Sequence, J.3.3.1.1 Failure Reason): 0x0112 No such object
  instance (not indexed), 0x0119 Class/Instance conflict (indexed under another SOP
  Class), 0x0110 Processing failure (indexed, but the blob is missing or corrupt:
  the sender must keep its copy).

Event Type ID 1 when every instance is committed, 2 when some failed.

Where the report goes (J.3.3 lets the SCP use the same or a new association): when
the requester's calling AE title is a registered node (:mod:`pacs_hub.regional.nodes`)
the report goes on a *new* association to that node, the hub proposing the SCP role
(SCP/SCU Role Selection, PS3.7 D.3.3.4), retried a few times; the SCU then needs not
wait. Otherwise the hub tries the *same* association, which works while the SCU keeps
it open (pynetdicom pauses the association's reactor, so the N-ACTION response is
always sent first). A report that cannot be delivered is logged; the SCU may ask again.

Access policy (:mod:`pacs_hub.gateway.access`): an instance the caller neither sent
nor may see (its establishment's studies, or studies the policy lets it query) is
reported as failed with 0x0112 (no such object instance), as if the hub lacked it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.events import Event

from pacs_hub.errors import HubError
from pacs_hub.gateway import access, pdata
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import SUCCESS, error_status, status
from pacs_hub.regional.nodes import RemoteNode, get_node
from pacs_hub.storage.retrieval import RetrieveItem, instances_by_uid

LOGGER = logging.getLogger(__name__)
PUSH_MODEL = "1.2.840.10008.1.20.1"
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REPORT_ATTEMPTS = 3


class InvalidCommitmentRequest(HubError):
    """An N-ACTION that is not a well-formed Request Storage Commitment (J.3.2)."""

    dicom_status = 0x0115  # Invalid argument value (PS3.7 C.5.13)
    http_status = 400
    title = "Invalid storage commitment request"


class NoSuchAction(InvalidCommitmentRequest):
    """An Action Type ID other than 1 (PS3.7 C.5.17: 0x0123)."""

    dicom_status = 0x0123


@dataclass(frozen=True, slots=True)
class Reference:
    """One item of a Referenced SOP Sequence."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    """What an N-ACTION Request Storage Commitment asks (J.3.2.1.1)."""

    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """What the hub commits to: committed references and (reference, reason) failures."""

    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[tuple[Reference, int], ...]

    @property
    def event_type(self) -> int:
        """Event Type ID of the N-EVENT-REPORT (J.3.3)."""
        return EVENT_SOME_FAILED if self.failed else EVENT_ALL_COMMITTED


def _reference(item: Dataset) -> Reference:
    sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
    sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
    if not sop_class or not sop_instance:
        raise InvalidCommitmentRequest("Referenced SOP Sequence item without both UIDs")
    return Reference(sop_class, sop_instance)


def read_request(event: Event) -> CommitmentRequest:
    """Read and check an N-ACTION Request Storage Commitment (PS3.4 J.3.2)."""
    if event.action_type != REQUEST_COMMITMENT:
        raise NoSuchAction(f"Action Type ID {event.action_type}: expected 1")
    instance = str(getattr(event.request, "RequestedSOPInstanceUID", "") or "")
    if instance != PUSH_MODEL_INSTANCE:
        raise InvalidCommitmentRequest(f"SOP Instance {instance[:24]}: expected the well-known")
    try:
        info = event.action_information
        transaction = str(info.get("TransactionUID", "") or "").strip()
        references = tuple(_reference(item) for item in info.get("ReferencedSOPSequence", []))
    except HubError:
        raise
    except Exception as exc:  # pydicom decodes lazily and may raise anything
        raise InvalidCommitmentRequest(f"unreadable Action Information: {exc}") from exc
    if not transaction:
        raise InvalidCommitmentRequest("Action Information has no Transaction UID")
    if not references:
        raise InvalidCommitmentRequest("Referenced SOP Sequence is missing or empty")
    return CommitmentRequest(transaction, references)


def _verdict(ctx: GatewayContext, ref: Reference, stored: RetrieveItem | None) -> int:
    """SUCCESS, or the Failure Reason for one reference (J.3.3.1.1)."""
    if stored is None:
        return NO_SUCH_OBJECT
    if stored.sop_class_uid != ref.sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    try:
        intact = ctx.blobs.verify(stored.blob_key, stored.sha256)
    except OSError:
        intact = False
    if not intact:
        LOGGER.error("commitment: blob %s missing or corrupt", stored.blob_key)
        return PROCESSING_FAILURE
    return SUCCESS


def check_commitment(ctx: GatewayContext, request: CommitmentRequest) -> CommitmentResult:
    """Decide, instance by instance, what the hub commits to."""
    uids = [ref.sop_instance_uid for ref in request.references]
    with ctx.database.reader() as session:
        stored = {
            item.sop_instance_uid: item for item in instances_by_uid(session, ctx.blobs, uids)
        }
    committed: list[Reference] = []
    failed: list[tuple[Reference, int]] = []
    for ref in request.references:
        verdict = _verdict(ctx, ref, stored.get(ref.sop_instance_uid))
        if verdict == SUCCESS:
            committed.append(ref)
        else:
            failed.append((ref, verdict))
    return CommitmentResult(request.transaction_uid, tuple(committed), tuple(failed))


def only_visible(result: CommitmentResult, seen: set[str]) -> CommitmentResult:
    """``result`` where an instance the caller may not see is 'no such object instance'
    (J.3.3.1.1 0x0112), whatever the hub holds: its existence is not revealed."""
    hidden = tuple(ref for ref in result.committed if ref.sop_instance_uid not in seen)
    failed = tuple(
        (ref, reason if ref.sop_instance_uid in seen else NO_SUCH_OBJECT)
        for ref, reason in result.failed
    )
    committed = tuple(ref for ref in result.committed if ref.sop_instance_uid in seen)
    return CommitmentResult(
        result.transaction_uid, committed, failed + tuple((r, NO_SUCH_OBJECT) for r in hidden)
    )


def _item(ref: Reference, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if reason is not None:
        item.FailureReason = reason
    return item


def event_information(result: CommitmentResult, ae_title: str) -> Dataset:
    """Event Information of the N-EVENT-REPORT (PS3.4 J.3.3.1, Table J.3-2)."""
    info = Dataset()
    info.TransactionUID = result.transaction_uid
    if result.committed:
        info.RetrieveAETitle = ae_title
        info.ReferencedSOPSequence = Sequence([_item(ref) for ref in result.committed])
    if result.failed:
        info.FailedSOPSequence = Sequence([_item(ref, reason) for ref, reason in result.failed])
    return info


def _send(assoc: Association, result: CommitmentResult, info: Dataset) -> bool:
    """Send the report on ``assoc``; True when the SCU answered Success."""
    answer, _ = assoc.send_n_event_report(info, result.event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE)
    return int(answer.get("Status", -1)) == SUCCESS


def _send_to_node(ctx: GatewayContext, node: RemoteNode, result: CommitmentResult) -> bool:
    """Report on a new association to ``node``, the hub in the SCP role (J.3.3)."""
    ae = AE(ae_title=ctx.settings.ae_title)
    ae.acse_timeout = ctx.settings.acse_timeout
    ae.dimse_timeout = ctx.settings.dimse_timeout
    ae.network_timeout = ctx.settings.network_timeout
    ae.add_requested_context(PUSH_MODEL)
    role = build_role(PUSH_MODEL, scu_role=False, scp_role=True)
    delay = 0.5
    for attempt in range(REPORT_ATTEMPTS):
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, ext_neg=[role])
        if assoc.is_established:
            try:
                return _send(assoc, result, event_information(result, ctx.settings.ae_title))
            finally:
                assoc.release()
        if attempt < REPORT_ATTEMPTS - 1:
            time.sleep(delay)
            delay *= 2
    return False


def report(
    ctx: GatewayContext,
    assoc: Association,
    calling: str,
    request: CommitmentRequest,
    sent_before: int,
) -> None:
    """Check the request and deliver the N-EVENT-REPORT (runs in a background thread).

    On the requesting association the report follows the N-ACTION response (J.3.3):
    it waits until a message was sent after the ``sent_before``-th (that response).
    """
    try:
        result = check_commitment(ctx, request)
        uids = [ref.sop_instance_uid for ref in request.references]
        seen = access.visible_instances(ctx, assoc, uids)
        if seen is not None:
            result = only_visible(result, seen)
        node = get_node(ctx.database, calling)
        if node is not None:
            sent = _send_to_node(ctx, node, result)
        else:
            pdata.wait_sent(assoc, sent_before, ctx.settings.dimse_timeout)
            sent = assoc.is_established and _send(
                assoc, result, event_information(result, ctx.settings.ae_title)
            )
    except Exception:
        LOGGER.exception("storage commitment report to %s failed", calling)
        return
    LOGGER.log(
        logging.INFO if sent else logging.ERROR,
        "storage commitment to %s: %d committed, %d failed, report %s",
        calling,
        len(result.committed),
        len(result.failed),
        "delivered" if sent else "NOT delivered",
    )


def handle_n_action(event: Event, ctx: GatewayContext) -> tuple[int | Dataset, Dataset | None]:
    """EVT_N_ACTION handler: accept the request, report in the background (J.3.2, J.3.3)."""
    calling = event.assoc.requestor.ae_title
    try:
        request = read_request(event)
    except HubError as exc:
        LOGGER.info("N-ACTION from %s refused: %s (0x%04X)", calling, exc.title, exc.dicom_status)
        return error_status(exc), None
    except Exception:
        LOGGER.exception("N-ACTION from %s: unexpected error", calling)
        return status(PROCESSING_FAILURE, "internal error"), None
    thread = threading.Thread(
        target=report,
        args=(ctx, event.assoc, calling, request, pdata.sent_count(event.assoc)),
        name=f"commitment-{calling}",
        daemon=True,
    )
    thread.start()
    return SUCCESS, None
