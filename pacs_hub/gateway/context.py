"""What every SCP handler receives: the services of one gateway process."""

from __future__ import annotations

from dataclasses import dataclass

from pacs_hub.config import Settings
from pacs_hub.ingest import Ingestor
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database


@dataclass(frozen=True, slots=True)
class GatewayContext:
    """Settings, index, blobs and the ingest path of one gateway process."""

    settings: Settings
    database: Database
    blobs: BlobStore
    ingestor: Ingestor

    @classmethod
    def open(cls, settings: Settings, *, run_migrations: bool = False) -> GatewayContext:
        """Open the index and blob store described by ``settings``."""
        database = Database(settings.index_url, run_migrations=run_migrations)
        blobs = BlobStore(settings.data_dir)
        return cls(settings, database, blobs, Ingestor(database, blobs, settings.duplicate_policy))
