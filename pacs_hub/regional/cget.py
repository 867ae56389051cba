"""Pulling a study by C-GET (PS3.4 C.4.3), for a PACS that cannot C-MOVE to the hub.

A C-MOVE needs the PACS to know the hub as a move destination; when it fails with
nothing sent (0xA801 Move Destination unknown, or Orthanc's 0xC000),
:func:`~pacs_hub.regional.pull.run_job` falls back to a C-GET: the instances come
back on the hub's own association, as C-STORE sub-operations in presentation
contexts the hub proposed with the SCP role (PS3.7 D.3.3.4, SCP/SCU Role Selection),
and each is stored through the one ingest path (the dataset bytes as received,
behind the hub's File Meta Information).

The contexts must be proposed up front: the SOP classes of the study are asked for
first (Study Root C-FIND: SOP Classes in Study (0008,0062) at STUDY level, else SOP
Class UID at IMAGE level, else a list of common storage classes), and each class is
proposed once per transfer syntax of :data:`TRANSFER_SYNTAXES` in its own context,
so the PACS can send each instance in the syntax it stores it in (no transcoding),
within the 128 contexts an association may carry (PS3.8 9.3.2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from pacs_hub.config import Settings
from pacs_hub.dicom.part10 import part10_bytes
from pacs_hub.errors import HubError
from pacs_hub.ingest import Ingestor
from pacs_hub.regional.scu import PENDING, PacsNode, SourceUnavailable, associate, requestor_ae
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database

LOGGER = logging.getLogger(__name__)
GET_MODEL = sc.StudyRootQueryRetrieveInformationModelGet
FIND_MODEL = sc.StudyRootQueryRetrieveInformationModelFind
MAX_CONTEXTS = 127  # 128 minus the C-GET model's own
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
COMMON_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
)


def _values(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value if str(v)]
    return [str(value)]


def _find(assoc: Association, identifier: Dataset, keyword: str) -> set[str]:
    found: set[str] = set()
    for status, answer in assoc.send_c_find(identifier, FIND_MODEL):
        if not status or int(status.Status) not in PENDING:
            break
        if answer is not None:
            found.update(_values(answer.get(keyword)))
    return found


def study_sop_classes(settings: Settings, node: PacsNode, study: str) -> list[str]:
    """The SOP classes of ``study`` on ``node`` (C-FIND), or common storage classes."""
    assoc = associate(requestor_ae(settings, [FIND_MODEL]), node)
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        query.SOPClassesInStudy = ""
        classes = _find(assoc, query, "SOPClassesInStudy")
        if not classes:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = study
            query.SeriesInstanceUID = ""
            query.SOPInstanceUID = ""
            query.SOPClassUID = ""
            classes = _find(assoc, query, "SOPClassUID")
    finally:
        if assoc.is_established:
            assoc.release()
    return sorted(classes) or list(COMMON_CLASSES)


def _store_handler(
    ingestor: Ingestor, node: PacsNode, failures: list[str]
) -> Callable[[evt.Event], int]:
    def handle(event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        try:
            data = part10_bytes(
                request.DataSet.getvalue() if request.DataSet is not None else b"",
                str(event.context.abstract_syntax),
                str(request.AffectedSOPInstanceUID),
                str(event.context.transfer_syntax),
            )
            ingestor.ingest(data, received_from_ae=node.ae_title)
        except HubError as exc:
            failures.append(exc.message)
            return exc.dicom_status
        except Exception as exc:  # the sub-operation fails, the pull goes on
            LOGGER.exception("C-GET from %s: instance not stored", node.ae_title)
            failures.append(type(exc).__name__)
            return 0xA700 if isinstance(exc, OSError) else 0xC000
        return 0x0000

    return handle


def _get_ae(settings: Settings, classes: list[str]) -> tuple[AE, list[Any]]:
    ae = requestor_ae(settings, [GET_MODEL])
    roles = []
    for uid in classes:
        if len(ae.requested_contexts) + len(TRANSFER_SYNTAXES) > MAX_CONTEXTS + 1:
            LOGGER.warning("C-GET: too many SOP classes; %s not proposed", uid)
            continue
        for syntax in TRANSFER_SYNTAXES:
            ae.add_requested_context(uid, [syntax])
        roles.append(build_role(uid, scp_role=True))
    return ae, roles


def get_study(
    settings: Settings,
    database: Database,
    node: PacsNode,
    study: str,
    report: Callable[[int, int | None], None],
) -> tuple[int, int, int, int, str]:
    """C-GET ``study`` from ``node`` into the hub; ``(status, completed, failed, warning,
    comment)`` of the final response."""
    classes = study_sop_classes(settings, node, study)
    ae, roles = _get_ae(settings, classes)
    ingestor = Ingestor(database, BlobStore(settings.data_dir), settings.duplicate_policy, "c-get")
    failures: list[str] = []
    handlers: list[evt.EventHandlerType] = [
        (evt.EVT_C_STORE, _store_handler(ingestor, node, failures))
    ]
    assoc = ae.associate(
        node.host, node.port, ae_title=node.ae_title, ext_neg=roles, evt_handlers=handlers
    )
    if not assoc.is_established:
        raise SourceUnavailable(f"{node.ae_title}: C-GET association not established")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        for status, _answer in assoc.send_c_get(identifier, GET_MODEL):
            if not status:
                raise SourceUnavailable(f"{node.ae_title}: no C-GET response (timeout or abort)")
            counts = [
                int(status.get(k) or 0)
                for k in (
                    "NumberOfCompletedSuboperations",
                    "NumberOfFailedSuboperations",
                    "NumberOfWarningSuboperations",
                    "NumberOfRemainingSuboperations",
                )
            ]
            done, failed, warned, remaining = counts
            if int(status.Status) in PENDING:
                report(done + warned, done + warned + failed + remaining)
                continue
            comment = str(status.get("ErrorComment", "") or "")
            if failures and not comment:
                comment = failures[0]
            return int(status.Status), done, failed, warned, comment
        raise SourceUnavailable(f"{node.ae_title}: C-GET ended without a final response")
    finally:
        if assoc.is_established:
            assoc.release()
