"""C-STORE SCP: the Storage Service Class of PS3.4 B.2.2, through the one ingest path.

The received dataset bytes are kept exactly as they arrived (no decode, no
re-encode); the hub prefixes them with its File Meta Information (PS3.10 7.1).
Success (0x0000) is answered only after :meth:`Ingestor.ingest` returned, i.e.
once the blob is fsynced and the index row committed.

With the access policy on, a caller without the store permission is answered
0x0124 Refused: Not Authorized (PS3.7 C.5) and nothing is stored
(:mod:`pacs_hub.gateway.access`).
"""

from __future__ import annotations

import logging
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacs_hub.dicom.part10 import part10_bytes
from pacs_hub.errors import HubError, InvalidInstance
from pacs_hub.gateway import access
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import SUCCESS, error_status, status
from pacs_hub.storage.index import Outcome

LOGGER = logging.getLogger(__name__)
OUT_OF_RESOURCES = 0xA700


def handle_store(event: Event, ctx: GatewayContext) -> Dataset | int:
    """EVT_C_STORE handler: ingest the received instance, answer its status.

    Success is answered as the bare code, which pynetdicom takes as it is; a status
    data set (built per instance, then copied element by element into the response)
    is kept for failures and warnings, which carry an Error Comment.
    """
    request = cast(C_STORE, event.request)
    context = event.context
    calling = event.assoc.requestor.ae_title
    refusal = access.store_refusal(event, ctx)
    if refusal is not None:
        return refusal
    try:
        if request.DataSet is None or not request.AffectedSOPInstanceUID:
            raise InvalidInstance("C-STORE request without dataset or Affected SOP Instance UID")
        data = part10_bytes(
            request.DataSet.getvalue(),
            str(context.abstract_syntax),
            str(request.AffectedSOPInstanceUID),
            str(context.transfer_syntax),
        )
        result = ctx.ingestor.ingest(data, received_from_ae=calling)
        if result.sop_class_uid != context.abstract_syntax:
            LOGGER.warning("C-STORE from %s: dataset SOP class differs from context", calling)
    except HubError as exc:
        LOGGER.info("C-STORE from %s refused: %s (0x%04X)", calling, exc.title, exc.dicom_status)
        return error_status(exc)
    except (UnicodeError, ValueError) as exc:
        return error_status(InvalidInstance(f"invalid request: {exc}"))
    except OSError as exc:
        LOGGER.error("C-STORE from %s: storage error %s", calling, exc.strerror)
        return status(OUT_OF_RESOURCES, f"storage error: {exc.strerror}")
    except Exception:
        LOGGER.exception("C-STORE from %s: unexpected error", calling)
        return status(0xC000, "internal error; nothing stored")
    access.stored(event, ctx, result.study_instance_uid)
    if result.outcome is Outcome.DUPLICATE:
        LOGGER.debug("C-STORE from %s: duplicate, already stored", calling)
    return SUCCESS
