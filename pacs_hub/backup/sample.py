"""Byte-identity proof: instances retrieved back from a PACS by C-GET (PS3.4 C.4.3).

For each sampled instance the hub asks the PACS for it at IMAGE level, proposing only
the SOP class and the transfer syntax it was stored in (so the PACS has no reason to
transcode), receives it on the same association (SCP role, PS3.4 C.4.3.1) and compares
the SHA-256 of the received dataset bytes with that of the hub's blob after its File
Meta Information group.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.dimse_primitives import C_STORE
from sqlalchemy import select

from pacs_hub.config import Settings
from pacs_hub.dicom.part10 import dataset_offset
from pacs_hub.gateway.server import prepare_associations
from pacs_hub.regional.scu import PacsNode
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Instance, Series, Study
from pacs_hub.storage.retrieval import RetrieveItem

GET = sc.StudyRootQueryRetrieveInformationModelGet


def blob_digest(item: RetrieveItem) -> str:
    """SHA-256 of a stored instance's dataset bytes (after the File Meta group)."""
    with item.blob.open() as fp:
        fp.seek(dataset_offset(fp))
        return hashlib.sha256(fp.read()).hexdigest()


def _parents(database: Database, sop: str) -> tuple[str, str]:
    stmt = (
        select(Study.study_instance_uid, Series.series_instance_uid)
        .join(Series, Series.study_pk == Study.id)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Instance.sop_instance_uid == sop)
    )
    with database.reader() as session:
        row = session.execute(stmt).one()
    return str(row[0]), str(row[1])


def fetch(
    settings: Settings, database: Database, where: PacsNode, item: RetrieveItem
) -> bytes | None:
    """The dataset bytes of ``item`` as the PACS sends them back, or None."""
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        data = cast(C_STORE, event.request).DataSet
        if data is not None:
            received.append(data.getvalue())
        return 0x0000

    prepare_associations()
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.dimse_timeout
    ae.add_requested_context(GET)
    ae.add_requested_context(item.sop_class_uid, [item.transfer_syntax_uid])
    role = build_role(item.sop_class_uid, scp_role=True)
    assoc = ae.associate(
        where.host,
        where.port,
        ae_title=where.ae_title,
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        return None
    study, series = _parents(database, item.sop_instance_uid)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series
    identifier.SOPInstanceUID = item.sop_instance_uid
    try:
        for _status, _identifier in assoc.send_c_get(identifier, GET):
            pass
    finally:
        if assoc.is_established:
            assoc.release()
    return received[0] if received else None


def check_bytes(
    settings: Settings,
    database: Database,
    where: PacsNode,
    items: Sequence[RetrieveItem],
    size: int,
) -> dict[str, Any]:
    """Retrieve ``size`` of ``items`` back from ``where``; compare their SHA-256."""
    chosen = random.Random(1).sample(list(items), min(size, len(items)))
    identical, mismatched, unavailable = [], [], []
    for item in chosen:
        got = fetch(settings, database, where, item)
        if got is None:
            unavailable.append(item.sop_instance_uid)
        elif hashlib.sha256(got).hexdigest() == blob_digest(item):
            identical.append(item.sop_instance_uid)
        else:
            mismatched.append(item.sop_instance_uid)
    return {
        "sampled": len(chosen),
        "identical": len(identical),
        "mismatched": len(mismatched),
        "mismatched_uids": mismatched,
        "not_retrieved": unavailable,
    }
