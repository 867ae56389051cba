"""The services every DICOMweb route needs, held on ``app.state.hub``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from fastapi import Request

from pacs_hub.config import Settings
from pacs_hub.ingest import Ingestor
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database


@dataclass(frozen=True, slots=True)
class HubState:
    """Settings, index, blob store and the one ingest path (shared with C-STORE)."""

    settings: Settings
    database: Database
    blobs: BlobStore
    ingestor: Ingestor


async def hub_state(request: Request) -> HubState:
    """FastAPI dependency: the hub's services for this request.

    A coroutine although it awaits nothing: FastAPI runs a plain function dependency
    in a worker thread, a hand-over between threads on every DICOMweb request.
    """
    return cast(HubState, request.app.state.hub)


def dicomweb_base(request: Request) -> str:
    """The absolute URL of the DICOMweb root, for RetrieveURL and BulkDataURI values."""
    return str(request.base_url).rstrip("/") + "/dicom-web"
